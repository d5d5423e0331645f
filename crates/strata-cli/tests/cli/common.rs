//! Helpers shared by the end-to-end tests: building fixtures with Nix, running strata and
//! the real engines, reading docker-archives. Every tool the tests use is required: a
//! missing one fails the test (run `scripts/setup`), it never skips it.

use std::borrow::BorrowMut;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// Builds attribute `attr` of the test fixtures and returns its store path.
pub fn fixture(attr: &str) -> String {
    fixture_with(attr, &[])
}

pub fn fixture_with(attr: &str, args: &[(&str, &str)]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cmd = Command::new("nix-build");
    cmd.arg("--no-out-link").arg(&file).args(["-A", attr]);
    for (name, value) in args {
        cmd.args(["--argstr", name, value]);
    }
    let out = run_ok(&mut cmd);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs `cmd`; panics with its output unless it succeeds.
pub fn run_ok(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_of(cmd: impl BorrowMut<Command>) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

/// `strata ARGS` as a command.
pub fn strata(args: &[&str]) -> Command {
    let mut cmd = Command::new(STRATA);
    cmd.args(args);
    cmd
}

/// The SHA-256 of `bytes` in hex, as `sha256sum` computes it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, bytes).unwrap();
    stdout_of(Command::new("sha256sum").arg(&file)).split_whitespace().next().unwrap().to_owned()
}

/// Runs strata expecting failure; returns stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1, got {}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A string unique to this run, for store paths that must be new.
pub fn nonce() -> String {
    format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

/// Writes `text` as `name` in `dir`, returns its path.
pub fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Builds `spec` into a docker-archive file and returns its path.
pub fn build_archive(dir: &Path, spec: &Path) -> PathBuf {
    let out = dir.join("image.tar");
    run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("docker-archive:{}", out.display())]));
    out
}

/// A docker-archive read back: its manifest and each layer's entries (path -> header info).
pub struct Archive {
    pub manifest: serde_json::Value,
    pub layers: Vec<BTreeMap<String, EntryInfo>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// The header's user and group names (empty when none).
    pub names: (String, String),
    pub mtime: u64,
    pub kind: tar::EntryType,
    pub link: Option<Vec<u8>>,
    pub data: Vec<u8>,
}

pub fn read_archive(path: &Path) -> Archive {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let layers = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| {
            let mut entries = BTreeMap::new();
            let mut layer = tar::Archive::new(&files[name.as_str().unwrap()][..]);
            for e in layer.entries().unwrap() {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let name = |n: Option<&str>| n.unwrap_or_default().to_owned();
                let names = (name(h.username().ok().flatten()), name(h.groupname().ok().flatten()));
                let info = EntryInfo {
                    mode: h.mode().unwrap(),
                    uid: h.uid().unwrap(),
                    gid: h.gid().unwrap(),
                    names,
                    mtime: h.mtime().unwrap(),
                    kind: h.entry_type(),
                    link,
                    data,
                };
                assert!(entries.insert(path.clone(), info).is_none(), "{path} twice in one layer");
            }
            entries
        })
        .collect();
    Archive { manifest, layers }
}

/// Loads a docker-archive into an engine (`podman` or `docker`) and runs `image` with `args`;
/// returns standard output.
pub fn load_and_run(engine: &str, archive: &Path, image: &str, args: &[&str]) -> String {
    let _claim = ImageNames::claim(&[image]);
    run_ok(Command::new(engine).arg("load").stdin(std::fs::File::open(archive).unwrap()));
    let out = run_in(engine, image, args);
    remove_images(engine, &[image]);
    out
}

/// Image names a test holds in the engines while it loads, runs and removes an image of that
/// name. Tests run at once and some load one fixed name (an image a Nix attribute names): one
/// test removing it between another's load and run would take that test's image away.
/// Dropping the claim (also when the test panics) frees the names for the next test.
pub struct ImageNames(Vec<String>);

/// The names claimed, each with the test (thread) holding it.
static CLAIMED: std::sync::Mutex<Vec<(String, std::thread::ThreadId)>> = std::sync::Mutex::new(Vec::new());
static RELEASED: std::sync::Condvar = std::sync::Condvar::new();

