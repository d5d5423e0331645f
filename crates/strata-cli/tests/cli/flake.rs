//! The flake integration, offline: images declared with `lib.mkImages` and with the
//! flake-parts module (`nix flake check`, `nix run …do.run.*`, `…do.copy.*`), `strata
//! build/run --flake`, and Kurtosis' NixBuildSpec flow (`nix build DIR#NAME` gives a gzipped
//! docker-archive whose manifest names the image). No input is fetched: the strata flake is
//! this checkout's (flake.nix and nix/), nixpkgs is a local stand-in
//! (tests/fixtures/nixpkgs) whose `callPackage` packages the strata under test, and the
//! flake-parts test runs only when local checkouts of flake-parts and nixpkgs' lib are given.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// `nix` with flakes enabled.
fn nix(args: &[&str]) -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command flakes"]).args(args);
    cmd
}

/// Local stand-ins for a flake's inputs, in a temporary directory.
struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    /// This checkout's flake (flake.nix, nix/, templates/, and the Cargo workspace that nix/package.nix takes as its
    /// source) as `strata/`, the nixpkgs stand-in as `nixpkgs/` (with the real lib when `nixpkgs_lib` names a checkout
    /// of it).
    fn new(nixpkgs_lib: Option<&Path>) -> Inputs {
        let dir = tempfile::tempdir().unwrap();
        let strata = dir.path().join("strata");
        for tree in ["nix", "templates", "crates"] {
            copy_tree(&Path::new(REPO).join(tree), &strata.join(tree));
        }
        for file in ["flake.nix", "Cargo.toml", "Cargo.lock", "rustfmt.toml", "README.md"] {
            std::fs::copy(Path::new(REPO).join(file), strata.join(file)).unwrap();
        }
        let nixpkgs = nixpkgs_stand_in(dir.path());
        if let Some(lib) = nixpkgs_lib {
            copy_tree(&lib.join("lib"), &nixpkgs.join("lib"));
        }
        let inputs = Inputs { dir };
        // strata's own nixpkgs is the stand-in too (`nix flake init -t` reads strata's lock).
        inputs.lock(&strata, &[("nixpkgs", inputs.path("nixpkgs"))]);
        inputs
    }

    fn path(&self, name: &str) -> String {
        format!("path:{}", self.dir.path().join(name).display())
    }

    /// Copies the flake in `from` here as `name` and locks its inputs to local paths
    /// (`(input, path)` pairs), so later commands need no network.
    fn flake(&self, from: &Path, name: &str, overrides: &[(&str, String)]) -> PathBuf {
        let flake = self.dir.path().join(name);
        copy_tree(from, &flake);
        self.lock(&flake, overrides);
        flake
    }

    fn lock(&self, flake: &Path, overrides: &[(&str, String)]) {
        let mut lock = nix(&["flake", "lock"]);
        lock.arg(format!("path:{}", flake.display()));
        for (input, path) in overrides {
            lock.args(["--override-input", input, path]);
        }
        run_ok(lock);
    }
}

/// The output path of `nix build INSTALLABLE` (Nix 2.8 has no --print-out-paths: --json).
fn nix_build(installable: &str) -> String {
    let out = stdout_of(nix(&["build", "--no-link", "--json", installable]));
    let built: serde_json::Value = serde_json::from_str(&out).unwrap();
    built[0]["outputs"]["out"].as_str().unwrap().to_owned()
}

fn nix_eval(installable: &str) -> String {
    stdout_of(nix(&["eval", "--raw", installable]))
}

