//! Registries: push to and pull from a real CNCF distribution registry (one per test, on a
//! free loopback port; with htpasswd auth, bearer tokens or TLS), checked by skopeo and
//! podman; and scripted registries (a thread of the test binary) for what no real one here
//! does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn hello_spec(dir: &Path, greeting: &str) -> PathBuf {
    let hello = fixture_with("hello", &[("greeting", greeting)]);
    write_spec(dir, &format!("{}.toml", greeting.len()), &format!("name = \"hello\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"))
}

/// `strata ARGS --creds … --tls-verify=false`, with its own layer cache.
fn strata_reg(cache: &Path, args: &[&str]) -> Command {
    let mut cmd = strata(args);
    cmd.args(["--creds", CREDS, "--tls-verify=false"]).env("STRATA_CACHE_DIR", cache);
    cmd
}

#[test]
fn push_then_inspect_pull_and_run() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}:v1", registry.reference("strata-test/hello"));
    run_ok(strata_reg(dir.path(), &["build", hello_spec(dir.path(), "Hello, world!").to_str().unwrap(), "-o", &target]));

    let inspect = stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--creds", CREDS, &target]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
    let raw = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", CREDS, &target]));
    assert!(raw.contains("application/vnd.oci.image.layer.v1.tar+gzip"), "{raw}");

    let image = target.trim_start_matches("docker://").to_owned();
    run_ok(Command::new("podman").args(["pull", "--quiet", "--tls-verify=false", "--creds", CREDS, &image]));
    assert_eq!(run_in("podman", &image, &[]), "Hello, world!\n");
    remove_images("podman", &[&image]);

    // Pulled back by strata: the same manifest, every blob checked.
    let layout = dir.path().join("pulled");
    run_ok(strata_reg(dir.path(), &["copy", &target, &format!("oci:{}:p", layout.display())]));
    let pulled: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &format!("oci:{}:p", layout.display())]))).unwrap();
    assert_eq!(pulled["Digest"], inspect["Digest"]);
}

/// Unchanged: no blob uploaded, with strata's cache or without it. One path changed: one
/// layer blob uploaded, plus the config. Another repository: mounted, not uploaded.
#[test]
fn pushes_upload_only_what_changed() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let target = format!("{}:v1", registry.reference("strata-test/app"));
    let first = hello_spec(dir.path(), "Hello, world!");
    let push = |spec: &Path, cache: &Path, target: &str| run_ok(strata_reg(cache, &["build", spec.to_str().unwrap(), "-o", target]));

    push(&first, &cache, &target);
    assert_eq!(registry.uploads(), 3, "two layers and the config");
    push(&first, &cache, &target);
    assert_eq!(registry.uploads(), 3, "nothing uploaded again");
    push(&first, &dir.path().join("empty-cache"), &target);
    assert_eq!(registry.uploads(), 3, "nothing uploaded again without strata's cache either");

    let changed = hello_spec(dir.path(), "Hello, changed world!");
    push(&changed, &cache, &target);
    assert_eq!(registry.uploads(), 5, "hello's layer and the new config only");

    let other = format!("{}:v1", registry.reference("strata-test/other"));
    push(&changed, &cache, &other);
    assert_eq!(registry.requests("POST", "mount=sha256"), 2, "both layers mounted");
    assert_eq!(registry.uploads(), 6, "only the config uploaded (the registry mounts no config)");
    let inspect = stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--creds", CREDS, &other]));
    assert!(inspect.contains("\"Layers\""), "{inspect}");
}