impl ImageNames {
    /// Waits until no other test holds any of `names`, then holds them all: all at once, so
    /// two tests claiming overlapping names never wait for each other forever. A test that
    /// claims a name it holds already would wait for itself: it fails instead.
    pub fn claim(names: &[&str]) -> ImageNames {
        let me = std::thread::current().id();
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        let held = |claimed: &[(String, std::thread::ThreadId)], by_me: bool| {
            claimed.iter().any(|(c, holder)| (*holder == me) == by_me && names.contains(&c.as_str()))
        };
        assert!(!held(&claimed, true), "this test claims an image name of {names:?} twice");
        while held(&claimed, false) {
            claimed = RELEASED.wait(claimed).unwrap_or_else(|e| e.into_inner());
        }
        claimed.extend(names.iter().map(|n| (n.to_string(), me)));
        ImageNames(names.iter().map(|n| n.to_string()).collect())
    }
}

impl Drop for ImageNames {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        claimed.retain(|(c, _)| !self.0.contains(c));
        RELEASED.notify_all();
    }
}

/// Cleans up the images a test made in an engine. Docker's are removed. podman's are only
/// untagged, never removed, while tests run at once: tests share layers (glibc's, for one),
/// and podman can fail to commit an image whose layer another podman is deleting ("committing
/// the finished image: … layer not known", podman issues #18449, #18659 and #24598).
/// `scripts/test` prunes the untagged images once every test is done.
pub fn remove_images(engine: &str, images: &[&str]) {
    for image in images {
        // `podman untag NAME NAME` removes that one name: the image may have others (another
        // test's image with the same ID), which `podman untag NAME` would remove too.
        let args = if engine == "podman" { ["untag", image, image] } else { ["rmi", "-f", image] };
        let _ = Command::new(engine).args(args).output();
    }
}

/// Runs an already loaded image.
pub fn run_in(engine: &str, image: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(engine);
    cmd.args(["run", "--rm"]);
    if engine == "docker" {
        cmd.args(["--network", "none"]);
    }
    cmd.arg(image).args(args);
    stdout_of(&mut cmd)
}

/// A port nothing listens on, for a server of a test's own. Not one the kernel picks (port
/// 0): those come from the range it also takes clients' source ports from, so one of the
/// many connections tests make could take it before the server binds it, or another test be
/// handed the same one. These are below that range (32768–60999 by default). Each test runs
/// in a process of its own (nextest), and a port is free between the check and the server's
/// start: so each port handed out is also locked (a file lock in the temporary directory,
/// held until the process ends), and no other test process takes it meanwhile.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let start = std::process::id() % 8000;
    loop {
        let port = 20000 + ((start + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)) % 12000) as u16;
        let Ok(lock) = std::fs::File::create(std::env::temp_dir().join(format!("strata-test-port-{port}.lock"))) else { continue };
        if lock.try_lock().is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(lock);
            return port;
        }
    }
}

pub const CREDS: &str = "strata-user:s3cret-pass";

