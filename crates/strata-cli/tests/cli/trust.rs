//! Hostile input and hard stops (issue #10): links out of the store, lying and corrupt
//! sources, two writers at once, signals and `kill -9` mid-write, secrets, and what other
//! clients (podman, docker, buildah, ctr, skopeo, umoci) make of what strata writes.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn spec_with(dir: &Path, body: &str) -> std::path::PathBuf {
    write_spec(dir, "spec.toml", &format!("name = \"strata-test-trust\"\ntag = \"t\"\n{body}"))
}

/// sha256 of a file, as sha256sum prints it.
fn sha256_of(path: &str) -> String {
    stdout_of(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_owned()
}

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&stdout_of(Command::new("skopeo").args(args))).unwrap()
}

/// #10.1: A store path that is a symlink is a symlink in the image, never what it points to.
#[test]
fn store_paths_that_are_links_stay_links() {
    let (to_etc, to_hello, hello) = (fixture("linkToEtc"), fixture("linkToHello"), fixture("hello"));
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{to_etc}\", \"{to_hello}\"]\n"));
    let archive = build_archive(dir.path(), &spec);
    let all: Vec<(String, EntryInfo)> = read_archive(&archive).layers.into_iter().flatten().collect();
    let entry = |path: &str| all.iter().find(|(p, _)| p == path).map(|(_, e)| e.clone()).unwrap_or_else(|| panic!("{path} missing"));
    let etc = entry(to_etc.trim_start_matches('/'));
    assert_eq!((etc.kind, etc.link.as_deref()), (tar::EntryType::Symlink, Some(&b"/etc"[..])));
    let link = entry(to_hello.trim_start_matches('/'));
    assert_eq!((link.kind, link.link), (tar::EntryType::Symlink, Some(hello.clone().into_bytes())));
    assert!(!all.iter().any(|(p, _)| p.starts_with(&format!("{}/", to_etc.trim_start_matches('/')))), "nothing below the link");
    assert!(!all.iter().any(|(_, e)| e.data.windows(5).any(|w| w == b"root:")), "no host file in the image");
    // What the link points to in the store comes along as its own path.
    assert!(all.iter().any(|(p, _)| p == &format!("{}/bin/hello", hello.trim_start_matches('/'))));

    // As a tree laid over /, a link is an error that names it; nothing is written.
    let spec = spec_with(dir.path(), &format!("copy_to_root = [\"{to_etc}\"]\n"));
    let stderr = fails(strata(&["build", spec.to_str().unwrap(), "-o", "docker-archive:out.tar"]).current_dir(dir.path()));
    assert!(stderr.contains(&to_etc) && stderr.contains("symlink"), "{stderr}");
    assert!(!dir.path().join("out.tar").exists());
}

/// #10.2: Writers to one OCI layout at once, new or existing: all succeed, every tag is kept,
/// and the layout stays valid for umoci.
#[test]
fn concurrent_writers_to_one_layout_all_keep_their_tags() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    for round in 0..3 {
        let layout = dir.path().join(format!("layout{round}"));
        if round == 2 {
            run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}:existing", layout.display())]));
        }
        let writers: Vec<Child> = (0..4)
            .map(|i| strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}:w{i}", layout.display())]).stderr(Stdio::piped()).spawn().unwrap())
            .collect();
        for writer in writers {
            let out = writer.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        }
        for i in 0..4 {
            let inspect = skopeo_json(&["inspect", &format!("oci:{}:w{i}", layout.display())]);
            assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2, "round {round}: w{i}");
        }
        let listed = stdout_of(Command::new("umoci").args(["ls", "--layout"]).arg(&layout));
        assert_eq!(listed.lines().count(), if round == 2 { 5 } else { 4 }, "{listed}");
        assert!(!names_in(&layout).iter().any(|n| n.ends_with(".partial")), "{:?}", names_in(&layout));
        assert!(!names_in(dir.path()).iter().any(|n| n.ends_with(".partial")), "{:?}", names_in(dir.path()));
    }
}