/// strata's own flake: the package takes its version from Cargo.toml, builds from the Cargo
/// workspace alone (a README edit leaves its source as it was; a crate edit does not) and runs the
/// library tests; `checks` builds an image of hello with the Nix library; `devShells.default`
/// and `formatter` are there. (nixpkgs is the stand-in: `buildRustPackage` keeps its arguments
/// and packages the strata under test rather than compiling it.)
#[test]
fn strata_flake_packages_checks_and_develops_strata() {
    let inputs = Inputs::new(None);
    let flake = inputs.dir.path().join("strata");
    let attr = |path: &str| format!("path:{}#{path}", flake.display());
    let json =
        |path: &str, apply: &str| -> serde_json::Value { serde_json::from_str(&stdout_of(nix(&["eval", "--json", &attr(path), "--apply", apply]))).unwrap() };

    let package = "packages.x86_64-linux.strata";
    assert_eq!(json(package, "p: p.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(json(package, "p: [ p.doCheck p.cargoTestFlags ]"), serde_json::json!([true, ["--workspace", "--exclude", "strata-cli"]]));
    let source_files = "p: builtins.attrNames (builtins.readDir p.src)";
    assert_eq!(json(package, source_files), serde_json::json!(["Cargo.lock", "Cargo.toml", "crates", "rustfmt.toml"]));
    let source = |flake: &Path| -> String {
        let installable = format!("path:{}#{package}", flake.display());
        stdout_of(nix(&["eval", "--raw", &installable, "--apply", "p: toString p.src"]))
    };
    let before = source(&flake);
    std::fs::write(flake.join("README.md"), "edited\n").unwrap();
    assert_eq!(source(&flake), before, "a README edit changed the package's source");
    std::fs::write(flake.join("crates/strata-oci/src/lib.rs"), "// edited\n").unwrap();
    assert_ne!(source(&flake), before, "a crate edit left the package's source as it was");

    // `nix flake check` builds the checks (Nix 2.8 would also evaluate the systems the stand-in lacks: build them by name).
    let strata_check = nix_build(&attr("checks.x86_64-linux.strata"));
    assert!(Path::new(&strata_check).join("bin/strata").is_file());
    let image = nix_build(&attr("checks.x86_64-linux.hello-image"));
    // Debian 12's skopeo reads no gzipped docker-archive: gunzip it first.
    let archive = inputs.dir.path().join("hello.tar");
    std::io::copy(&mut flate2::read::GzDecoder::new(std::fs::File::open(&image).unwrap()), &mut std::fs::File::create(&archive).unwrap()).unwrap();
    let inspect = stdout_of(Command::new("skopeo").args(["inspect", "--config", &format!("docker-archive:{}", archive.display())]));
    let config: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let entrypoint = config["config"]["Entrypoint"][0].as_str().unwrap().to_owned();
    assert!(entrypoint.ends_with("-hello-2.12/bin/hello"), "{entrypoint}");

    let shell = json("devShells.x86_64-linux.default", "s: s.names");
    for name in ["cargo", "clippy", "rustfmt", "skopeo", "umoci", &format!("strata-{}", env!("CARGO_PKG_VERSION"))] {
        assert!(shell.as_array().unwrap().iter().any(|n| n == name), "{name} is not in the dev shell: {shell}");
    }
    assert_eq!(json("formatter.x86_64-linux", "f: f.name"), "nixpkgs-fmt");
}

#[test]
fn kurtosis_builds_a_flake_output_and_loads_it_without_a_registry() {
    let inputs = Inputs::new(None);
    let example = inputs.flake(&Path::new(REPO).join("examples/kurtosis"), "kurtosis", &[("strata", inputs.path("strata"))]);

    // Kurtosis runs `nix build DIR#NAME --print-out-paths`.
    let result = nix_build(&format!("path:{}#hello-image", example.display()));

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
    remove_images("docker", &[&image]);

    // The same by name with strata: built, loaded and run, no registry between.
    let out = stdout_of(strata(&["run", "--flake", &format!("{}#hello-image", example.display()), "--engine", "docker", "--network", "none"]));
    assert_eq!(out, "Hello from Kurtosis!\n");
    remove_images("docker", &[&image]);
}

/// A different string each run, so that images built with it are new to the store.
fn nonce() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// `lib.mkImages` (examples/flake-images): `nix run …do.run.interactivelyWithPodman`, the
/// copy actions, `strata run/build --flake`, and `nix flake check` building exactly the
/// images that ask for it.
#[test]
fn mk_images_runs_copies_and_checks_images() {
    let inputs = Inputs::new(None);
    let overrides = [("nixpkgs", inputs.path("nixpkgs")), ("strata", inputs.path("strata"))];
    let example = inputs.flake(&Path::new(REPO).join("examples/flake-images"), "example", &overrides);
    let attr = |path: &str| format!("path:{}#strata.x86_64-linux.images.hello.{path}", example.display());

    // Arguments go to the container, as with `podman run IMAGE ARGS`.
    let out = stdout_of(nix(&["run", &attr("do.run.interactivelyWithPodman"), "--", "a", "b"]));
    assert_eq!(out, "Hello, world!\na\nb\n");
    let reference = format!("hello:{}", nix_eval(&attr("result.imageTag")));
    let config = |engine: &str| -> serde_json::Value {
        let out = stdout_of(Command::new(engine).args(["image", "inspect", &reference]));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0]["Config"].clone()
    };
    let podman = config("podman");
    assert_eq!(podman["Cmd"], serde_json::json!(["from a flake"]));
    assert!(podman["Env"].as_array().unwrap().contains(&"GREETING=hello".into()), "{podman}");
    assert_eq!(podman["Labels"]["org.opencontainers.image.title"], "hello");
    remove_images("podman", &[&reference]);

    run_ok(nix(&["run", &attr("do.copy.toDockerDaemon")]));
    assert_eq!(run_in("docker", &reference, &[]), "Hello, world!\nfrom a flake\n");
    assert_eq!(config("docker")["Env"], podman["Env"]);
    remove_images("docker", &[&reference]);
    let out = stdout_of(nix(&["run", &attr("do.run.interactivelyInDocker"), "--", "d"]));
    assert_eq!(out, "Hello, world!\nd\n");
    remove_images("docker", &[&reference]);

    // By name: DIR#hello is not a package, so strata takes the image of that name.
    let by_name = format!("{}#hello", example.display());
    let out = stdout_of(strata(&["run", "--flake", &by_name, "--engine", "docker", "--network", "none", "--", "c"]));
    assert_eq!(out, "Hello, world!\nc\n");
    remove_images("docker", &[&reference]);
    let layout = inputs.dir.path().join("layout");
    run_ok(strata(&["build", "--flake", &by_name, "-o", &format!("oci:{}:v1", layout.display())]));
    let inspect = stdout_of(Command::new("skopeo").args(["inspect", &format!("oci:{}:v1", layout.display())]));
    let layers = serde_json::from_str::<serde_json::Value>(&inspect).unwrap()["Layers"].as_array().unwrap().len();
    assert_eq!(layers, 2, "glibc's layer, then hello's");
    let missing = strata(&["run", "--flake", &format!("{}#nothing", example.display())]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not provide attribute"), "{}", String::from_utf8_lossy(&missing.stderr));

    // `nix flake check` builds the images with `check = true`, and only those.
    let checked = inputs.dir.path().join("checked");
    std::fs::create_dir_all(&checked).unwrap();
    let nonce = nonce();
    std::fs::write(
        checked.join("flake.nix"),
        format!(
            r#"{{ inputs.nixpkgs.url = "github:NixOS/nixpkgs"; inputs.strata.url = "github:strata-oci/strata";
  outputs = {{ self, nixpkgs, strata }}: strata.lib.mkImages {{
    inherit nixpkgs; systems = [ "x86_64-linux" ];
    images.checked = {{ imagePkgs, ... }}: {{ imageConfig = {{ entrypoint = [ "${{imagePkgs.hello}}/bin/hello" ]; env = [ "NONCE={nonce}" ]; }}; }};
    images.unchecked = {{ imagePkgs, ... }}: {{ check = false; imageConfig = {{ entrypoint = [ "${{imagePkgs.hello}}/bin/hello" ]; env = [ "NONCE={nonce}" ]; }}; }};
  }}; }}"#
        ),
    )
    .unwrap();
    inputs.lock(&checked, &overrides);
    let result = |name: &str| nix_eval(&format!("path:{}#strata.x86_64-linux.images.{name}.result.outPath", checked.display()));
    run_ok(nix(&["flake", "check", &format!("path:{}", checked.display())]));
    assert!(Path::new(&result("checked")).exists(), "nix flake check built the checked image");
    assert!(!Path::new(&result("unchecked")).exists(), "nix flake check built an image with check = false");
}

