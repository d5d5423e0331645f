//! `--flake DIR#NAME`: the image a flake output builds, as Kurtosis' NixBuildSpec asks for
//! (`flake_location_dir`, `image_name`). `nix build DIR#NAME` is tried first (Nix looks in
//! `packages.<system>` and `legacyPackages.<system>`), then the flake module's image of that
//! name, `DIR#strata.<system>.images.NAME.result`. The output is whatever the Nix library
//! builds: a docker-archive (compressed or not), a stream script or a description.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The Nix system of this machine, as flakes key their outputs (`x86_64-linux`).
fn host_system() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

/// Builds `DIR#NAME` and returns the store path of its output.
pub fn build(reference: &str) -> Result<PathBuf> {
    let Some((dir, name)) = reference.split_once('#').filter(|(d, n)| !d.is_empty() && !n.is_empty()) else {
        bail!("--flake {reference:?}: expected DIR#NAME (e.g. .#hello-image)");
    };
    match nix_build(reference)? {
        Ok(path) => Ok(path),
        Err(first) if first.contains("does not provide attribute") => {
            let image = format!("{dir}#strata.{}.images.{name}.result", host_system());
            nix_build(&image)?.map_err(|second| {
                anyhow::anyhow!("--flake {reference}: neither `{reference}` nor `{image}` builds:\n{}\n{}", first.trim_end(), second.trim_end())
            })
        }
        Err(error) => bail!("--flake {reference}: nix build failed:\n{}", error.trim_end()),
    }
}

/// `nix build --json INSTALLABLE`: the output path, or Nix's error output.
fn nix_build(installable: &str) -> Result<std::result::Result<PathBuf, String>> {
    eprintln!("strata: nix build {installable}");
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes", "build", "--no-link", "--json", installable])
        .output()
        .context("cannot run nix: is Nix installed and on PATH?")?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading `nix build --json` output")?;
    let path = built[0]["outputs"]["out"].as_str().with_context(|| format!("`nix build {installable}` built no `out` output"))?;
    Ok(Ok(PathBuf::from(path)))
}