/// #10.3: Corrupt and lying sources are refused before anything is written.
#[test]
fn corrupt_and_lying_sources_are_refused() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = spec_with(d, &format!("[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let archive = build_archive(d, &spec);
    let copy_fails = |source: &str, needle: &str| {
        for dest in ["docker-archive:out.tar", "oci:out:t", "oci-archive:out-oci.tar"] {
            let stderr = fails(strata(&["copy", source, dest]).current_dir(d));
            assert!(stderr.contains(needle), "{source} -> {dest}: {needle:?} not in {stderr}");
            for left in ["out.tar", "out", "out-oci.tar"] {
                assert!(!d.join(left).exists(), "{source} -> {dest} left {left}");
            }
        }
    };

    // A docker-archive whose layer was changed: its diff ID no longer matches the config.
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.windows(11).position(|w| w == b"Hello, worl").expect("hello's greeting in the archive");
    bytes[at] ^= 0x20;
    let corrupt = d.join("corrupt.tar");
    std::fs::write(&corrupt, &bytes).unwrap();
    copy_fails(&format!("docker-archive:{}", corrupt.display()), "diff ID");
    let skopeo = Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", corrupt.display())]).output().unwrap();
    let skopeo_copy = Command::new("skopeo")
        .args(["copy", &format!("docker-archive:{}", corrupt.display()), &format!("oci:{}:x", d.join("skopeo").display())])
        .output()
        .unwrap();
    assert!(skopeo.status.success() && !skopeo_copy.status.success(), "skopeo refuses the same file");

    // An OCI layout whose manifest declares a layer one byte longer than it is.
    let layout = d.join("layout");
    run_ok(strata(&["copy", &format!("docker-archive:{}", archive.display()), &format!("oci:{}:t", layout.display())]));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &serde_json::Value| layout.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"));
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&index["manifests"][0]["digest"])).unwrap()).unwrap();
    let size = manifest["layers"][1]["size"].as_u64().unwrap();
    manifest["layers"][1]["size"] = (size + 1).into();
    let lying = serde_json::to_vec(&manifest).unwrap();
    std::fs::write(d.join("lying.json"), &lying).unwrap();
    let hex = sha256_of(d.join("lying.json").to_str().unwrap());
    std::fs::rename(d.join("lying.json"), layout.join("blobs/sha256").join(&hex)).unwrap();
    let mut lying_index = index.clone();
    lying_index["manifests"][0]["digest"] = format!("sha256:{hex}").into();
    lying_index["manifests"][0]["size"] = lying.len().into();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&lying_index).unwrap()).unwrap();
    copy_fails(&format!("oci:{}:t", layout.display()), "descriptor says");
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    // A blob that is a link out of the layout: refused, and nothing outside is hashed or named.
    let layer = blob(&manifest["layers"][1]["digest"]);
    let saved = std::fs::read(&layer).unwrap();
    std::fs::remove_file(&layer).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &layer).unwrap();
    let stderr = fails(strata(&["copy", &format!("oci:{}:t", layout.display()), "docker-archive:out.tar"]).current_dir(d));
    assert!(stderr.contains("leaves"), "{stderr}");
    assert!(!stderr.contains(&sha256_of("/etc/passwd")), "the hash of a file outside the source: {stderr}");
    assert!(!d.join("out.tar").exists());

    // A blob that is a fifo: refused, not opened (which would wait for a writer forever: then
    // `timeout` ends strata, with its own exit status, 124).
    std::fs::remove_file(&layer).unwrap();
    run_ok(Command::new("mkfifo").arg(&layer));
    let stderr = fails(Command::new("timeout").args(["120", STRATA, "copy", &format!("oci:{}:t", layout.display()), "docker-archive:out.tar"]).current_dir(d));
    assert!(stderr.contains("not a regular file"), "{stderr}");
    std::fs::remove_file(&layer).unwrap();
    std::fs::write(&layer, saved).unwrap();
    run_ok(strata(&["copy", &format!("oci:{}:t", layout.display()), "docker-archive:out.tar"]).current_dir(d));
}

/// #10.5: Counts in a closure graph are checked against the file, never allocated from.
#[test]
fn huge_counts_in_a_closure_graph_are_an_error() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{hello}\"]\n"));
    std::fs::write(dir.path().join("graph"), format!("{hello}\n\n99999999999999999\n{hello}\n")).unwrap();
    let stderr = fails(strata(&["build", spec.to_str().unwrap(), "--closure-graph", "graph", "-o", "docker-archive:x.tar"]).current_dir(dir.path()));
    assert!(stderr.contains("graph") && stderr.contains("fewer references than counted"), "{stderr}");
}