/// Unknown options name the image and the option.
#[test]
fn mk_images_rejects_unknown_options() {
    let inputs = Inputs::new(None);
    let flake = inputs.dir.path().join("bad");
    std::fs::create_dir_all(&flake).unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        r#"{ inputs.strata.url = "github:strata-oci/strata";
  outputs = { self, strata }: strata.lib.mkImages { systems = [ "x86_64-linux" ]; images.web = { entrypoint = [ "/bin/sh" ]; }; }; }"#,
    )
    .unwrap();
    inputs.lock(&flake, &[("strata", inputs.path("strata"))]);
    let out = nix(&["eval", "--raw", &format!("path:{}#strata.x86_64-linux.images.web.result.outPath", flake.display())]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("image `web` has no option `entrypoint`"), "{stderr}");
}

/// The flake-parts module, with local checkouts of flake-parts and nixpkgs' lib (these
/// machines cannot fetch them): the template flake builds its image as a check and runs it;
/// a flake written for n2c-mod runs unchanged with the module under the `n2c` namespace, and
/// `n2c.check.images = false` keeps its image out of the checks.
///
/// It needs checkouts of flake-parts and nixpkgs' lib, which these machines cannot download:
/// it is ignored (and reported so) unless asked for with `--ignored`, and then fails unless
/// it can run. A test that passes without running proves nothing.
#[test]
#[ignore = "needs STRATA_TEST_FLAKE_PARTS and STRATA_TEST_NIXPKGS_LIB (local checkouts of flake-parts and nixpkgs' lib); run with --ignored"]
fn flake_parts_module_template_and_n2c_namespace() {
    let (Some(flake_parts), Some(nixpkgs_lib)) = (std::env::var_os("STRATA_TEST_FLAKE_PARTS"), std::env::var_os("STRATA_TEST_NIXPKGS_LIB")) else {
        panic!("set STRATA_TEST_FLAKE_PARTS and STRATA_TEST_NIXPKGS_LIB to local checkouts of flake-parts and nixpkgs (or nixpkgs.lib)");
    };
    let inputs = Inputs::new(Some(Path::new(&nixpkgs_lib)));
    let flake_parts = format!("path:{}", Path::new(&flake_parts).display());
    let overrides = [("nixpkgs", inputs.path("nixpkgs")), ("strata", inputs.path("strata")), ("flake-parts", flake_parts.clone())];
    let template = inputs.dir.path().join("template");
    std::fs::create_dir_all(&template).unwrap();
    run_ok(nix(&["flake", "init", "-t", &format!("{}#default", inputs.path("strata"))]).current_dir(&template));
    inputs.lock(&template, &overrides);
    let installable = |path: &str| format!("path:{}#{path}", template.display());
    let check = nix_build(&installable("checks.x86_64-linux.strata-image-hello"));
    assert_eq!(check, nix_eval(&installable("strata.x86_64-linux.images.hello.result.outPath")));
    let out = stdout_of(nix(&["run", &installable("strata.x86_64-linux.images.hello.do.run.interactivelyWithPodman")]));
    assert_eq!(out, "Hello, world!\n");
    let tag = nix_eval(&installable("strata.x86_64-linux.images.hello.result.imageTag"));
    remove_images("podman", &[&format!("hello:{tag}")]);

    // n2c-mod's own example image module, word for word.
    let n2c = inputs.dir.path().join("n2c");
    std::fs::create_dir_all(&n2c).unwrap();
    std::fs::write(
        n2c.join("flake.nix"),
        r#"{ inputs = { nixpkgs.url = "github:NixOS/nixpkgs"; flake-parts.url = "github:hercules-ci/flake-parts"; strata.url = "github:strata-oci/strata"; };
  outputs = inputs@{ flake-parts, nixpkgs, strata, ... }: flake-parts.lib.mkFlake { inherit inputs; } {
    imports = [ strata.flakeModules.n2c ./basic.nix ./multi.nix ];
    systems = [ "x86_64-linux" ];
    perSystem = { system, ... }: { _module.args.pkgs = nixpkgs.legacyPackages.${system}; n2c.check.images = false; };
  }; }"#,
    )
    .unwrap();
    std::fs::write(
        n2c.join("basic.nix"),
        "{\n  perSystem = {pkgs, ...}: {\n    n2c.images.basic = {imagePkgs, ...}: {\n      imageConfig = {\n        entrypoint = [\"${imagePkgs.hello}/bin/hello\"];\n      };\n    };\n  };\n}\n",
    )
    .unwrap();
    // #13: an image module naming two systems, defined in a file of its own.
    std::fs::write(
        n2c.join("multi.nix"),
        "{\n  perSystem = { ... }: {\n    n2c.images.multi = { imagePkgs, ... }: {\n      systems = [ \"x86_64-linux\" \"aarch64-linux\" ];\n      tag = \"v1\";\n      imageConfig.entrypoint = [ \"${imagePkgs.busybox}/bin/sh\" \"-c\" \"uname -m\" ];\n    };\n  };\n}\n",
    )
    .unwrap();
    inputs.lock(
        &n2c,
        &[
            ("nixpkgs", inputs.path("nixpkgs")),
            ("strata", inputs.path("strata")),
            ("flake-parts", flake_parts),
            ("flake-parts/nixpkgs-lib", inputs.path("nixpkgs")),
        ],
    );
    let out = stdout_of(nix(&["run", &format!("path:{}#n2c.x86_64-linux.images.basic.do.run.interactivelyWithPodman", n2c.display()), "--", "n2c"]));
    assert_eq!(out, "Hello, world!\nn2c\n");
    // `check.images = false` leaves the images out of the checks.
    let checks = stdout_of(nix(&["eval", "--json", &format!("path:{}#checks.x86_64-linux", n2c.display()), "--apply", "builtins.attrNames"]));
    assert_eq!(checks.trim(), "[]");
    let tag = nix_eval(&format!("path:{}#n2c.x86_64-linux.images.basic.result.imageTag", n2c.display()));
    remove_images("podman", &[&format!("basic:{tag}")]);

    // The multi-system image: `result` is the host's, `do.copy.to` writes the index of both.
    let multi = |path: &str| format!("path:{}#n2c.x86_64-linux.images.multi.{path}", n2c.display());
    let layout = format!("oci:{}:v1", inputs.dir.path().join("multi-layout").display());
    run_ok(nix(&["run", &multi("do.copy.to"), "--", &layout]));
    let index: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", &layout]))).unwrap();
    let architectures: Vec<&str> = index["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(architectures, ["amd64", "arm64"]);
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(nix_build(&multi("result"))).unwrap()).unwrap();
    assert_eq!(result["spec"]["architecture"], "amd64");
}

