//! strata's Nix library (`nix/`): images built by Nix with strata as the builder, loaded
//! into the real Docker engine and podman, and run.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn nixlib(attr: &str) -> Command {
    let mut cmd = Command::new("nix-build");
    cmd.arg("--no-out-link").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nixlib.nix")).args(["--arg", "strataBin", STRATA, "-A", attr]);
    cmd
}

fn build(attr: &str) -> String {
    stdout_of(&mut nixlib(attr)).trim().to_owned()
}

fn docker_load(tarball: &str) -> String {
    let out = stdout_of(Command::new("docker").arg("load").stdin(std::fs::File::open(tarball).unwrap()));
    out.trim().strip_prefix("Loaded image: ").unwrap_or_else(|| panic!("{out}")).to_owned()
}

/// nix.dev's flow, word for word: `docker load < $(nix-build hello-docker.nix)`, then
/// `docker run -t hello-docker:<tag>`, the tag being the one `docker load` printed (also the
/// derivation's `imageTag`).
#[test]
fn build_image_loads_with_docker_load() {
    let result = build("helloDocker");
    assert!(result.ends_with("-docker-image-hello-docker.tar.gz"), "{result}");
    let image = docker_load(&result);
    let tag = stdout_of(Command::new("nix-instantiate").args(["--eval", "--json"]).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nixlib.nix")).args(["--arg", "strataBin", STRATA, "-A", "helloDocker.imageTag"]));
    assert_eq!(image, format!("hello-docker:{}", tag.trim().trim_matches('"')));
    let out = stdout_of(Command::new("docker").args(["run", "--rm", "--network", "none", "-t", &image]));
    assert_eq!(out.trim_end(), "Hello, world!");
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
    // Built again from scratch, the output is bit for bit the same (Nix checks it).
    for attr in ["helloDocker", "helloStream", "helloLayered", "makes"] {
        build(attr);
        run_ok(nixlib(attr).arg("--check"));
    }
}

/// streamLayeredImage: the result is a small executable, not an image; it streams one.
#[test]
fn stream_layered_image_streams_into_podman() {
    let result = build("helloStream");
    let size = std::fs::metadata(&result).unwrap().len();
    assert!(size < 64 * 1024, "the store holds a {size}-byte result: no image tarball");
    let mut stream = Command::new(&result).stdout(Stdio::piped()).spawn().unwrap();
    let load = Command::new("podman").arg("load").stdin(stream.stdout.take().unwrap()).output().unwrap();
    assert!(stream.wait().unwrap().success());
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(run_in("podman", "hello-stream:latest", &[]), "Hello, world!\n");
    // `contents` are laid over /: busybox's bin is at /bin.
    assert_eq!(stdout_of(Command::new("podman").args(["run", "--rm", "--entrypoint", "/bin/echo", "hello-stream:latest", "from", "contents"])), "from contents\n");
    let _ = Command::new("podman").args(["rmi", "-f", "hello-stream:latest"]).output();
}

#[test]
fn build_layered_image_respects_max_layers() {
    let result = build("helloLayered");
    let image = docker_load(&result);
    assert_eq!(run_in("docker", &image, &[]), "Hello, world!\n");
    let layers = stdout_of(Command::new("docker").args(["image", "inspect", &image, "--format", "{{len .RootFS.Layers}}"]));
    assert_eq!(layers.trim(), "2");
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
}

/// makes' example: `pwd` -> /working-dir, `cat my-file` -> my-file-contents, and `ls /`
/// lists the layers' top-level folders.
#[test]
fn make_container_image_lays_layers_over_root() {
    let image = docker_load(&build("makes"));
    assert!(image.starts_with("container-image:"), "{image}");
    assert_eq!(run_in("docker", &image, &["pwd"]), "/working-dir\n");
    assert_eq!(run_in("docker", &image, &["cat", "my-file"]), "my-file-contents\n");
    let root = run_in("docker", &image, &["ls", "/"]);
    assert!(root.lines().any(|l| l == "bin") && root.lines().any(|l| l == "working-dir"), "{root}");
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
}

#[test]
fn bad_arguments_fail_evaluation_naming_them() {
    for (attr, expected) in [
        ("badArgument", "unexpected argument 'contents'"),
        ("badLayer", "`layers` must hold derivations or store paths, not a int"),
        ("badCompressor", "`compressor` must be one of gz, zstd, none"),
    ] {
        let out = Command::new("nix-instantiate")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nixlib.nix"))
            .args(["--arg", "strataBin", STRATA, "-A", attr])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{attr} evaluated");
        assert!(stderr.contains(expected), "{attr}: {expected:?} not in {stderr}");
    }
}
