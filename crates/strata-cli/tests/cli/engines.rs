//! Images built by strata, loaded into the real podman and Docker engines and run.

use std::process::{Command, Stdio};

use crate::common::*;

fn hello_spec(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let hello = fixture("hello");
    write_spec(dir, "hello.toml", &format!("name = \"{name}\"\ntag = \"t1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"))
}

#[test]
fn hello_runs_in_podman() {
    let dir = tempfile::tempdir().unwrap();
    let archive = build_archive(dir.path(), &hello_spec(dir.path(), "strata-test-podman"));
    let out = load_and_run("podman", &archive, "strata-test-podman:t1", &["an", "argument"]);
    assert_eq!(out, "Hello, world!\nan\nargument\n");
}

#[test]
fn hello_runs_in_docker() {
    let dir = tempfile::tempdir().unwrap();
    let archive = build_archive(dir.path(), &hello_spec(dir.path(), "strata-test-docker"));
    assert_eq!(load_and_run("docker", &archive, "strata-test-docker:t1", &[]), "Hello, world!\n");
}

/// `strata build spec.toml | docker load`: with no -o and a pipe as stdout, strata streams.
#[test]
fn piped_stream_loads_into_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hello_spec(dir.path(), "strata-test-pipe");
    for engine in ["docker", "podman"] {
        let mut build = strata(&["build", spec.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
        let load = Command::new(engine).arg("load").stdin(build.stdout.take().unwrap()).output().unwrap();
        assert!(build.wait().unwrap().success());
        assert!(load.status.success(), "{engine} load: {}", String::from_utf8_lossy(&load.stderr));
        assert_eq!(run_in(engine, "strata-test-pipe:t1", &[]), "Hello, world!\n");
        remove_images(engine, &["strata-test-pipe:t1"]);
    }
}

/// Compressed docker-archive layers: gzip into Docker, zstd into podman.
#[test]
fn compressed_docker_archives_load() {
    for (engine, codec) in [("docker", "gzip"), ("podman", "zstd")] {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("strata-test-{codec}");
        let spec = hello_spec(dir.path(), &name);
        let out = dir.path().join("image.tar");
        run_ok(strata(&["build", spec.to_str().unwrap(), "--compress", codec, "-o", &format!("docker-archive:{}", out.display())]));
        assert_eq!(load_and_run(engine, &out, &format!("{name}:t1"), &[]), "Hello, world!\n");
    }
}

/// makes' `makeContainerImage` example: a tree laid over `/` with `working-dir/my-file`.
#[test]
fn copy_to_root_and_working_dir() {
    let (tree, busybox) = (fixture("workingDir"), fixture("busybox"));
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "makes.json",
        &format!(
            r#"{{"name":"strata-test-makes","tag":"t1","copy_to_root":["{tree}"],"config":{{"Env":["PATH={busybox}/bin"],"WorkingDir":"/working-dir"}}}}"#
        ),
    );
    let archive = build_archive(dir.path(), &spec);
    for engine in ["podman", "docker"] {
        run_ok(Command::new(engine).arg("load").stdin(std::fs::File::open(&archive).unwrap()));
        assert_eq!(run_in(engine, "strata-test-makes:t1", &["pwd"]), "/working-dir\n");
        assert_eq!(run_in(engine, "strata-test-makes:t1", &["cat", "my-file"]), "my-file-contents\n");
        let root = run_in(engine, "strata-test-makes:t1", &["ls", "/"]);
        assert!(root.lines().any(|l| l == "working-dir") && root.lines().any(|l| l == "nix"), "{root}");
        remove_images(engine, &["strata-test-makes:t1"]);
    }
    // The tree itself is laid over /, not copied into the store: only its references are.
    let layers = read_archive(&archive).layers;
    let store_entries: Vec<&String> = layers.iter().flat_map(|l| l.keys()).filter(|k| k.contains("working-dir-layer")).collect();
    assert!(store_entries.is_empty(), "{store_entries:?}");
}

/// An engine that stops reading the stream and fails: its own message is reported, not the
/// broken pipe strata saw. (A stand-in `podman` first on PATH: no real engine can be made to
/// fail mid-stream at will.)
#[test]
fn an_engine_failing_mid_stream_is_reported_in_its_own_words() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let podman = bin.join("podman");
    std::fs::write(&podman, "#!/bin/sh\nhead -c 100 >/dev/null\necho 'Error: payload does not match' >&2\nexit 125\n").unwrap();
    std::fs::set_permissions(&podman, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let stderr = fails(strata(&["build", hello_spec(dir.path(), "strata-test-failing").to_str().unwrap(), "-o", "podman:"]).env("PATH", path));
    assert!(stderr.contains("`podman load` failed: Error: payload does not match") && !stderr.contains("Broken pipe"), "{stderr}");
}