/// #13: an image of `lib.mkImages` naming two systems is made for each (its function called
/// with each system's `imagePkgs`) and joined in an image index: `result` is the host's image,
/// `do.copy.to` writes the index, and `nix flake check` builds every platform.
#[test]
fn mk_images_makes_one_image_for_several_systems() {
    let inputs = Inputs::new(None);
    let overrides = [("nixpkgs", inputs.path("nixpkgs")), ("strata", inputs.path("strata"))];
    let flake = inputs.dir.path().join("multi");
    std::fs::create_dir_all(&flake).unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        r#"{ inputs.nixpkgs.url = "github:NixOS/nixpkgs"; inputs.strata.url = "github:strata-oci/strata";
  outputs = { self, nixpkgs, strata }: strata.lib.mkImages {
    inherit nixpkgs; systems = [ "x86_64-linux" ];
    images.machine = { imagePkgs, ... }: {
      systems = [ "x86_64-linux" "aarch64-linux" ];
      tag = "v1";
      imageConfig.entrypoint = [ "${imagePkgs.busybox}/bin/sh" "-c" "uname -m" ];
    };
  }; }"#,
    )
    .unwrap();
    inputs.lock(&flake, &overrides);
    let attr = |path: &str| format!("path:{}#strata.x86_64-linux.images.machine.{path}", flake.display());
    let layout = format!("oci:{}:v1", inputs.dir.path().join("layout").display());
    run_ok(nix(&["run", &attr("do.copy.to"), "--", &layout]));
    let index: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", &layout]))).unwrap();
    let architectures: Vec<&str> = index["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(architectures, ["amd64", "arm64"]);
    // `result` is the host's platform's image.
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(nix_build(&attr("result"))).unwrap()).unwrap();
    assert_eq!(result["spec"]["architecture"], "amd64");
    run_ok(nix(&["flake", "check", &format!("path:{}", flake.display())]));
    assert!(Path::new(&nix_eval(&attr("index.outPath"))).exists(), "nix flake check built the index (and so every platform)");
}