#[test]
fn a_wrong_password_is_reported_without_showing_it() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = hello_spec(dir.path(), "Hello, world!");
    for verbosity in ["-q", "-vv"] {
        let mut cmd = strata(&[
            "build",
            spec.to_str().unwrap(),
            "-o",
            &registry.reference("strata-test/x"),
            "--tls-verify=false",
            "--creds",
            "strata-user:Wr0ngPassw0rd",
        ]);
        if verbosity == "-vv" {
            cmd.arg("-vv");
        }
        let out = cmd.env("STRATA_CACHE_DIR", dir.path()).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("authentication to 127.0.0.1") && stderr.contains("failed"), "{stderr}");
        assert!(!stdout.contains("Wr0ngPassw0rd") && !stderr.contains("Wr0ngPassw0rd"), "the password leaked: {stderr}");
    }
    // Credentials stored by `podman login` and by `docker login` work as --creds does, each
    // found where its login put them (podman's in $REGISTRY_AUTH_FILE, Docker's in
    // $DOCKER_CONFIG), with nothing else to find them in.
    let (user, password) = CREDS.split_once(':').unwrap();
    let host = format!("127.0.0.1:{}", registry.port);
    let empty = dir.path().join("home");
    std::fs::create_dir(&empty).unwrap();
    let login = |cmd: &mut Command, target: &str| {
        let mut child = cmd.args(["-u", user, "--password-stdin", target]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let podman_login = |authfile: &Path, target: &str| login(Command::new("podman").args(["login", "--tls-verify=false", "--authfile"]).arg(authfile), target);
    // strata pushing to `repository`, with nothing to find credentials in but `variable`.
    let push = |repository: &str, variable: &str, value: &Path| {
        let mut cmd = strata(&["build", spec.to_str().unwrap(), "-o", &registry.reference(repository), "--tls-verify=false"]);
        for v in ["REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"] {
            cmd.env_remove(v);
        }
        cmd.env("HOME", &empty).env(variable, value).env("STRATA_CACHE_DIR", dir.path());
        cmd
    };
    let auth = dir.path().join("auth.json");
    podman_login(&auth, &host);
    let docker_config = dir.path().join("docker");
    login(Command::new("docker").arg("--config").arg(&docker_config).arg("login"), &host);
    for (variable, value) in [("REGISTRY_AUTH_FILE", &auth), ("DOCKER_CONFIG", &docker_config)] {
        run_ok(&mut push("strata-test/x", variable, value));
    }
    // A login scoped to a namespace (`podman login HOST/strata-test`, the only entry in its
    // file) answers for the repositories under it, and for no other.
    let scoped = dir.path().join("scoped.json");
    podman_login(&scoped, &format!("{host}/strata-test"));
    let written = std::fs::read_to_string(&scoped).unwrap();
    assert!(written.contains(&format!("\"{host}/strata-test\"")), "podman wrote no scoped key: {written}");
    run_ok(&mut push("strata-test/x", "REGISTRY_AUTH_FILE", &scoped));
    let elsewhere = push("elsewhere/x", "REGISTRY_AUTH_FILE", &scoped).output().unwrap();
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert_eq!(elsewhere.status.code(), Some(1), "pushed to elsewhere/x without credentials: {stderr}");
    assert!(stderr.contains("authentication to 127.0.0.1"), "{stderr}");
}

/// The registry dies during a push: strata retries, then fails with a clear error; once the
/// registry is back, the same push succeeds and the image runs.
#[test]
fn a_registry_stopped_mid_push() {
    let mut registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (hello, big) = (fixture("hello"), fixture_with("vanishing", &[("nonce", "-registry")]));
    let spec = write_spec(dir.path(), "big.toml", &format!("name = \"big\"\nroots = [\"{big}\"]\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let target = format!("{}:v1", registry.reference("strata-test/interrupted"));
    let push = || strata_reg(dir.path(), &["build", spec.to_str().unwrap(), "--compress", "none", "-o", &target]);
    let child = push().stderr(Stdio::piped()).spawn().unwrap();
    // Once an upload has begun, pause strata, kill the registry, let strata go on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let upload_started =
        || std::fs::read_to_string(registry.log()).unwrap_or_default().lines().any(|l| l.contains("http.request.method=PUT") && l.contains("/blobs/uploads/"));
    while !upload_started() {
        assert!(Instant::now() < deadline, "strata never started an upload");
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id().to_string();
    run_ok(Command::new("kill").args(["-STOP", &pid]));
    registry.stop();
    run_ok(Command::new("kill").args(["-CONT", &pid]));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{}", registry.port)) && stderr.contains("trying again"), "{stderr}");
    assert!(!stderr.contains("s3cret-pass"), "{stderr}");

    registry.restart();
    run_ok(push());
    let image = target.trim_start_matches("docker://").to_owned();
    run_ok(Command::new("podman").args(["pull", "--quiet", "--tls-verify=false", "--creds", CREDS, &image]));
    assert_eq!(run_in("podman", &image, &[]), "Hello, world!\n");
    remove_images("podman", &[&image]);
}

/// from_image from a registry: base layers first, config merged; it runs.
#[test]
fn from_image_in_a_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let busybox = fixture("busybox");
    let base_spec = write_spec(
        dir.path(),
        "base.toml",
        &format!("name = \"base\"\nroots = [\"{busybox}\"]\n[config]\nEnv = [\"PATH={busybox}/bin\", \"GREETING=hi\"]\nLabels = {{ base = \"yes\" }}\n"),
    );
    let base = format!("{}:1", registry.reference("strata-test/base"));
    run_ok(strata_reg(dir.path(), &["build", base_spec.to_str().unwrap(), "-o", &base]));
    let top_spec = write_spec(
        dir.path(),
        "top.toml",
        &format!("name = \"strata-test-registry-top\"\ntag = \"t\"\nfrom_image = \"{base}\"\n[config]\nEnv = [\"GREETING=hello\"]\nEntrypoint = [\"sh\", \"-c\"]\nLabels = {{ top = \"yes\" }}\n"),
    );
    run_ok(strata_reg(dir.path(), &["build", top_spec.to_str().unwrap(), "-o", "podman:"]));
    assert_eq!(run_in("podman", "strata-test-registry-top:t", &["echo $GREETING"]), "hello\n");
    let labels = stdout_of(Command::new("podman").args(["image", "inspect", "strata-test-registry-top:t", "--format", "{{json .Config.Labels}}"]));
    assert_eq!(labels.trim(), r#"{"base":"yes","top":"yes"}"#);
    remove_images("podman", &["strata-test-registry-top:t"]);

    // Pushed to another repository of the same registry, with no cache to remember anything,
    // the base layer is mounted from the repository it was pulled from.
    let uploads = registry.uploads();
    run_ok(strata_reg(&dir.path().join("fresh-cache"), &["build", top_spec.to_str().unwrap(), "-o", &registry.reference("strata-test/top")]));
    assert_eq!(registry.requests("POST", "from=strata-test%2Fbase"), 1, "the base layer is mounted");
    assert_eq!(registry.uploads(), uploads + 1, "and only the config is uploaded (the top adds no layer)");
}

/// A bad tag is refused before anything is uploaded (#10.10); a plain-HTTP registry without
/// --tls-verify=false and a closed port are told apart, at once (#10.14).
#[test]
fn bad_tags_plain_http_and_closed_ports_fail_at_once() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = hello_spec(dir.path(), "Hello, world!");
    let stderr = fails(&mut strata_reg(dir.path(), &["build", spec.to_str().unwrap(), "-o", &format!("{}:bad#tag", registry.reference("strata-test/x"))]));
    assert!(stderr.contains("invalid image reference"), "{stderr}");
    assert_eq!(std::fs::read_to_string(registry.log()).unwrap().matches("response completed").count(), 0, "nothing was sent");

    let stderr =
        fails(strata(&["build", spec.to_str().unwrap(), "-o", &registry.reference("strata-test/x"), "--creds", CREDS]).env("STRATA_CACHE_DIR", dir.path()));
    assert!(stderr.contains("plain HTTP") && stderr.contains("--tls-verify=false"), "{stderr}");
    let closed = free_port();
    let stderr = fails(&mut strata_reg(dir.path(), &["build", spec.to_str().unwrap(), "-o", &format!("docker://127.0.0.1:{closed}/x:1")]));
    assert!(stderr.contains("connection refused") && stderr.contains(&format!("127.0.0.1:{closed}")), "{stderr}");
    assert!(!stderr.contains("trying again"), "{stderr}");
}

/// `copy docker://HOST/REPO:TAG` keeps the host in the image's name (#10.11); `copy` to a
/// registry compresses uncompressed layers as skopeo does, or as --compress says (#10.15).
#[test]
fn copies_from_and_to_registries_name_and_compress_as_skopeo_does() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = build_archive(dir.path(), &hello_spec(dir.path(), "Hello, world!"));
    let source = format!("docker-archive:{}", archive.display());
    let media_types = |reference: &str| {
        let raw = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", CREDS, reference]));
        let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
        manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let gzipped = format!("{}:gz", registry.reference("strata-test/copied"));
    run_ok(strata_reg(dir.path(), &["copy", &source, &gzipped]));
    assert_eq!(media_types(&gzipped), ["application/vnd.oci.image.layer.v1.tar+gzip"; 2]);
    let zstd = format!("{}:zstd", registry.reference("strata-test/copied"));
    run_ok(strata_reg(dir.path(), &["copy", &source, &zstd, "--compress", "zstd"]));
    assert_eq!(media_types(&zstd), ["application/vnd.oci.image.layer.v1.tar+zstd"; 2]);
    let config = |r: &str| stdout_of(Command::new("skopeo").args(["inspect", "--config", "--raw", "--tls-verify=false", "--creds", CREDS, r]));
    assert_eq!(config(&gzipped), config(&source), "re-encoding keeps the config and its diff IDs");
    assert_eq!(config(&zstd), config(&source));

    // Pulled back into an archive and podman: named HOST/REPO:TAG, as podman names a pull.
    let name = gzipped.trim_start_matches("docker://").to_owned();
    let out = dir.path().join("pulled.tar");
    run_ok(strata_reg(dir.path(), &["copy", &gzipped, &format!("docker-archive:{}", out.display())]));
    let manifest: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("tar").arg("-xOf").arg(&out).arg("manifest.json"))).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], name.as_str());
    run_ok(strata_reg(dir.path(), &["copy", &zstd, "podman:"]));
    let zstd_name = zstd.trim_start_matches("docker://").to_owned();
    assert_eq!(run_in("podman", &zstd_name, &[]), "Hello, world!\n");
    remove_images("podman", &[&zstd_name]);
}