/// #10.6: Secrets: a broken auth file's error does not show its content; `run -e` values are
/// not logged.
#[test]
fn secrets_stay_out_of_messages() {
    let dir = tempfile::tempdir().unwrap();
    let hello = fixture("hello");
    let spec = spec_with(dir.path(), &format!("[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let secret = "c3RyYXRhOnMzY3JldA=="; // base64 of a user and password
    let auth = dir.path().join("auth.json");
    std::fs::write(&auth, format!(r#"{{"auths":{{"127.0.0.1:1":{{"auth":"{secret}" "oops"}}}}}}"#)).unwrap();
    let stderr = fails(strata(&["build", spec.to_str().unwrap(), "-o", "docker://127.0.0.1:1/x:1"]).env("REGISTRY_AUTH_FILE", &auth));
    assert!(stderr.contains(&auth.display().to_string()) && !stderr.contains(secret), "{stderr}");
    std::fs::write(&auth, format!(r#"{{"auths":{{"127.0.0.1:1":{{"auth":{{"nested":"{secret}"}}}}}}}}"#)).unwrap();
    let stderr = fails(strata(&["build", spec.to_str().unwrap(), "-o", "docker://127.0.0.1:1/x:1"]).env("REGISTRY_AUTH_FILE", &auth));
    assert!(!stderr.contains(secret), "{stderr}");

    let out = strata(&["run", spec.to_str().unwrap(), "--engine", "podman", "-v", "-e", "TOKEN=hunter2-secret", "--network", "none"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("TOKEN=<redacted>") && !stderr.contains("hunter2"), "{stderr}");
    remove_images("podman", &["strata-test-trust:t"]);
}

/// Starts `strata build ARGS` of 256 MiB of random bytes, gzipped (seconds of work) in
/// `dir`, and waits until it has begun writing: a scratch file appeared in `watch`.
fn start_big_build(dir: &Path, watch: &Path, args: &[&str], env: &[(&str, &Path)]) -> Child {
    let big = fixture("incompressible");
    let spec = spec_with(dir, &format!("roots = [\"{big}\"]\n"));
    // No layer cache: an earlier build of the spec would spare this one its work.
    let mut cmd = strata(&["build", spec.to_str().unwrap(), "--compress", "gzip", "--no-cache"]);
    cmd.args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !names_in(watch).iter().any(|n| n.ends_with(".partial")) {
        assert!(Instant::now() < deadline, "no scratch file appeared in {}", watch.display());
        std::thread::sleep(Duration::from_millis(1));
    }
    child
}

fn signal(child: &Child, signal: &str) {
    run_ok(Command::new("kill").args([signal, &child.id().to_string()]));
}

/// #10.7: SIGINT and SIGTERM remove every unfinished file and exit 130 and 143; after `kill -9`
/// the next run cleans up and succeeds, and umoci still reads the layout.
#[test]
fn interrupted_runs_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        for dest in ["docker-archive:out.tar", "oci-archive:out-oci.tar", "oci:layout:t"] {
            let child = start_big_build(&d, &d, &["-o", dest], &[]);
            signal(&child, sig);
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(code), "{dest}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(names_in(&d), ["spec.toml"], "{dest} {sig}");
        }
    }
    // Into an existing layout, killed with -9: its scratch stays (outside blobs/sha256), umoci
    // still collects the layout's garbage, and the next run succeeds and sweeps it.
    run_ok(strata(&["build", d.join("spec.toml").to_str().unwrap(), "-o", "oci:layout:first"]).current_dir(&d));
    let child = start_big_build(&d, &d.join("layout"), &["-o", "oci:layout:t"], &[]);
    signal(&child, "-KILL");
    let _ = child.wait_with_output();
    assert!(names_in(&d.join("layout")).iter().any(|n| n.ends_with(".partial")), "a kill -9 leaves its scratch");
    run_ok(Command::new("umoci").args(["gc", "--layout"]).arg(d.join("layout")));
    run_ok(strata(&["build", d.join("spec.toml").to_str().unwrap(), "-o", "oci:layout:t"]).current_dir(&d));
    assert!(!names_in(&d.join("layout")).iter().any(|n| n.ends_with(".partial")), "{:?}", names_in(&d.join("layout")));
    run_ok(Command::new("umoci").args(["ls", "--layout"]).arg(d.join("layout")));
    // The same beside a file destination.
    let child = start_big_build(&d, &d, &["-o", "docker-archive:out.tar"], &[]);
    signal(&child, "-KILL");
    let _ = child.wait_with_output();
    assert!(names_in(&d).iter().any(|n| n.ends_with(".partial")), "a kill -9 leaves its scratch");
    run_ok(strata(&["build", d.join("spec.toml").to_str().unwrap(), "-o", "docker-archive:out.tar"]).current_dir(&d));
    assert!(!names_in(&d).iter().any(|n| n.ends_with(".partial")), "{:?}", names_in(&d));

    // A docker-archive with compressed layers stages them in $TMPDIR: cleaned on SIGTERM too.
    let tmp = tempfile::tempdir().unwrap();
    let child = start_big_build(&d, tmp.path(), &["-o", "docker-archive:-"], &[("TMPDIR", tmp.path())]);
    signal(&child, "-TERM");
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(143));
    assert!(names_in(tmp.path()).is_empty(), "{:?}", names_in(tmp.path()));
}

/// #10.8: `created` with an offset is written in UTC and the image loads everywhere; without a
/// zone it is refused.
#[test]
fn created_times_are_strict_and_written_in_utc() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), "created = \"2024-05-06T07:08:09\"\n");
    let stderr = fails(strata(&["build", spec.to_str().unwrap(), "-o", "docker-archive:x.tar"]).current_dir(dir.path()));
    assert!(stderr.contains("created") && stderr.contains("spec.toml"), "{stderr}");
    // Named apart from spec_with's image, which another test runs in podman at the same time.
    let spec = write_spec(
        dir.path(),
        "spec.toml",
        &format!("name = \"strata-test-created\"\ntag = \"t\"\ncreated = \"2024-05-06t07:08:09+02:00\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"),
    );
    let archive = build_archive(dir.path(), &spec);
    let config = skopeo_json(&["inspect", "--config", &format!("docker-archive:{}", archive.display())]);
    assert_eq!(config["created"], "2024-05-06T05:08:09Z");
    assert_eq!(load_and_run("podman", &archive, "strata-test-created:t", &[]), "Hello, world!\n");
    assert_eq!(load_and_run("docker", &archive, "strata-test-created:t", &[]), "Hello, world!\n");
}

/// #10.9: What strata writes has mode 0666 less the umask, as tar and skopeo make files.
#[test]
fn outputs_follow_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{}\"]\n", fixture("hello")));
    for (umask, mode) in [("022", 0o644), ("002", 0o664)] {
        let script = format!(
            "umask {umask} && {STRATA} build {s} -o docker-archive:a.tar && {STRATA} build {s} -o docker-archive:a.tar && {STRATA} build {s} -o oci:layout{umask}:t && {STRATA} build {s} -o oci-archive:b.tar:t",
            s = spec.display()
        );
        run_ok(Command::new("sh").arg("-c").arg(script).current_dir(dir.path()));
        let layout = dir.path().join(format!("layout{umask}"));
        let mut files = vec![dir.path().join("a.tar"), dir.path().join("b.tar"), layout.join("index.json"), layout.join("oci-layout")];
        files.extend(std::fs::read_dir(layout.join("blobs/sha256")).unwrap().map(|e| e.unwrap().path()));
        for file in files {
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, mode, "{} under umask {umask}", file.display());
        }
        let dir_mode = std::fs::metadata(&layout).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, mode | 0o111, "the layout directory");
    }
}

