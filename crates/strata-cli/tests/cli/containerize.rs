//! `strata containerize`: environments (packages, variables, a start hook) as images, run in
//! the real podman and Docker engines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

/// A flake (local, builtins only) providing `.#busybox`, and an environment manifest in the
/// same directory installing it and hello.
fn environment(dir: &Path, name: &str, hello: &str, extra_container: &str) -> PathBuf {
    std::fs::write(
        dir.join("flake.nix"),
        r#"{
  outputs = { self }: {
    packages.x86_64-linux.busybox = derivation {
      name = "busybox-1.35"; system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
      args = [ "-c" "mkdir -p $out/bin && cp /bin/busybox $out/bin/ && for a in sh env id touch ls; do ln -s busybox $out/bin/$a; done" ];
    };
  };
}
"#,
    )
    .unwrap();
    write_spec(
        dir,
        "env.toml",
        &format!(
            r#"[install]
hello = "{hello}"
busybox = ".#busybox"
[vars]
message = "Supercharged by strata!"
[hook]
on-activate = 'echo "$message"'
[container]
name = "{name}"
tag = "latest"
max_layers = 40
{extra_container}
config = {{ Cmd = ["hello"], ExposedPorts = {{ "8080/tcp" = {{}} }} }}
"#
        ),
    )
}

#[test]
fn runtime_podman_runs_the_hook_then_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = environment(dir.path(), "strata-test-env-podman", &fixture("hello"), "user = \"app\"");
    run_ok(strata(&["containerize", manifest.to_str().unwrap(), "--runtime", "podman"]));
    let image = "strata-test-env-podman:latest";
    assert_eq!(run_in("podman", image, &[]), "Supercharged by strata!\nHello, world!\n");
    let env = run_in("podman", image, &["env"]);
    assert!(env.lines().any(|l| l == "message=Supercharged by strata!"), "{env}");
    assert!(env.lines().any(|l| l == "PATH=/nix/var/nix/profiles/default/bin:/nix/var/nix/profiles/default/sbin"), "{env}");
    // A non-root user who can write to /tmp.
    assert_eq!(run_in("podman", image, &["id", "-u"]), "Supercharged by strata!\n1000\n");
    assert_eq!(run_in("podman", image, &["sh", "-c", "touch /tmp/x && echo ok"]), "Supercharged by strata!\nok\n");
    // The hook's shell execs the command: it is PID 1, so signals reach it.
    assert_eq!(run_in("podman", image, &["sh", "-c", "echo $$"]), "Supercharged by strata!\n1\n");
    let inspect = stdout_of(Command::new("podman").args(["image", "inspect", image, "--format", "{{.Config.User}} {{.Config.ExposedPorts}}"]));
    assert!(inspect.starts_with("app map[8080/tcp:{}]"), "{inspect}");
    remove_images("podman", &[image]);
}

