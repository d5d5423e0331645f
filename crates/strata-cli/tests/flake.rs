//! The flake and Kurtosis' NixBuildSpec flow, offline: `nix build DIR#NAME` on the example
//! flake gives a gzipped docker-archive whose manifest names the image; gunzipped and handed
//! to Docker's image load, it runs. No input is fetched: the strata flake is this checkout's
//! (flake.nix and nix/), and nixpkgs is a local stand-in whose `callPackage` packages the
//! strata under test (these machines cannot fetch nixpkgs).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn kurtosis_builds_a_flake_output_and_loads_it_without_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    // This checkout's flake, without the build tree.
    let strata_flake = dir.path().join("strata");
    copy_tree(&Path::new(REPO).join("nix"), &strata_flake.join("nix"));
    std::fs::copy(Path::new(REPO).join("flake.nix"), strata_flake.join("flake.nix")).unwrap();
    // nixpkgs' stand-in.
    let nixpkgs = dir.path().join("nixpkgs");
    std::fs::create_dir_all(&nixpkgs).unwrap();
    std::fs::copy(STRATA, nixpkgs.join("strata")).unwrap();
    std::fs::write(
        nixpkgs.join("flake.nix"),
        r#"{ outputs = { self }: { legacyPackages.x86_64-linux.callPackage = _: _: derivation {
  name = "strata"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p $out/bin && cp ${./strata} $out/bin/strata" ]; }; }; }"#,
    )
    .unwrap();
    let example = dir.path().join("kurtosis");
    copy_tree(&Path::new(REPO).join("examples/kurtosis"), &example);

    // Kurtosis runs `nix build DIR#NAME --print-out-paths`; Nix 2.8 has no such flag, so the
    // path comes from --json here.
    let out = stdout_of(
        Command::new("nix")
            .args(["--extra-experimental-features", "nix-command flakes", "build", "--no-link", "--json"])
            .arg(format!("path:{}#hello-image", example.display()))
            .args(["--override-input", "strata", &format!("path:{}", strata_flake.display())])
            .args(["--override-input", "strata/nixpkgs", &format!("path:{}", nixpkgs.display())]),
    );
    let built: serde_json::Value = serde_json::from_str(&out).unwrap();
    let result = built[0]["outputs"]["out"].as_str().unwrap().to_owned();

    // What Kurtosis does with it: gunzip, read RepoTags[0], load into Docker.
    let mut archive = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&result).unwrap()).read_to_end(&mut archive).unwrap();
    let mut tar = tar::Archive::new(&archive[..]);
    let manifest = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some("manifest.json"))
        .map(|mut e| {
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        })
        .expect("manifest.json");
    let image = manifest[0]["RepoTags"][0].as_str().unwrap().to_owned();
    assert_eq!(image, "hello-kurtosis:latest");
    let mut load = Command::new("docker").arg("load").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    load.stdin.take().unwrap().write_all(&archive).unwrap();
    assert!(load.wait().unwrap().success());
    assert_eq!(run_in("docker", &image, &[]), "Hello from Kurtosis!\n");
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
}