/// #10.10: Names and tags are checked before any work: nothing is made. Tags are ASCII, as
/// Docker's grammar has them (oci-spec's parser takes `café`).
#[test]
fn bad_names_and_tags_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{}\"]\n", fixture("hello")));
    let bad = [
        "oci:layout:bad#tag",
        "oci-archive:x.tar:Bad/Name:1",
        "docker-daemon:web",
        "podman:Web:1",
        "podman:web:café",
        "docker://127.0.0.1:1/x:bad#tag",
        "docker://127.0.0.1:1/x:ταγ",
        "s3:bucket",
    ];
    for dest in bad {
        let stderr = fails(strata(&["build", spec.to_str().unwrap(), "-o", dest]).current_dir(dir.path()));
        assert!(stderr.contains("invalid image reference"), "{dest}: {stderr}");
        assert_eq!(names_in(dir.path()), ["spec.toml"], "{dest}");
    }
    let stderr = fails(strata(&["build", spec.to_str().unwrap(), "-o", "s3:bucket"]).current_dir(dir.path()));
    assert!(stderr.contains("docker://") && stderr.contains("podman:"), "every transport is listed: {stderr}");
}

/// #10.12: An OCI archive or layout written with NAME:TAG is named so by podman, buildah and
/// containerd's ctr; with a tag alone, by the image's own name.
#[test]
fn engines_name_oci_images_as_asked() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let cases = [
        ("a.tar:strata-test-named:1.0", "docker.io/library/strata-test-named:1.0"),
        ("b.tar:registry.example:5000/org/strata-test-named:2.0", "registry.example:5000/org/strata-test-named:2.0"),
        ("c.tar:v3", "docker.io/library/strata-test-trust:v3"),
    ];
    let containerd = "/var/run/docker/containerd/containerd.sock";
    for (reference, expected) in cases {
        let archive = dir.path().join(reference.split(':').next().unwrap());
        run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci-archive:{}", dir.path().join(reference).display())]));
        let loaded = stdout_of(Command::new("podman").arg("load").arg("-i").arg(&archive));
        assert!(loaded.contains(&format!("Loaded image: {expected}")), "podman: {loaded}");
        assert_eq!(run_in("podman", expected, &[]), "Hello, world!\n");
        remove_images("podman", &[expected]);

        let ctr = |args: &[&str]| stdout_of(Command::new("ctr").args(["--address", containerd, "-n", "strata-test"]).args(args));
        let imported = ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(imported.contains(expected), "ctr: {imported}");
        assert!(ctr(&["images", "ls", "-q"]).lines().any(|l| l == expected));
        ctr(&["images", "rm", expected]);

        let container = stdout_of(Command::new("buildah").arg("from").arg(format!("oci-archive:{}", archive.display())));
        let images = stdout_of(Command::new("buildah").args(["images", "--format", "{{.Name}}:{{.Tag}}"]));
        assert!(images.lines().any(|l| l == expected), "buildah: {images}");
        let _ = Command::new("buildah").args(["rm", container.trim()]).output();
        remove_images("buildah", &[expected]);
    }
}