/// A push stages compressed layers in $TMPDIR: SIGTERM removes them, and the tag is not
/// moved (#10.7).
#[test]
fn an_interrupted_push_leaves_no_scratch() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let big = fixture("incompressible");
    let spec = write_spec(dir.path(), "big.toml", &format!("name = \"big\"\nroots = [\"{big}\"]\n"));
    let target = format!("{}:v1", registry.reference("strata-test/interrupted-push"));
    let child = strata_reg(dir.path(), &["build", spec.to_str().unwrap(), "-o", &target]).env("TMPDIR", tmp.path()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while names_in(tmp.path()).is_empty() {
        assert!(Instant::now() < deadline, "no scratch file in $TMPDIR");
        std::thread::sleep(Duration::from_millis(1));
    }
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(names_in(tmp.path()).is_empty(), "{:?}", names_in(tmp.path()));
    let inspect = Command::new("skopeo").args(["inspect", "--tls-verify=false", "--creds", CREDS, &target]).output().unwrap();
    assert!(!inspect.status.success(), "no manifest was pushed");
}

/// A copy from one registry to another: the same manifest digest, every layer uploaded
/// straight from the pulled blob (#11), and the copy runs.
#[test]
fn registry_to_registry_copies_keep_the_digest() {
    let (from, to) = (Registry::start(), Registry::start());
    let dir = tempfile::tempdir().unwrap();
    let source = format!("{}:v1", from.reference("strata-test/src"));
    run_ok(strata_reg(dir.path(), &["build", hello_spec(dir.path(), "Hello, world!").to_str().unwrap(), "-o", &source]));
    let target = format!("{}:v1", to.reference("strata-test/copied"));
    run_ok(strata_reg(dir.path(), &["copy", &source, &target]));
    assert_eq!(to.uploads(), 3, "two layers and the config");
    let digest = |r: &str| stdout_of(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", "--tls-verify=false", "--creds", CREDS, r]));
    assert_eq!(digest(&source), digest(&target));
    let image = target.trim_start_matches("docker://").to_owned();
    run_ok(Command::new("podman").args(["pull", "--quiet", "--tls-verify=false", "--creds", CREDS, &image]));
    assert_eq!(run_in("podman", &image, &[]), "Hello, world!\n");
    remove_images("podman", &[&image]);
}

/// What a [`scripted_registry`] answers a request with.
struct Answer {
    status: &'static str,
    headers: String,
    body: Vec<u8>,
    /// Spaces sent after the body, a MiB at a time, until the client stops reading.
    endless: usize,
}

impl Answer {
    fn ok(body: &[u8]) -> Answer {
        Answer { status: "200 OK", headers: "Content-Type: application/vnd.oci.image.index.v1+json\r\n".into(), body: body.to_vec(), endless: 0 }
    }
}

/// A registry on a loopback port that answers each request (its path and headers, as one
/// string) as `answer` says: for behaviour no real registry here shows (an endless body,
/// bearer tokens). Returns its host and a count of the endless bytes it managed to send.
fn scripted_registry(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let (counter, answer) = (sent.clone(), std::sync::Arc::new(answer));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (counter, answer) = (counter.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let (mut request, mut line) = (String::new(), String::new());
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        request.push_str(&line);
                        line.clear();
                    }
                    if request.is_empty() {
                        return;
                    }
                    let a = answer(request.split_once(' ').map_or("", |(_, rest)| rest));
                    // An endless body says no length: it ends when the connection does.
                    let length = if a.endless > 0 { "Connection: close".to_owned() } else { format!("Content-Length: {}", a.body.len()) };
                    let head = format!("HTTP/1.1 {}\r\n{}{length}\r\n\r\n", a.status, a.headers);
                    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&a.body));
                    let piece = vec![b' '; 1 << 20];
                    for _ in 0..a.endless / piece.len() {
                        if stream.write_all(&piece).is_err() {
                            return;
                        }
                        counter.fetch_add(piece.len(), Ordering::SeqCst);
                    }
                    if a.endless > 0 {
                        return;
                    }
                }
            });
        }
    });
    (host, sent)
}

/// An empty image index, and its digest.
fn empty_index() -> (Vec<u8>, String) {
    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec();
    let digest = format!("sha256:{}", sha256_hex(&index));
    (index, digest)
}

/// A registry that sends a manifest without end is cut off at 4 MiB (containers/image's
/// bound), not read into memory: an image's manifest, and a list of referrers.
#[test]
fn an_endless_manifest_is_cut_off() {
    let size = 256 << 20;
    let (index, subject) = empty_index();
    for (command, endless, image) in [("inspect", "/manifests/", "x:t".to_owned()), ("referrers", "/referrers/", format!("x@{subject}"))] {
        let index = index.clone();
        let (host, sent) = scripted_registry(move |request| match request {
            r if r.starts_with("/v2/ ") => Answer::ok(b""),
            r if r.contains(endless) => Answer { endless: size, ..Answer::ok(b"") },
            _ => Answer::ok(&index),
        });
        let stderr = fails(&mut strata(&[command, &format!("docker://{host}/{image}"), "--tls-verify=false"]));
        assert!(stderr.contains(endless) && stderr.contains("sends more than 4 MiB, the most a manifest may have"), "{command}: {stderr}");
        let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(sent < size / 4, "{command}: the registry sent {sent} bytes before strata stopped reading");
    }
}