/// A registry of our own, stopped when dropped.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Registry {
    /// A registry that asks for [`CREDS`].
    pub fn start() -> Registry {
        Registry::serve(Auth::Htpasswd)
    }

    /// A registry anyone may read and write (as public images are read: Nix builds have no
    /// credentials).
    pub fn open() -> Registry {
        Registry::serve(Auth::None)
    }

    /// A registry of bearer tokens, as Docker Hub's, GHCR's and Quay's are (Docker's token
    /// spec): the registry checks each request's token, signed by a token service that
    /// answers for [`CREDS`] ([`serve_tokens`]).
    pub fn with_tokens() -> Registry {
        Registry::serve(Auth::Tokens)
    }

    /// An open registry that speaks HTTPS only, with a certificate nobody signed (for
    /// 127.0.0.1).
    pub fn self_signed() -> Registry {
        let registry = Registry::serve(Auth::None);
        let (key, cert) = certificate(&registry.dir.path().join("tls"), "127.0.0.1", &["-addext", "subjectAltName=IP:127.0.0.1"]);
        registry.with_tls(&key, &cert, None)
    }

    /// An open registry that speaks HTTPS only, its certificate signed by an authority of its
    /// own, as a company's is; and a directory with what a client needs, as
    /// containers-certs.d(5) lays it out: the authority, `ca.crt`, and a client certificate
    /// it signed, `client.cert` and `client.key`, which the registry asks for if `mutual`.
    pub fn with_authority(mutual: bool) -> (Registry, PathBuf) {
        let registry = Registry::serve(Auth::None);
        let (pki, certs) = (registry.dir.path().join("pki"), registry.dir.path().join("certs"));
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::create_dir_all(&certs).unwrap();
        let (ca_key, ca) = certificate(&pki.join("ca"), "strata-test-authority", &[]);
        let signed = |usage: &str, extra: &[&str]| {
            let mut args = vec!["-CA", ca.to_str().unwrap(), "-CAkey", ca_key.to_str().unwrap(), "-addext", "basicConstraints=critical,CA:FALSE"];
            args.extend(["-addext", usage]);
            args.extend(extra);
            args.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let server = signed("extendedKeyUsage=serverAuth", &["-addext", "subjectAltName=IP:127.0.0.1"]);
        let (key, cert) = certificate(&pki.join("server"), "127.0.0.1", &server.iter().map(String::as_str).collect::<Vec<_>>());
        let client = signed("extendedKeyUsage=clientAuth", &[]);
        let (client_key, client_cert) = certificate(&pki.join("client"), "strata-test-client", &client.iter().map(String::as_str).collect::<Vec<_>>());
        std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
        std::fs::copy(client_key, certs.join("client.key")).unwrap();
        std::fs::copy(client_cert, certs.join("client.cert")).unwrap();
        (registry.with_tls(&key, &cert, mutual.then_some(ca.as_path())), certs)
    }

    /// This registry, restarted to speak HTTPS only with `key` and `cert`, asking clients for
    /// a certificate `client_ca` signed if given.
    fn with_tls(mut self, key: &Path, cert: &Path, client_ca: Option<&Path>) -> Registry {
        self.stop();
        let config = std::fs::read_to_string(self.dir.path().join("config.yml")).unwrap();
        let clientcas = client_ca.map(|ca| format!(", clientcas: [{}]", ca.display())).unwrap_or_default();
        let tls = format!("http: {{ addr: 127.0.0.1:{}, tls: {{ certificate: {}, key: {}{clientcas} }} }}", self.port, cert.display(), key.display());
        std::fs::write(self.dir.path().join("config.yml"), config.replace(&format!("http: {{ addr: 127.0.0.1:{} }}", self.port), &tls)).unwrap();
        self.restart();
        self
    }

    fn serve(auth: Auth) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let auth = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd => {
                let htpasswd = stdout_of(Command::new("htpasswd").args(["-Bbn", "strata-user", "s3cret-pass"]));
                std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
                format!("auth: {{ htpasswd: {{ realm: test, path: {d}/htpasswd }} }}\n")
            }
            Auth::Tokens => {
                let realm = serve_tokens(dir.path());
                format!("auth: {{ token: {{ realm: \"{realm}\", service: {TOKEN_SERVICE}, issuer: {TOKEN_ISSUER}, rootcertbundle: {d}/token.crt }} }}\n")
            }
        };
        let config = format!(
            "version: 0.1\nlog: {{ level: info }}\nstorage: {{ filesystem: {{ rootdirectory: {d}/data }}, delete: {{ enabled: true }} }}\n\
             http: {{ addr: 127.0.0.1:{port} }}\n{auth}"
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = Registry { dir, port, child: None };
        registry.restart();
        registry
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (run scripts/setup)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start: {}", std::fs::read_to_string(self.log()).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn reference(&self, repo: &str) -> String {
        format!("docker://127.0.0.1:{}/{repo}", self.port)
    }

    /// Completed requests so far whose method is `method` and whose path contains `path`.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        log.lines().filter(|l| l.contains("msg=\"response completed\"") && l.contains(&format!("http.request.method={method} ")) && l.contains(path)).count()
    }

    /// Blob uploads so far: the PUT that completes each one.
    pub fn uploads(&self) -> usize {
        self.requests("PUT", "/blobs/uploads/")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a [`Registry`] asks for credentials.
enum Auth {
    None,
    /// Basic authentication, for [`CREDS`].
    Htpasswd,
    Tokens,
}

const TOKEN_SERVICE: &str = "strata-test";
const TOKEN_ISSUER: &str = "strata-test-issuer";

/// A key and a certificate for `name`, made by openssl: `STEM.key`, `STEM.crt`. Signed by
/// itself, unless `extra` names an authority (`-CA`, `-CAkey`).
fn certificate(stem: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (key, cert) = (stem.with_extension("key"), stem.with_extension("crt"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
        .args(extra)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (run scripts/setup)");
    assert!(made.status.success(), "openssl req: {}", String::from_utf8_lossy(&made.stderr));
    (key, cert)
}

/// The identity token (an OAuth2 refresh token) the token service of
/// [`Registry::with_tokens`] takes, as `az acr login` would store it.
pub const IDENTITY_TOKEN: &str = "strata-identity-token";

/// Starts a token service (Docker's token spec) on a loopback port, a thread of this test
/// binary, and returns its realm. It makes a key and a self-signed certificate in `dir`
/// (`token.key`, `token.crt`, with openssl), and answers `GET /token?service=…&scope=…`,
/// and the `POST` of an OAuth2 refresh-token grant, with a JWT signed by that key (RS256,
/// the certificate in its `x5c` header), which the registry checks against `token.crt`:
/// every action asked for, given [`CREDS`] (Basic) or [`IDENTITY_TOKEN`]; none without
/// credentials (an anonymous token); 401 given wrong ones.
fn serve_tokens(dir: &Path) -> String {
    use base64::Engine;
    use std::io::{BufRead, BufReader, Write};
    let (key, cert) = certificate(&dir.join("token"), "strata-test-tokens", &[]);
    let pem = std::fs::read_to_string(&cert).unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(CREDS));
    let listener = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut request, mut line) = (Vec::new(), String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                request.push(std::mem::take(&mut line).trim_end().to_owned());
            }
            let (method, target) = request.first().and_then(|l| l.split_once(' ')).map_or(("", ""), |(m, rest)| (m, rest.split(' ').next().unwrap_or("")));
            let header = |name: &str| {
                request.iter().skip(1).find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned()))
            };
            // GET: the parameters in the query; POST: in the form it sends, of a length given
            // or in chunks (as skopeo sends it).
            let mut body = vec![0; header("content-length").and_then(|n| n.parse().ok()).unwrap_or(0)];
            let _ = reader.read_exact(&mut body);
            while header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
                let mut size = String::new();
                let _ = reader.read_line(&mut size);
                let mut chunk = vec![0; usize::from_str_radix(size.trim(), 16).unwrap_or(0) + 2];
                if reader.read_exact(&mut chunk).is_err() || chunk.len() == 2 {
                    break;
                }
                body.extend_from_slice(&chunk[..chunk.len() - 2]);
            }
            let form = if method == "POST" { String::from_utf8_lossy(&body).into_owned() } else { target.split_once('?').map_or("", |(_, q)| q).to_owned() };
            let params: Vec<(String, String)> = form.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_owned(), form_decode(v))).collect();
            let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let authorization = match param("grant_type").as_deref() {
                Some("refresh_token") => param("refresh_token").map(|t| if t == IDENTITY_TOKEN { basic.clone() } else { t }),
                _ => header("authorization"),
            };
            // A grant may hold several scopes in one parameter, separated by spaces.
            let scopes = params.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>());
            let access: Vec<serde_json::Value> = scopes
                .filter_map(|scope| {
                    let mut parts = scope.splitn(3, ':');
                    let (kind, name, actions) = (parts.next()?.to_owned(), parts.next()?.to_owned(), parts.next()?.to_owned());
                    Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
                })
                .collect();
            let (status, body) = match authorization {
                Some(a) if a != basic => ("401 Unauthorized", r#"{"details":"wrong user name or password"}"#.to_owned()),
                given => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                    let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "x5c": [der] });
                    let claims = serde_json::json!({
                        "iss": TOKEN_ISSUER, "aud": TOKEN_SERVICE, "sub": if given.is_some() { "strata-user" } else { "" },
                        "iat": now, "nbf": now - 10, "exp": now + 300, "jti": format!("{now}-{}", std::process::id()),
                        "access": if given.is_some() { access } else { vec![] },
                    });
                    let signed = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
                    let mut openssl = Command::new("openssl")
                        .args(["dgst", "-sha256", "-sign"])
                        .arg(&key)
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .unwrap();
                    openssl.stdin.take().unwrap().write_all(signed.as_bytes()).unwrap();
                    let signature = openssl.wait_with_output().unwrap().stdout;
                    let token = format!("{signed}.{}", url.encode(signature));
                    ("200 OK", serde_json::json!({ "token": token, "expires_in": 300 }).to_string())
                }
            };
            let answer = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    realm
}