/// #10.13: Docker before 23 cannot read zstd: asking for it fails up front; zstd base layers are
/// written uncompressed for Docker, and the image runs.
#[test]
fn zstd_and_the_docker_engine() {
    let (busybox, hello) = (fixture("busybox"), fixture("hello"));
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let version = stdout_of(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]));
    let major: u32 = version.trim().split('.').next().unwrap().parse().unwrap();
    let out = strata(&["build", spec.to_str().unwrap(), "-o", "docker-daemon:strata-test-zstd:1", "--compress", "zstd"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if major < 23 {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("zstd") && stderr.contains("Docker"), "{stderr}");
    } else {
        assert!(out.status.success(), "{stderr}");
    }
    let base = format!("oci:{}:b", dir.path().join("base").display());
    let base_spec = write_spec(dir.path(), "base.toml", &format!("name = \"base\"\nroots = [\"{busybox}\"]\n"));
    run_ok(strata(&["build", base_spec.to_str().unwrap(), "-o", &base, "--compress", "zstd"]));
    let top = spec_with(dir.path(), &format!("from_image = \"{base}\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    run_ok(strata(&["build", top.to_str().unwrap(), "-o", "docker-daemon:strata-test-zstd:2"]));
    assert_eq!(run_in("docker", "strata-test-zstd:2", &[]), "Hello, world!\n");
    // A copy too: the zstd base as it is loads, asking for zstd fails up front on Docker < 23.
    run_ok(strata(&["copy", &base, "docker-daemon:strata-test-zstd:3"]));
    let busybox_env = stdout_of(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        &format!("{busybox}/bin/echo"),
        "strata-test-zstd:3",
        "ok",
    ]));
    assert_eq!(busybox_env, "ok\n");
    let out = strata(&["copy", &base, "docker-daemon:strata-test-zstd:4", "--compress", "zstd"]).output().unwrap();
    assert_eq!(out.status.success(), major >= 23, "{}", String::from_utf8_lossy(&out.stderr));
    remove_images("docker", &["strata-test-zstd:1", "strata-test-zstd:2", "strata-test-zstd:3", "strata-test-zstd:4"]);
}