/// Neither a token service nor an error can fill the memory: a token is read to 1 MiB, an
/// error's body to 64 KiB (for its message), and no further.
#[test]
fn an_endless_token_or_error_is_cut_off() {
    let size = 256 << 20;
    let cases = [("/token", "200 OK", "sends more than 1 MiB, the most a token may have"), ("/manifests/", "404 Not Found", "answered 404 Not Found")];
    for (endless, status, expected) in cases {
        let port = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
        let realm = port.clone();
        let (host, sent) = scripted_registry(move |request| match request {
            r if r.contains(endless) => Answer { status, endless: size, ..Answer::ok(b"") },
            r if r.starts_with("/token") => Answer::ok(br#"{"token":"t"}"#),
            r if r.starts_with("/v2/ ") => Answer {
                status: "401 Unauthorized",
                headers: format!("WWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"test\"\r\n", realm.get().unwrap()),
                ..Answer::ok(b"")
            },
            _ => Answer::ok(b""),
        });
        port.set(host.clone()).unwrap();
        let stderr = fails(&mut strata(&["inspect", &format!("docker://{host}/x:t"), "--tls-verify=false"]));
        assert!(stderr.contains(endless) && stderr.contains(expected), "{endless}: {stderr}");
        let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(sent < size / 4, "{endless}: the registry sent {sent} bytes before strata stopped reading");
    }
}

/// A registry of bearer tokens (the distribution auth spec), whose first token has expired
/// by the time the manifest is read: strata asks for another and reads it with that.
#[test]
fn an_expired_token_is_renewed_for_a_manifest() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (index, subject) = empty_index();
    let issued = std::sync::Arc::new(AtomicUsize::new(0));
    let port = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let (tokens, realm) = (issued.clone(), port.clone());
    let (host, _) = scripted_registry(move |request| {
        let bearer = request.lines().find_map(|l| l.strip_prefix("authorization: Bearer ").or_else(|| l.strip_prefix("Authorization: Bearer "))).map(str::trim);
        let unauthorized = || Answer {
            status: "401 Unauthorized",
            headers: format!("WWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"test\"\r\n", realm.get().unwrap()),
            body: vec![],
            endless: 0,
        };
        match request {
            r if r.starts_with("/token") => {
                let n = tokens.fetch_add(1, Ordering::SeqCst) + 1;
                Answer { headers: "Content-Type: application/json\r\n".into(), ..Answer::ok(format!("{{\"token\":\"t{n}\"}}").as_bytes()) }
            }
            _ if bearer.is_none() => unauthorized(),
            // The first token expires before the manifest is read.
            _ if bearer == Some("t1") && request.contains("/manifests/") => unauthorized(),
            _ => Answer::ok(&index),
        }
    });
    port.set(host.clone()).unwrap();
    run_ok(strata(&["referrers", &format!("docker://{host}/x@{subject}"), "--tls-verify=false"]));
    assert!(issued.load(Ordering::SeqCst) >= 2, "a second token was asked for");
}

/// A registry of bearer tokens, as Docker Hub's, GHCR's and Quay's are: the distribution
/// registry checks a token with each request, signed by a token service. strata pushes and
/// reads with the tokens it asks for, and a copy to another repository mounts the layers
/// with a token for both repositories; skopeo, with tokens of its own, reads the same
/// image. No credentials, or wrong ones, are refused, naming the user and not the password.
#[test]
fn a_registry_of_tokens_is_pushed_to_read_and_mounted_from() {
    let registry = Registry::with_tokens();
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}:v1", registry.reference("strata-test/app"));
    run_ok(strata_reg(dir.path(), &["build", hello_spec(dir.path(), "Hello, world!").to_str().unwrap(), "-o", &target]));
    assert_eq!(registry.uploads(), 3, "two layers and the config");
    let digest = |r: &str| stdout_of(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", "--tls-verify=false", "--creds", CREDS, r]));
    let pushed = digest(&target);
    assert!(pushed.starts_with("sha256:"), "{pushed}");

    let copied = format!("{}:v1", registry.reference("strata-test/copied"));
    run_ok(strata_reg(&dir.path().join("empty-cache"), &["copy", &target, &copied]));
    assert_eq!(registry.uploads(), 4, "the layers mounted from strata-test/app, only the config uploaded");
    assert_eq!(digest(&copied), pushed);
    let inspected = stdout_of(strata_reg(dir.path(), &["inspect", &copied]));
    assert!(inspected.contains(pushed.trim()), "{inspected}");

    let anonymous = fails(strata(&["inspect", &target, "--tls-verify=false"]).env("STRATA_CACHE_DIR", dir.path()));
    assert!(anonymous.contains(&format!("authentication to 127.0.0.1:{} failed", registry.port)), "{anonymous}");
    let wrong = fails(strata(&["inspect", &target, "--tls-verify=false", "--creds", "strata-user:Wr0ngPassw0rd"]).env("STRATA_CACHE_DIR", dir.path()));
    assert!(wrong.contains("failed for user \"strata-user\"") && !wrong.contains("Wr0ngPassw0rd"), "{wrong}");
}

/// A registry that speaks HTTPS only, with a certificate nobody signed: refused while TLS
/// is verified, at once and saying why; with `--tls-verify=false`, pushed to and read over
/// HTTPS (it refuses plain HTTP), as skopeo does; skopeo reads what strata pushed.
#[test]
fn a_self_signed_registry_is_used_with_tls_verify_false() {
    let registry = Registry::self_signed();
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}:v1", registry.reference("strata-test/app"));
    let spec = hello_spec(dir.path(), "Hello, world!");
    let refused = fails(strata(&["build", spec.to_str().unwrap(), "-o", &target]).env("STRATA_CACHE_DIR", dir.path()));
    assert!(refused.contains(&format!("127.0.0.1:{}'s certificate is not trusted", registry.port)) && refused.contains("--tls-verify=false"), "{refused}");
    assert!(!refused.contains("trying again"), "not retried: {refused}");

    run_ok(strata_reg(dir.path(), &["build", spec.to_str().unwrap(), "-o", &target]));
    assert_eq!(registry.uploads(), 3, "two layers and the config");
    let inspect = stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", &target]));
    let inspected = stdout_of(strata_reg(dir.path(), &["inspect", &target]));
    assert!(inspected.contains(inspect.trim()), "{inspected}");
}