/// `text` of a URL's query or a form, decoded (`+` a space, `%XX` a byte).
fn form_decode(text: &str) -> String {
    let (bytes, mut out, mut i) = (text.as_bytes(), Vec::new(), 0);
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `PROGRAM FIXTURE --arg strataBin STRATA -A attr` for the Nix library's fixtures
/// (tests/fixtures/nixlib.nix), built by the strata under test.
pub fn nixlib_command(program: &str, attr: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nixlib.nix")).args(["--arg", "strataBin", STRATA, "-A", attr]);
    cmd
}

/// `nix-build --no-out-link` of a Nix library fixture (more arguments may be added).
pub fn nixlib_build_command(attr: &str) -> Command {
    let mut cmd = nixlib_command("nix-build", attr);
    cmd.arg("--no-out-link");
    cmd
}

/// The store path a Nix library fixture builds.
pub fn nixlib_build(attr: &str) -> String {
    stdout_of(nixlib_build_command(attr)).trim().to_owned()
}

/// A Nix library fixture's value, as JSON text.
pub fn nixlib_eval(attr: &str) -> String {
    let mut cmd = nixlib_command("nix-instantiate", attr);
    cmd.args(["--eval", "--json"]);
    stdout_of(cmd)
}

/// Copies the directory tree `from` to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if std::fs::metadata(entry.path()).unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The nixpkgs stand-in (tests/fixtures/nixpkgs: hello, busybox, callPackage with the strata
/// under test) as `nixpkgs/` in `dir`, ready to be used as `path:<returned dir>`.
pub fn nixpkgs_stand_in(dir: &Path) -> PathBuf {
    let nixpkgs = dir.join("nixpkgs");
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nixpkgs"), &nixpkgs);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(repo.join("examples/hello/default.nix"), nixpkgs.join("hello.nix")).unwrap();
    std::fs::copy(STRATA, nixpkgs.join("strata")).unwrap();
    nixpkgs
}

/// An OCI layout (`oci:DIR:v1`) of `spec` built by strata, whose manifest then lists the
/// layers in the other order than its config's diff IDs: a release that lies about what its
/// blobs hold (podman 4 runs such an image).
pub fn poisoned_layout(dir: &Path, spec: &Path) -> String {
    let (honest, poisoned) = (dir.join("honest"), dir.join("poisoned"));
    run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}:v1", honest.display())]));
    copy_tree(&honest, &poisoned);
    let blob = |digest: &str| poisoned.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(poisoned.join("index.json")).unwrap()).unwrap();
    let mut lying: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    lying["layers"].as_array_mut().unwrap().reverse();
    let bytes = serde_json::to_vec(&lying).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    std::fs::write(blob(&digest), &bytes).unwrap();
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = bytes.len().into();
    std::fs::write(poisoned.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}:v1", poisoned.display())
}