/// #10.16: `strata run`: strata's own failure is 125, the container's status is passed through.
#[test]
fn run_tells_its_own_failures_from_the_containers() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), "bogus = 1\n");
    let out = strata(&["run", spec.to_str().unwrap(), "--engine", "podman"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", String::from_utf8_lossy(&out.stderr));
    let out = strata(&["run", "/nonexistent/image.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let help = stdout_of(&mut strata(&["run", "--help"]));
    assert!(help.contains("125") && help.contains("Exit codes"), "{help}");
}

/// #10.17: Messages: colour only on a terminal and never with NO_COLOR; no cause twice; TOML
/// syntax errors with line and column; errors of a spec name its file.
#[test]
fn messages_are_plain_single_and_placed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{}\"]\n", fixture("hello")));
    let cmd = format!("{STRATA} -v build {} -o docker-archive:{}/x.tar", spec.display(), dir.path().display());
    let on_terminal = |env: &str| {
        let out = Command::new("script").args(["-qec", &format!("{env} {cmd}"), "/dev/null"]).stdin(Stdio::null()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(on_terminal("").contains('\x1b'), "colour on a terminal");
    assert!(!on_terminal("NO_COLOR=1").contains('\x1b'), "NO_COLOR");
    let piped = strata(&["-v", "build", spec.to_str().unwrap(), "-o", "docker-archive:x.tar"]).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success() && stderr.contains("layers planned") && !stderr.contains('\x1b'), "{stderr}");

    let stderr = fails(&mut strata(&["build", spec.to_str().unwrap(), "-o", "docker-archive:/nonexistent/dir/x.tar"]));
    assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
    let stderr = fails(&mut strata(&["copy", "oci:/nonexistent/layout", "docker-archive:/tmp/x.tar"]));
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");

    let bad = write_spec(dir.path(), "bad.toml", "name = \"x\"\nroots = [\n  \"a\" \"b\"]\n");
    let stderr = fails(&mut strata(&["build", bad.to_str().unwrap(), "-o", "docker-archive:x.tar"]));
    assert!(stderr.contains("bad.toml") && stderr.contains("line 3, column 7"), "{stderr}");
    let missing = write_spec(dir.path(), "missing.toml", "name = \"x\"\nroots = [\"/nix/store/00000000000000000000000000000000-gone\"]\n");
    let stderr = fails(&mut strata(&["build", missing.to_str().unwrap(), "-o", "docker-archive:x.tar"]));
    assert!(stderr.contains("missing.toml") && stderr.contains("roots[0]"), "{stderr}");
}

/// An output that is a device, a fifo (`/dev/null`, `>(…)`), strata's own standard output
/// (`/dev/stdout`) or a link is written through, never replaced by a regular file (as tar
/// does): the archive destinations, `export -o` and `sbom -o` alike. What comes out of the
/// fifo is the output itself: the docker-archive written to a file, an OCI archive skopeo
/// reads, the image's files, an SBOM.
#[test]
fn devices_and_fifos_are_written_to_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{}\"]\n", fixture("hello")));
    let archive = build_archive(dir.path(), &spec);
    let (spec, source) = (spec.to_str().unwrap(), format!("docker-archive:{}", archive.display()));
    for args in [
        ["build", spec, "-o", "docker-archive:/dev/null"],
        ["build", spec, "-o", "oci-archive:/dev/null"],
        ["export", &source, "-o", "/dev/null"],
        ["sbom", &source, "-o", "/dev/null"],
    ] {
        run_ok(strata(&args));
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "{args:?} replaced /dev/null");
    }
    let fifo = dir.path().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let f = fifo.to_str().unwrap();
    let through_fifo = |args: &[&str]| -> Vec<u8> {
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || std::fs::read(fifo).unwrap()
        });
        run_ok(strata(args));
        // Checked first: a reader whose fifo was replaced waits for a writer forever.
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "{args:?} replaced the fifo");
        reader.join().unwrap()
    };
    let streamed = through_fifo(&["build", spec, "-o", &format!("docker-archive:{f}")]);
    assert_eq!(sha256_hex(&streamed), sha256_of(archive.to_str().unwrap()), "the docker-archive through the fifo is the one written to a file");
    let copied = dir.path().join("copied.tar");
    std::fs::write(&copied, through_fifo(&["copy", &source, &format!("oci-archive:{f}:t")])).unwrap();
    let inspected = skopeo_json(&["inspect", &format!("oci-archive:{}:t", copied.display())]);
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(read_archive(&archive).layers.len()));
    let files = through_fifo(&["export", &source, "-o", f]);
    let names: Vec<String> = tar::Archive::new(&files[..]).entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n.ends_with("/bin/hello")), "{names:?}");
    let sbom: serde_json::Value = serde_json::from_slice(&through_fifo(&["sbom", &source, "-o", f])).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(names_in(dir.path()), ["copied.tar", "fifo", "image.tar", "spec.toml"], "no scratch file left");

    // `-o /dev/stdout` with standard output sent to a file (appended to, here): written
    // through standard output as the shell opened it, never a file put in /dev/stdout's place.
    let log = dir.path().join("log");
    std::fs::write(&log, "before\n").unwrap();
    let appended = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    run_ok(strata(&["sbom", &source, "-o", "/dev/stdout"]).stdout(appended));
    let stdout_link = std::fs::symlink_metadata("/dev/stdout").unwrap().file_type().is_symlink();
    if !stdout_link {
        // Put back what the machine had, before failing.
        let _ = std::fs::remove_file("/dev/stdout");
        let _ = std::os::unix::fs::symlink("/proc/self/fd/1", "/dev/stdout");
    }
    assert!(stdout_link, "/dev/stdout was replaced");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("before\n{") && text.contains("SPDX-2.3"), "{text:.100}");
    // A link to a regular file: the file is replaced, the link stays.
    let (link, target) = (dir.path().join("link.json"), dir.path().join("target.json"));
    std::fs::write(&target, "old").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    run_ok(strata(&["sbom", &source, "-o", link.to_str().unwrap()]));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
    assert!(std::fs::read_to_string(&target).unwrap().contains("SPDX-2.3"));
}