/// A registry whose certificate an authority of its own signed, as a company's is, and
/// which asks clients for a certificate: trusted, TLS verified, through what
/// containers-certs.d(5) keeps (`--cert-dir`, else the registry's directory in
/// ~/.config/containers/certs.d), the client certificate shown from there; refused
/// without it. skopeo, given the same directory, reads what strata pushed.
#[test]
fn private_authorities_and_client_certificates_come_from_certs_d() {
    let (registry, certs) = Registry::with_authority(true);
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}:v1", registry.reference("strata-test/app"));
    let spec = hello_spec(dir.path(), "Hello, world!");
    let build = |extra: &[&str], home: &Path| {
        let mut cmd = strata(&["build", spec.to_str().unwrap(), "-o", &target]);
        cmd.args(extra).env("STRATA_CACHE_DIR", dir.path().join("cache")).env("HOME", home);
        cmd
    };
    let untrusted = fails(&mut build(&[], dir.path()));
    assert!(untrusted.contains(&format!("127.0.0.1:{}'s certificate is not trusted", registry.port)), "{untrusted}");
    // The authority alone: the registry is trusted, but refuses a client without a certificate.
    let authority_only = dir.path().join("authority-only");
    std::fs::create_dir(&authority_only).unwrap();
    std::fs::copy(certs.join("ca.crt"), authority_only.join("ca.crt")).unwrap();
    let no_client = fails(&mut build(&["--cert-dir", authority_only.to_str().unwrap()], dir.path()));
    assert!(no_client.contains("refused the TLS handshake") && no_client.contains("client certificate"), "{no_client}");
    assert!(!no_client.contains("not trusted") && !no_client.contains("trying again"), "{no_client}");

    run_ok(build(&["--cert-dir", certs.to_str().unwrap()], dir.path()));
    let digest = stdout_of(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", "--cert-dir", certs.to_str().unwrap(), &target]));
    assert!(digest.starts_with("sha256:"), "{digest}");

    let home = dir.path().join("home");
    let in_home = home.join(format!(".config/containers/certs.d/127.0.0.1:{}", registry.port));
    std::fs::create_dir_all(&in_home).unwrap();
    for name in ["ca.crt", "client.cert", "client.key"] {
        std::fs::copy(certs.join(name), in_home.join(name)).unwrap();
    }
    let inspected = stdout_of(strata(&["inspect", &target]).env("HOME", &home));
    assert!(inspected.contains(digest.trim()), "{inspected}");
}

/// An identity token stored by a login (`identitytoken`, as `az acr login` stores it), with
/// no password: exchanged at the token service for tokens (an OAuth2 refresh-token grant),
/// for a push and a read; skopeo, given the same file, reads the image the same way. A token
/// the service does not take is refused.
#[test]
fn stored_identity_tokens_are_exchanged_for_tokens() {
    let registry = Registry::with_tokens();
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    // As `docker login` writes it for Azure's registries: the user of identity tokens, no password.
    let login = |token: &str| {
        let user = "MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwOg=="; // 00000000-0000-0000-0000-000000000000:
        let entry = serde_json::json!({ "auths": { format!("127.0.0.1:{}", registry.port): { "auth": user, "identitytoken": token } } });
        std::fs::write(docker.join("config.json"), entry.to_string()).unwrap();
    };
    let logged_in = |args: &[&str]| {
        let mut cmd = strata(args);
        cmd.args(["--tls-verify=false"]).env("STRATA_CACHE_DIR", dir.path().join("cache")).env("HOME", dir.path()).env("DOCKER_CONFIG", &docker);
        cmd.env_remove("REGISTRY_AUTH_FILE").env_remove("XDG_RUNTIME_DIR").env_remove("XDG_CONFIG_HOME");
        cmd
    };
    let target = format!("{}:v1", registry.reference("strata-test/app"));
    login(IDENTITY_TOKEN);
    run_ok(logged_in(&["build", hello_spec(dir.path(), "Hello, world!").to_str().unwrap(), "-o", &target]));
    assert_eq!(registry.uploads(), 3, "two layers and the config");
    let auth_file = docker.join("config.json");
    let digest =
        stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", "--authfile"]).arg(&auth_file).arg(&target));
    let inspected = stdout_of(&mut logged_in(&["inspect", &target]));
    assert!(digest.starts_with("sha256:") && inspected.contains(digest.trim()), "{digest}: {inspected}");

    login("a-token-nobody-gave");
    let refused = fails(&mut logged_in(&["inspect", &target]));
    assert!(refused.contains(&format!("authentication to 127.0.0.1:{} failed", registry.port)) && !refused.contains("a-token-nobody-gave"), "{refused}");
}

/// `strata login` checks the credentials with the registry (Basic, or its token service)
/// before storing them, as podman does, in the auth file podman and skopeo read: a wrong
/// password stores nothing; what it stores serves a later push without `--creds`, and
/// skopeo; every other entry of the file is kept. `strata logout` removes the entry only.
#[test]
fn login_stores_credentials_where_podman_reads_them_and_logout_removes_them() {
    use std::os::unix::fs::PermissionsExt;
    for registry in [Registry::start(), Registry::with_tokens()] {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("containers/auth.json");
        std::fs::create_dir(dir.path().join("containers")).unwrap();
        let other = r#"{"auths":{"other.example":{"auth":"b3RoZXI6cGFzcw=="}},"credHelpers":{"helped.example":"secretservice"}}"#;
        std::fs::write(&auth, other).unwrap();
        let host = format!("127.0.0.1:{}", registry.port);
        let logged_in = |args: &[&str], stdin: &str| {
            let mut cmd = strata(args);
            cmd.args(["--tls-verify=false"]).env("REGISTRY_AUTH_FILE", &auth).env("STRATA_CACHE_DIR", dir.path().join("cache"));
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        };
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

        let wrong = logged_in(&["login", &host, "-u", "strata-user", "--password-stdin"], "Wr0ngPassw0rd\n");
        assert!(!wrong.status.success() && text(&wrong.stderr).contains(&format!("authentication to {host} failed")), "{}", text(&wrong.stderr));
        assert_eq!(std::fs::read_to_string(&auth).unwrap(), other, "nothing stored");

        let right = logged_in(&["login", &format!("https://{host}/"), "-u", "strata-user", "--password-stdin"], "s3cret-pass\n");
        assert!(right.status.success() && text(&right.stdout).contains("Login Succeeded"), "{}", text(&right.stderr));
        let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&auth).unwrap()).unwrap();
        assert_eq!(stored["auths"][&host]["auth"], "c3RyYXRhLXVzZXI6czNjcmV0LXBhc3M=", "base64 of {CREDS}: {stored}");
        assert_eq!(stored["auths"]["other.example"]["auth"], "b3RoZXI6cGFzcw==");
        assert_eq!(stored["credHelpers"]["helped.example"], "secretservice");
        assert_eq!(std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777, 0o600);

        let target = format!("{}:v1", registry.reference("strata-test/app"));
        let pushed = logged_in(&["build", hello_spec(dir.path(), "Hello, world!").to_str().unwrap(), "-o", &target], "");
        assert!(pushed.status.success(), "{}", text(&pushed.stderr));
        let digest = stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", "--authfile"]).arg(&auth).arg(&target));
        assert!(digest.starts_with("sha256:"), "{digest}");

        let out = logged_in(&["logout", &host], "");
        assert!(out.status.success() && text(&out.stdout).contains(&format!("Removed login credentials for {host}")), "{}", text(&out.stderr));
        let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&auth).unwrap()).unwrap();
        assert!(stored["auths"].get(&host).is_none() && stored["auths"]["other.example"]["auth"] == "b3RoZXI6cGFzcw==", "{stored}");
        let again = logged_in(&["logout", &host], "");
        assert!(!again.status.success() && text(&again.stderr).contains(&format!("not logged in to {host}")), "{}", text(&again.stderr));
    }
}