#[test]
fn piped_into_docker_load() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = environment(dir.path(), "strata-test-env-docker", &fixture("hello"), "");
    let mut build = strata(&["containerize", manifest.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    let load = Command::new("docker").arg("load").stdin(build.stdout.take().unwrap()).output().unwrap();
    assert!(build.wait().unwrap().success());
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let image = "strata-test-env-docker:latest";
    assert_eq!(run_in("docker", image, &[]), "Supercharged by strata!\nHello, world!\n");
    assert_eq!(run_in("docker", image, &["id", "-u"]), "Supercharged by strata!\n0\n", "no user: root");
    let tmp = run_in("docker", image, &["ls", "-ld", "/tmp"]);
    assert!(tmp.contains("drwxrwxrwt"), "{tmp}");
    remove_images("docker", &[image]);
}

/// Two builds give one digest; a changed package changes only the layers that hold or link it.
#[test]
fn rebuilds_are_reproducible_and_stable() {
    let diff_ids = |greeting: &str, tag: &str| {
        let hello = fixture_with("hello", &[("greeting", greeting)]);
        let dir = tempfile::tempdir().unwrap();
        let manifest = environment(dir.path(), "strata-test-env-repro", &hello, "");
        let out = dir.path().join("image.tar");
        run_ok(strata(&["containerize", manifest.to_str().unwrap(), "-t", tag, "-o", &format!("docker-archive:{}", out.display())]));
        let archive = read_archive(&out);
        assert_eq!(archive.manifest[0]["RepoTags"][0], format!("strata-test-env-repro:{tag}"));
        (std::fs::read(&out).unwrap(), archive.layers.len())
    };
    let (first, layers) = diff_ids("Hello, world!", "a");
    let (second, _) = diff_ids("Hello, world!", "a");
    assert!(first == second, "two builds of one environment differ");
    assert_eq!(layers, 4, "glibc, busybox, hello, environment");

    let config_diff_ids = |greeting: &str| {
        let hello = fixture_with("hello", &[("greeting", greeting)]);
        let dir = tempfile::tempdir().unwrap();
        let manifest = environment(dir.path(), "strata-test-env-repro", &hello, "");
        let layout = dir.path().join("layout");
        run_ok(strata(&["containerize", manifest.to_str().unwrap(), "-o", &format!("oci:{}:t", layout.display())]));
        let config = stdout_of(Command::new("skopeo").args(["inspect", "--config", &format!("oci:{}:t", layout.display())]));
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let (before, after) = (config_diff_ids("Hello, world!"), config_diff_ids("Hello, environment!"));
    let changed: Vec<usize> = (0..before.len()).filter(|i| before[*i] != after[*i]).collect();
    assert_eq!(changed.len(), 2, "hello's layer and the environment layer (its profile links to hello): {changed:?}");
    assert_eq!(changed.last(), Some(&(before.len() - 1)));
}

#[test]
fn bad_manifests_are_named() {
    let hello = fixture("hello");
    let fails = |manifest: &Path, expected: &[&str]| {
        let out =
            strata(&["containerize", manifest.to_str().unwrap(), "-o", "docker-archive:out.tar"]).current_dir(manifest.parent().unwrap()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{e:?} not in {stderr:?}");
        }
        assert!(!manifest.parent().unwrap().join("out.tar").exists());
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| write_spec(dir.path(), "env.toml", text);

    fails(&write("[install]\nhello = \"/nix/store/00000000000000000000000000000000-gone\"\n[container]\nname = \"x\"\n"), &["install.hello", "does not exist"]);
    fails(&write("[install]\nbusybox = \".#nothing-here\"\n[container]\nname = \"x\"\n"), &["install.busybox", ".#nothing-here"]);
    fails(&write("[container]\nnmae = \"x\"\n"), &["container.nmae", "unknown field"]);
    fails(&write("[hooks]\n[container]\nname = \"x\"\n"), &["hooks", "unknown field"]);
    fails(&write("[container]\nname = \"x\"\nconfig = { Cmd = \"hello\" }\n"), &["container.config.Cmd", "invalid type"]);
    fails(
        &write(&format!("[install]\nhello = \"{hello}\"\n[hook]\non-activate = \"echo hi\"\n[container]\nname = \"x\"\n")),
        &["hook.on-activate", "needs a shell"],
    );
    fails(&write("[container]\nname = \"x\"\nuser = \"Bad User\"\n"), &["container.user", "not a valid user name"]);
}

/// A flox environment as flox writes it (`.flox/env/manifest.toml`, version 1, and
/// `.flox/env.json`), `pkg-path`s built from a nixpkgs flake (the stand-in), read as it is.
fn flox_environment(dir: &Path) -> PathBuf {
    let env = dir.join("My Env");
    std::fs::create_dir_all(env.join(".flox/env")).unwrap();
    std::fs::write(env.join(".flox/env.json"), r#"{"name": "my-env", "version": 1}"#).unwrap();
    std::fs::write(
        env.join(".flox/env/manifest.toml"),
        r#"version = 1

[install]
hello.pkg-path = "hello"
busybox.pkg-path = "busybox"

[vars]
GREETING = "from vars"

[hook]
on-activate = '''
  echo "hook: $GREETING"
'''

[profile]
common = "export FROM_PROFILE=yes"

[options]
allow.unfree = false

[containerize.config]
cmd = ["hello"]
exposed-ports = ["8080"]
working-dir = "/tmp"
labels = { team = "web" }
"#,
    )
    .unwrap();
    env
}

/// flox users' own files: `strata containerize | podman load` in the environment's
/// directory, as `flox containerize -f - | podman load`; the image is named after the
/// environment; running it runs the hook, then the command; interactive shells read the
/// profile; `-d`, `-f FILE`, `--tag` and `--label` as flox takes them, into Docker.
#[test]
fn a_flox_environment_is_containerized_as_flox_does() {
    let dir = tempfile::tempdir().unwrap();
    let nixpkgs = format!("path:{}", nixpkgs_stand_in(dir.path()).display());
    let env = flox_environment(dir.path());

    let mut build = strata(&["containerize", "--nixpkgs", &nixpkgs]).current_dir(&env).stdout(Stdio::piped()).spawn().unwrap();
    let load = Command::new("podman").arg("load").stdin(build.stdout.take().unwrap()).output().unwrap();
    assert!(build.wait().unwrap().success());
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let image = "my-env:latest";
    assert_eq!(run_in("podman", image, &[]), "hook: from vars\nHello, world!\n");
    assert_eq!(run_in("podman", image, &["hello", "again"]), "hook: from vars\nHello, world!\nagain\n");
    let profile = run_in("podman", image, &["sh", "-i", "-c", "echo profile: $FROM_PROFILE"]);
    assert!(profile.ends_with("profile: yes\n"), "{profile}");
    let config = stdout_of(Command::new("podman").args(["image", "inspect", image, "--format", "{{json .Config}}"]));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["WorkingDir"], "/tmp");
    assert_eq!(config["Labels"]["team"], "web");
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
    remove_images("podman", &[image]);

    let file = dir.path().join("env.tar");
    let args = ["containerize", "-d", env.to_str().unwrap(), "-f", file.to_str().unwrap(), "--tag", "v2", "--label", "tier=edge", "--nixpkgs", &nixpkgs];
    run_ok(strata(&args));
    let loaded = stdout_of(Command::new("docker").arg("load").stdin(std::fs::File::open(&file).unwrap()));
    assert_eq!(loaded.trim(), "Loaded image: my-env:v2");
    assert_eq!(run_in("docker", "my-env:v2", &[]), "hook: from vars\nHello, world!\n");
    let labels = stdout_of(Command::new("docker").args(["image", "inspect", "my-env:v2", "--format", "{{json .Config.Labels}}"]));
    assert_eq!(labels.trim(), r#"{"team":"web","tier":"edge"}"#);
    remove_images("docker", &["my-env:v2"]);
}

/// A flox manifest's mistakes name the file and the key: a package nixpkgs does not have, an
/// unknown key, no environment where one is looked for.
#[test]
fn flox_manifest_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let nixpkgs = format!("path:{}", nixpkgs_stand_in(dir.path()).display());
    let env = flox_environment(dir.path());
    let manifest = env.join(".flox/env/manifest.toml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    for (edit, expected) in [
        (original.replace("hello.pkg-path = \"hello\"", "hello.pkg-path = \"no-such-package\""), "install.hello: cannot build"),
        (original.replace("working-dir", "workdir"), "containerize.config"),
        (original.replace("hello.pkg-path = \"hello\"", "hello = { pkg-path = \"hello\", version = \"3.0\" }"), "install.hello.version"),
    ] {
        std::fs::write(&manifest, edit).unwrap();
        let stderr = fails(&mut strata(&["containerize", "-d", env.to_str().unwrap(), "-f", "-", "--nixpkgs", &nixpkgs]));
        assert!(stderr.contains(&manifest.display().to_string()) && stderr.contains(expected), "{expected}: {stderr}");
    }
    let stderr = fails(strata(&["containerize", "-f", "-"]).current_dir(dir.path()));
    assert!(stderr.contains("no flox environment in . (no ./.flox/env/manifest.toml)") && stderr.contains("-d DIR"), "{stderr}");
}