/// #10.3: an archive compressed whole is decompressed to $TMPDIR, never past nine tenths of
/// its free space: a small file that expands without end fails, and fills no disk.
#[test]
fn decompressing_an_archive_never_fills_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{}\"]\n", fixture("hello")));
    let archive = build_archive(dir.path(), &spec);
    run_ok(Command::new("gzip").arg("-k").arg(&archive));
    let small = dir.path().join("small-tmp");
    std::fs::create_dir(&small).unwrap();
    run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&small));
    let out = strata(&["copy", &format!("docker-archive:{}.gz", archive.display()), &format!("oci:{}:t", dir.path().join("out").display())])
        .env("TMPDIR", &small)
        .output()
        .unwrap();
    let left = names_in(&small);
    let _ = Command::new("umount").arg(&small).status();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("decompressed, it is larger than"), "{stderr}");
    assert!(left.is_empty(), "{left:?}");
    assert!(!dir.path().join("out").exists());
    // With room, the same archive copies.
    run_ok(strata(&["copy", &format!("docker-archive:{}.gz", archive.display()), &format!("oci:{}:t", dir.path().join("out").display())]));
}

/// A destination whose disk fills up mid-write fails the command, saying where and why, and
/// leaves nothing there: no image, no scratch file, for a layout (whose blobs are flushed and
/// named on threads of their own) as for the archives.
#[test]
fn a_full_disk_fails_the_write_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), &format!("roots = [\"{}\"]\n", fixture("hello")));
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    // The image takes about 1 MB, zstd-compressed.
    run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(&small));
    let s = small.display();
    let runs: Vec<(String, std::process::Output, Vec<String>)> =
        [format!("oci:{s}/layout:t"), format!("oci-archive:{s}/out.tar:t"), format!("docker-archive:{s}/out.tar")]
            .into_iter()
            .map(|dest| {
                let out = strata(&["build", spec.to_str().unwrap(), "-o", &dest, "--compress", "zstd"]).output().unwrap();
                (dest, out, names_in(&small))
            })
            .collect();
    let _ = Command::new("umount").arg(&small).status();
    for (dest, out, left) in runs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{dest}: {stderr}");
        assert!(stderr.contains("No space left on device") && stderr.contains(&s.to_string()), "{dest}: {stderr}");
        assert!(left.is_empty(), "{dest} left {left:?}");
    }
}