/// Credentials go to the registry only: a blob it sends elsewhere (a redirect to storage of
/// another origin, as registries on S3 or a CDN do) is fetched without them.
#[test]
fn a_redirect_elsewhere_gets_no_credentials() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let config = br#"{"architecture":"amd64","config":{},"os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#.to_vec();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [],
    })
    .to_string();
    let (credentialed, fetched) = (std::sync::Arc::new(AtomicUsize::new(0)), std::sync::Arc::new(AtomicUsize::new(0)));
    let (seen, served) = (credentialed.clone(), fetched.clone());
    let (storage, _) = scripted_registry(move |request| {
        served.fetch_add(1, Ordering::SeqCst);
        if request.to_ascii_lowercase().contains("\nauthorization:") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        Answer { headers: String::new(), ..Answer::ok(&config) }
    });
    let (host, _) = scripted_registry(move |request| {
        let authorized = request.to_ascii_lowercase().contains("\nauthorization: basic");
        match request {
            _ if !authorized => Answer { status: "401 Unauthorized", headers: "WWW-Authenticate: Basic realm=\"test\"\r\n".into(), ..Answer::ok(b"") },
            r if r.contains("/blobs/") => {
                Answer { status: "307 Temporary Redirect", headers: format!("Location: http://{storage}/config?signed=s3cret\r\n"), ..Answer::ok(b"") }
            }
            r if r.contains("/manifests/") => {
                Answer { headers: "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(), ..Answer::ok(manifest.as_bytes()) }
            }
            _ => Answer::ok(b""),
        }
    });
    let out = stdout_of(strata(&["inspect", &format!("docker://{host}/x:t"), "--tls-verify=false", "--creds", CREDS]));
    assert!(out.contains("amd64"), "{out}");
    assert!(fetched.load(Ordering::SeqCst) >= 1, "the config was fetched from the storage");
    assert_eq!(credentialed.load(Ordering::SeqCst), 0, "the storage got no credentials");
}

/// registries.conf, as podman and skopeo read it: a registry it marks `insecure` is used in
/// plain HTTP without `--tls-verify=false` (which, given `true`, overrides it); a repository
/// it marks `blocked` is not read from (pushes are not blocked), and the error names the
/// file. skopeo, given the same file, reads the insecure registry the same way.
#[test]
fn registries_conf_marks_registries_insecure_or_blocked() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("registries.conf");
    let host = format!("127.0.0.1:{}", registry.port);
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n\
             [[registry]]\nlocation = \"{host}\"\ninsecure = true\n\
             [[registry]]\nprefix = \"{host}/strata-test/private\"\nlocation = \"{host}/strata-test/private\"\ninsecure = true\nblocked = true\n"
        ),
    )
    .unwrap();
    let configured = |args: &[&str]| {
        let mut cmd = strata(args);
        cmd.args(["--creds", CREDS]).env("CONTAINERS_REGISTRIES_CONF", &conf).env("HOME", dir.path()).env("STRATA_CACHE_DIR", dir.path().join("cache"));
        cmd
    };
    let spec = hello_spec(dir.path(), "Hello, world!");
    let target = format!("{}:v1", registry.reference("strata-test/app"));
    run_ok(configured(&["build", spec.to_str().unwrap(), "-o", &target]));
    let digest = stdout_of(Command::new("skopeo").arg("--registries-conf").arg(&conf).args(["inspect", "--format", "{{.Digest}}", "--creds", CREDS, &target]));
    let inspected = stdout_of(&mut configured(&["inspect", &target]));
    assert!(digest.starts_with("sha256:") && inspected.contains(digest.trim()), "{digest}: {inspected}");

    let verified = fails(&mut configured(&["inspect", &target, "--tls-verify=true"]));
    assert!(verified.contains("plain HTTP"), "--tls-verify=true overrides the file: {verified}");
    let without =
        fails(strata(&["inspect", &target, "--creds", CREDS]).env("HOME", dir.path()).env("CONTAINERS_REGISTRIES_CONF", dir.path().join("none.conf")));
    assert!(without.contains("plain HTTP"), "TLS is verified where no file says otherwise: {without}");

    let private = format!("{}:v1", registry.reference("strata-test/private"));
    run_ok(configured(&["copy", &target, &private]));
    let blocked = fails(&mut configured(&["inspect", &private]));
    assert!(blocked.contains(&format!("{host}/strata-test/private is blocked")) && blocked.contains(conf.to_str().unwrap()), "{blocked}");
}

/// A release pushed from a machine whose layer cache is empty (a fresh CI runner), given the
/// previous release (`--previous`): a layer whose tar the previous release holds, decoded and
/// compared byte for byte, is taken as it is there (found in the repository, mounted from
/// another, or copied from an OCI layout, even one another tool compressed), and only what
/// changed is compressed and uploaded; the manifest is the one a cold push makes. A previous
/// release whose config lies about a layer (its diff ID another layer's) gives nothing.
#[test]
fn a_release_takes_unchanged_layers_from_the_previous_one() {
    let registry = Registry::open();
    let dir = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", registry.port);
    let (first, second) = (hello_spec(dir.path(), "Hello, first release!"), hello_spec(dir.path(), "Hello, the second release!"));
    let fresh = |name: &str| dir.path().join(format!("cache-{name}"));
    run_ok(strata_reg(&fresh("first"), &["build", first.to_str().unwrap(), "-o", &format!("docker://{host}/app:v1")]));
    let manifest = |reference: &str| -> serde_json::Value {
        serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", reference]))).unwrap()
    };
    let layer_digests =
        |m: &serde_json::Value| -> Vec<String> { m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect() };
    run_ok(strata_reg(&fresh("cold"), &["build", second.to_str().unwrap(), "-o", &format!("docker://{host}/cold:v2")]));
    let cold = manifest(&format!("docker://{host}/cold:v2"));
    let cold_digest = stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", &format!("docker://{host}/cold:v2")]));

    // Into the same repository: the libc layer is there; the changed layer and the config go up.
    let uploads = registry.uploads();
    let out = run_ok(strata_reg(
        &fresh("same"),
        &["build", second.to_str().unwrap(), "-o", &format!("docker://{host}/app:v2"), "--previous", &format!("docker://{host}/app:v1"), "-v"],
    ));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("1 layers uploaded, 0 mounted, 1 already there"), "{log}");
    assert_eq!(registry.uploads() - uploads, 2, "the changed layer and the config");
    let digest = stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", &format!("docker://{host}/app:v2")]));
    assert_eq!(digest, cold_digest, "the manifest a cold push makes");

    // Uncompressed: a blob named by its tar's digest is taken by its name, never downloaded.
    run_ok(strata_reg(&fresh("tar-first"), &["build", first.to_str().unwrap(), "-o", &format!("docker://{host}/tars:v1"), "--compress", "none"]));
    let libc_tar = layer_digests(&manifest(&format!("docker://{host}/tars:v1")))[0].clone();
    let out = run_ok(strata_reg(
        &fresh("tar-second"),
        &[
            "build",
            second.to_str().unwrap(),
            "-o",
            &format!("docker://{host}/tars:v2"),
            "--compress",
            "none",
            "--previous",
            &format!("docker://{host}/tars:v1"),
            "-v",
        ],
    ));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 layers uploaded, 0 mounted, 1 already there"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(registry.requests("GET", &format!("/blobs/{libc_tar}")), 0, "the tar was not downloaded");

    // Into another repository of the registry: mounted from the previous release's.
    let out = run_ok(strata_reg(
        &fresh("other"),
        &["build", second.to_str().unwrap(), "-o", &format!("docker://{host}/other:v2"), "--previous", &format!("docker://{host}/app:v1"), "-v"],
    ));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 layers uploaded, 1 mounted, 0 already there"), "{}", String::from_utf8_lossy(&out.stderr));

    // The layer cache warm (a build into a layout made both layers) and no push of them
    // remembered: the libc blob, known by its digest, is mounted from the previous release
    // too, neither read nor compressed again; the changed layer is compressed (the cache
    // knows its digests, not its bytes) and uploaded.
    run_ok(strata_reg(&fresh("warm"), &["build", second.to_str().unwrap(), "-o", &format!("oci:{}:v2", dir.path().join("warm").display())]));
    let out = run_ok(strata_reg(
        &fresh("warm"),
        &["build", second.to_str().unwrap(), "-o", &format!("docker://{host}/warm:v2"), "--previous", &format!("docker://{host}/app:v1"), "-v"],
    ));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 layers uploaded, 1 mounted, 0 already there; 1 layers read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(manifest(&format!("docker://{host}/warm:v2")), cold, "the manifest a cold push makes");

    // From an OCI layout whose layers skopeo compressed (other bytes than strata's): the
    // libc layer is that blob, copied from the layout; the image runs.
    let archive = dir.path().join("v1.tar");
    run_ok(strata(&["build", first.to_str().unwrap(), "-o", &format!("docker-archive:{}", archive.display())]));
    let layout = format!("oci:{}:v1", dir.path().join("by-skopeo").display());
    run_ok(Command::new("skopeo").args(["copy", "-q", "--dest-compress"]).arg(format!("docker-archive:{}", archive.display())).arg(&layout));
    let skopeos = layer_digests(&manifest(&layout));
    run_ok(strata_reg(&fresh("layout"), &["build", second.to_str().unwrap(), "-o", &format!("docker://{host}/third:v2"), "--previous", &layout]));
    let third = layer_digests(&manifest(&format!("docker://{host}/third:v2")));
    assert_eq!(third[0], skopeos[0], "the libc layer as skopeo compressed it");
    assert_ne!(third[0], layer_digests(&cold)[0]);
    assert_eq!(third[1], layer_digests(&cold)[1], "the changed layer compressed by strata");
    let name = format!("{host}/third:v2");
    let _claim = ImageNames::claim(&[&name]);
    run_ok(strata_reg(&fresh("pull"), &["copy", &format!("docker://{name}"), &format!("podman:{name}")]));
    assert_eq!(run_in("podman", &name, &[]), "Hello, the second release!\n");
    remove_images("podman", &[&name]);

    // A previous release whose manifest lists the layers in the other order than its
    // config's diff IDs: what it says it holds is not what it holds, and nothing is taken.
    let poisoned = poisoned_layout(dir.path(), &first);
    run_ok(strata_reg(&fresh("poisoned"), &["build", second.to_str().unwrap(), "-o", &format!("docker://{host}/fourth:v2"), "--previous", &poisoned]));
    let fourth = layer_digests(&manifest(&format!("docker://{host}/fourth:v2")));
    assert_eq!(fourth, layer_digests(&cold), "made again, not taken");
}

/// The previous release in another registry (no mount can bring its blobs): the unchanged
/// layer's blob is downloaded once, to be checked, and uploaded from the copy kept then.
#[test]
fn a_previous_release_in_another_registry_is_read_once() {
    let (old, new) = (Registry::start(), Registry::start());
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (hello_spec(dir.path(), "Hello, first release!"), hello_spec(dir.path(), "Hello, the second release!"));
    let v1 = format!("{}:v1", old.reference("strata-test/app"));
    run_ok(strata_reg(&dir.path().join("cache-first"), &["build", first.to_str().unwrap(), "-o", &v1]));
    let raw = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", CREDS, &v1]));
    let libc = serde_json::from_str::<serde_json::Value>(&raw).unwrap()["layers"][0]["digest"].as_str().unwrap().to_owned();
    let v2 = format!("{}:v2", new.reference("strata-test/app"));
    let out = run_ok(strata_reg(&dir.path().join("cache-second"), &["build", second.to_str().unwrap(), "-o", &v2, "--previous", &v1, "-v"]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("2 layers uploaded, 0 mounted, 0 already there"), "{log}");
    assert_eq!(old.requests("GET", &format!("/blobs/{libc}")), 1, "downloaded once: {log}");
    let raw = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", CREDS, &v2]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw).unwrap()["layers"][0]["digest"], libc.as_str());

    // The layer cache warm (a build into a layout made both layers), into another repository
    // with no push remembered: the libc blob, known by its digest, is streamed from the old
    // registry (one more GET, checked on the way), not compressed again.
    let warm = dir.path().join("cache-warm");
    run_ok(strata_reg(&warm, &["build", second.to_str().unwrap(), "-o", &format!("oci:{}:v2", dir.path().join("layout").display())]));
    let other = format!("{}:v2", new.reference("strata-test/other"));
    let out = run_ok(strata_reg(&warm, &["build", second.to_str().unwrap(), "-o", &other, "--previous", &v1, "-v"]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("2 layers uploaded, 0 mounted, 0 already there; 1 layers read"), "{log}");
    assert_eq!(old.requests("GET", &format!("/blobs/{libc}")), 2, "{log}");
    let other_raw = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", CREDS, &other]));
    assert_eq!(other_raw, raw, "the same manifest");
    let image = v2.trim_start_matches("docker://").to_owned();
    let _claim = ImageNames::claim(&[&image]);
    run_ok(Command::new("podman").args(["pull", "--quiet", "--tls-verify=false", "--creds", CREDS, &image]));
    assert_eq!(run_in("podman", &image, &[]), "Hello, the second release!\n");
    remove_images("podman", &[&image]);
}

/// registries.conf's mirrors and locations, as containers/image reads them: a reference under
/// a `prefix` is read from each mirror that serves it (by digest, by tag), in the file's
/// order, then from the registry's `location`; a mirror that is down or lacks the image is
/// passed over. skopeo, given the same file, reads the same images. The Nix library's blob
/// downloads (`pullImageFromManifest`) take the same way, and an image no place has names
/// every place's failure.
#[test]
fn registries_conf_mirrors_and_locations_serve_pulls() {
    let (mirror, primary) = (Registry::open(), Registry::open());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (mirror_host, primary_host, dead_host) =
        (format!("127.0.0.1:{}", mirror.port), format!("127.0.0.1:{}", primary.port), format!("127.0.0.1:{}", free_port()));
    let pushed = |greeting: &str, target: &str| -> String {
        let spec = hello_spec(dir.path(), greeting);
        let out = run_ok(strata_reg(&cache, &["build", spec.to_str().unwrap(), "-o", target, "--json"])).stdout;
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()["manifest_digest"].as_str().unwrap().to_owned()
    };
    let at_mirror = pushed("Hello from the mirror!", &format!("docker://{mirror_host}/mirrored/app:v1"));
    let at_registry = pushed("Hello from the registry!", &format!("docker://{primary_host}/team/app:v1"));
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"registry.invalid/team\"\nlocation = \"{primary_host}/team\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{dead_host}/nothing\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{mirror_host}/mirrored\"\ninsecure = true\npull-from-mirror = \"digest-only\"\n"
        ),
    )
    .unwrap();
    let configured = |args: &[&str]| {
        let mut cmd = strata(args);
        cmd.env("CONTAINERS_REGISTRIES_CONF", &conf).env("HOME", dir.path()).env("STRATA_CACHE_DIR", &cache);
        cmd
    };
    let skopeo_digest = |reference: &str| {
        stdout_of(Command::new("skopeo").arg("--registries-conf").arg(&conf).args(["inspect", "--no-tags", "--format", "{{.Digest}}", reference]))
            .trim()
            .to_owned()
    };

    // By tag: the dead mirror is passed over, the digest-only one not asked; the registry's
    // location answers.
    let by_tag = "docker://registry.invalid/team/app:v1";
    assert!(stdout_of(&mut configured(&["inspect", by_tag])).contains(&at_registry), "a tag is read at the location");
    assert_eq!(skopeo_digest(by_tag), at_registry);
    assert_eq!(mirror.requests("GET", "/v2/mirrored/app/manifests/"), 0, "the digest-only mirror was asked for a tag");

    // By digest: the mirror has it (the registry does not), and serves the whole image.
    let by_digest = format!("docker://registry.invalid/team/app@{at_mirror}");
    let name = "registry.invalid/team/app:mirrored";
    let _claim = ImageNames::claim(&[name]);
    let copied = run_ok(configured(&["copy", &by_digest, &format!("podman:{name}"), "-v"]));
    let log = String::from_utf8_lossy(&copied.stderr);
    assert!(log.contains(&format!("from its mirror docker://{mirror_host}/mirrored/app@{at_mirror}")), "{log}");
    assert!(mirror.requests("GET", "/v2/mirrored/app/manifests/sha256:") >= 1);
    assert_eq!(skopeo_digest(&by_digest), at_mirror);
    assert_eq!(run_in("podman", name, &[]), "Hello from the mirror!\n");
    remove_images("podman", &[name]);

    // A layer blob by digest, as the Nix library's fixed-output derivations fetch one.
    let raw = |host: &str, reference: &str| -> serde_json::Value {
        let out = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{host}/{reference}")]));
        serde_json::from_str(&out).unwrap()
    };
    let layers = |manifest: &serde_json::Value| -> Vec<(String, u64)> {
        manifest["layers"].as_array().unwrap().iter().map(|l| (l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap())).collect()
    };
    let registry_layers = layers(&raw(&primary_host, "team/app:v1"));
    let (blob, size) = layers(&raw(&mirror_host, &format!("mirrored/app@{at_mirror}"))).into_iter().find(|l| !registry_layers.contains(l)).unwrap();
    let out = dir.path().join("blob");
    run_ok(
        configured(&["nix-builder"])
            .env("out", &out)
            .env("strataMode", "blob")
            .env("strataSource", &by_digest)
            .env("strataDigest", &blob)
            .env("strataSize", size.to_string())
            .env("strataTlsVerify", "0"),
    );
    assert_eq!(format!("sha256:{}", sha256_hex(&std::fs::read(&out).unwrap())), blob);
    assert!(mirror.requests("GET", &format!("/v2/mirrored/app/blobs/{blob}")) >= 1);

    // Nowhere: the registry's error, with what each mirror asked answered.
    let missing = fails(&mut configured(&["inspect", "docker://registry.invalid/team/missing:v1"]));
    assert!(missing.contains("mirrors in registries.conf failed") && missing.contains(&dead_host) && missing.contains(&primary_host), "{missing}");
}

/// Without `XDG_RUNTIME_DIR` (root under sudo, cron or CI), podman's tools keep logins in
/// `/run/containers/$UID/auth.json`: what `skopeo login` stores there serves strata's push,
/// and `strata logout` removes it from there, so that skopeo no longer finds it.
#[test]
fn logins_without_a_runtime_dir_are_where_podman_keeps_them() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", registry.port);
    let bare = |cmd: &mut Command| {
        cmd.env_remove("XDG_RUNTIME_DIR").env_remove("REGISTRY_AUTH_FILE").env("HOME", dir.path()).env("STRATA_CACHE_DIR", dir.path().join("cache"));
    };
    /// Logs skopeo out of the registry however the test ends.
    struct LoggedIn(Vec<String>);
    impl Drop for LoggedIn {
        fn drop(&mut self) {
            let _ = Command::new("skopeo").args(&self.0).env_remove("XDG_RUNTIME_DIR").env_remove("REGISTRY_AUTH_FILE").output();
        }
    }
    let (user, password) = CREDS.split_once(':').unwrap();
    let mut login = Command::new("skopeo");
    login.args(["login", "--tls-verify=false", "-u", user, "-p", password, &host]);
    bare(&mut login);
    run_ok(login);
    let _logged_in = LoggedIn(vec!["logout".into(), host.clone()]);

    let target = format!("{}:v1", registry.reference("strata-test/app"));
    let mut push = strata(&["build", hello_spec(dir.path(), "Hello, world!").to_str().unwrap(), "-o", &target, "--tls-verify=false"]);
    bare(&mut push);
    run_ok(push);
    let mut logout = strata(&["logout", &host]);
    bare(&mut logout);
    assert!(stdout_of(&mut logout).contains(&format!("Removed login credentials for {host}")));
    let mut inspect = Command::new("skopeo");
    inspect.args(["inspect", "--tls-verify=false", &target]);
    bare(&mut inspect);
    let out = inspect.output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("authentication required"), "{}", String::from_utf8_lossy(&out.stderr));
}
