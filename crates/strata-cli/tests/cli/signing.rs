//! Signatures (#14): keys in cosign's format, images signed on push as cosign stores them,
//! checked by a podman that really verifies sigstore signatures (Debian 13's podman 5, which
//! scripts/fetch-podman5 puts in /opt/strata-test/podman5; Debian 12's refuses every signed
//! image, so it would prove nothing) with a `sigstoreSigned` policy of the test's own (the
//! machine's policy is never touched), and by `strata verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::*;

const PODMAN5: &str = "/opt/strata-test/podman5/podman";

/// podman 5 with storage, policy and registries.d of `dir`'s own.
struct Verifier {
    dir: PathBuf,
}

impl Verifier {
    fn new(dir: &Path, registry: &Registry, key: &Path) -> Verifier {
        assert!(
            Path::new(PODMAN5).is_file(),
            "{PODMAN5} is missing: run scripts/setup (scripts/fetch-podman5); no other podman here verifies sigstore signatures"
        );
        let dir = dir.join("verifier");
        let registries_d = dir.join("home/.config/containers/registries.d");
        std::fs::create_dir_all(&registries_d).unwrap();
        let host = format!("127.0.0.1:{}", registry.port);
        std::fs::write(registries_d.join("strata-test.yaml"), format!("docker:\n  {host}:\n    use-sigstore-attachments: true\n")).unwrap();
        let policy = serde_json::json!({
            "default": [{ "type": "reject" }],
            "transports": { "docker": { host: [{ "type": "sigstoreSigned", "keyPath": key, "signedIdentity": { "type": "matchRepository" } }] } },
        });
        std::fs::write(dir.join("policy.json"), policy.to_string()).unwrap();
        Verifier { dir }
    }

    /// `podman pull` of `image` under the policy.
    fn pull(&self, image: &str) -> Output {
        let d = &self.dir;
        Command::new(PODMAN5)
            .env("HOME", d.join("home"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "pull", "--tls-verify=false", "--creds", CREDS, "--signature-policy"])
            .arg(d.join("policy.json"))
            .arg(image)
            .output()
            .unwrap()
    }
}

fn generate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let base = dir.join(name);
    run_ok(strata(&["key", "generate", base.to_str().unwrap()]).env("COSIGN_PASSWORD", "correct horse"));
    (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")))
}

#[test]
fn signed_pushes_are_verified_by_podman_and_strata() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = generate(dir.path(), "release");
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n"), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // No password and no terminal: an error, never a wait.
    let out = strata(&["key", "generate", dir.path().join("other").to_str().unwrap()]).env_remove("COSIGN_PASSWORD").stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("COSIGN_PASSWORD"));
    // A name that is a directory would give hidden `.key` and `.pub` files in it.
    let stderr = fails(strata(&["key", "generate", &format!("{}/", dir.path().display())]).env("COSIGN_PASSWORD", "x"));
    assert!(stderr.contains("a key pair's name ends in a file name"), "{stderr}");

    let registry = Registry::start();
    let hello = fixture("hello");
    let spec = write_spec(dir.path(), "s.toml", &format!("name = \"signed\"\ntag = \"1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let repo = registry.reference("strata-test/signed");
    let reg = ["--creds", CREDS, "--tls-verify=false"];
    let push = |tag: &str, sign: bool| {
        let mut cmd = strata(&["build", spec.to_str().unwrap(), "-o", &format!("{repo}:{tag}")]);
        cmd.args(reg).env("COSIGN_PASSWORD", "correct horse");
        if sign {
            cmd.args(["--sign-key", key.to_str().unwrap()]);
        }
        run_ok(cmd);
    };
    push("signed", true);
    let verify = |tag: &str, key: &Path| strata(&["verify", &format!("{repo}:{tag}"), "--key", key.to_str().unwrap()]).args(reg).output().unwrap();
    let out = verify("signed", &public);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let verifier = Verifier::new(dir.path(), &registry, &public);
    let host_repo = repo.trim_start_matches("docker://");
    let pulled = verifier.pull(&format!("{host_repo}:signed"));
    assert!(pulled.status.success(), "podman refused the signed image: {}", String::from_utf8_lossy(&pulled.stderr));

    // An unsigned image (another config, so another manifest digest) is refused.
    std::fs::write(&spec, format!("name = \"signed\"\ntag = \"1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\nCmd = [\"unsigned\"]\n")).unwrap();
    push("unsigned", false);
    let refused = verifier.pull(&format!("{host_repo}:unsigned"));
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("signature"), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(!verify("unsigned", &public).status.success());

    // Another key's signature is refused by both.
    let (_, stranger) = generate(dir.path(), "stranger");
    let strangers = Verifier::new(&dir.path().join("s"), &registry, &stranger);
    assert!(!strangers.pull(&format!("{host_repo}:signed")).status.success(), "podman accepted a signature of another key");
    let out = verify("signed", &stranger);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not valid"), "{}", String::from_utf8_lossy(&out.stderr));

    // A tampered signature (one character of it changed, in the registry) is refused by both.
    let digest = String::from_utf8(verify("signed", &public).stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let raw = run_ok(Command::new("skopeo").args(["inspect", "--raw"]).args(reg).arg(format!("{repo}:{sig_tag}"))).stdout;
    let mut manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let annotation = &mut manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    let mut signature = annotation.as_str().unwrap().to_owned();
    let flipped = if signature.as_bytes()[20] == b'A' { "B" } else { "A" };
    signature.replace_range(20..21, flipped);
    *annotation = signature.into();
    let body = dir.path().join("tampered.json");
    std::fs::write(&body, manifest.to_string()).unwrap();
    run_ok(
        Command::new("curl")
            .args(["-fsS", "-u", CREDS, "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("http://{}/v2/strata-test/signed/manifests/{sig_tag}", host_repo.split('/').next().unwrap())),
    );
    let fresh = Verifier::new(&dir.path().join("t"), &registry, &public);
    let refused = fresh.pull(&format!("{host_repo}:signed"));
    assert!(!refused.status.success(), "podman accepted a tampered signature");
    assert!(!verify("signed", &public).status.success(), "strata verify accepted a tampered signature");
}

/// A release pushed from an empty layer cache, given the previous release and the key that
/// signed it (`--previous-key`): the signature verifies, so the previous release's blob of
/// the unchanged layer is taken by its diff ID without being downloaded, and the manifest is
/// the one a cold push makes; a layout takes it too (umoci reads the layout). Given a key
/// that did not sign it, the same blob is downloaded and checked before it is taken.
#[test]
fn a_signed_previous_release_lends_its_blobs_unread() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = generate(dir.path(), "release");
    let (_, stranger) = generate(dir.path(), "stranger");
    let registry = Registry::start();
    let spec = |greeting: &str, file: &str| {
        let hello = fixture_with("hello", &[("greeting", greeting)]);
        write_spec(dir.path(), file, &format!("name = \"app\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"))
    };
    let (first, second) = (spec("Hello, first release!", "1.toml"), spec("Hello, the second release!", "2.toml"));
    let push = |cache: &str, spec: &Path, target: &str, extra: &[&str]| {
        let mut cmd = strata(&["build", spec.to_str().unwrap(), "-o", target, "-v"]);
        cmd.args(["--creds", CREDS, "--tls-verify=false"]).args(extra).env("STRATA_CACHE_DIR", dir.path().join(cache)).env("COSIGN_PASSWORD", "correct horse");
        String::from_utf8_lossy(&run_ok(cmd).stderr).into_owned()
    };
    let (v1, repo) = (format!("{}:v1", registry.reference("strata-test/app")), registry.reference("strata-test/app"));
    push("first", &first, &v1, &["--sign-key", key.to_str().unwrap()]);
    let manifest = |reference: &str| -> serde_json::Value {
        let raw = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", CREDS, reference]));
        serde_json::from_str(&raw).unwrap()
    };
    let libc = manifest(&v1)["layers"][0]["digest"].as_str().unwrap().to_owned();
    push("cold", &second, &format!("{}:v2", registry.reference("strata-test/cold")), &[]);
    let digest_of = |reference: &str| {
        stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--creds", CREDS, "--format", "{{.Digest}}", reference])).trim().to_owned()
    };
    let cold = digest_of(&format!("{}:v2", registry.reference("strata-test/cold")));

    let log = push("signed", &second, &format!("{repo}:v2"), &["--previous", &v1, "--previous-key", public.to_str().unwrap()]);
    assert!(log.contains("is signed by") && log.contains("1 layers uploaded, 0 mounted, 1 already there"), "{log}");
    assert_eq!(registry.requests("GET", &format!("/blobs/{libc}")), 0, "the signed release's blob was read: {log}");
    assert_eq!(digest_of(&format!("{repo}:v2")), cold, "the manifest a cold push makes");

    // Into another repository (the blob mounted from the previous release's once checked).
    let other = format!("{}:v2", registry.reference("strata-test/other"));
    let log = push("stranger", &second, &other, &["--previous", &v1, "--previous-key", stranger.to_str().unwrap()]);
    assert!(log.contains("no valid signature") && log.contains("each of the release's blobs is checked"), "{log}");
    assert!(log.contains("1 layers uploaded, 1 mounted, 0 already there"), "{log}");
    assert!(registry.requests("GET", &format!("/blobs/{libc}")) >= 1, "a release another key signed was believed: {log}");
    assert_eq!(digest_of(&other), cold);

    // A layout takes the blob too (downloaded: a layout holds its blobs).
    let layout = format!("oci:{}:v2", dir.path().join("taken").display());
    let log = push("layout", &second, &layout, &["--previous", &v1, "--previous-key", public.to_str().unwrap()]);
    assert!(log.contains("1 taken from the previous release"), "{log}");
    assert_eq!(manifest(&layout)["layers"][0]["digest"], libc.as_str());
    run_ok(Command::new("umoci").args(["unpack", "--rootless", "--image", layout.trim_start_matches("oci:")]).arg(dir.path().join("unpacked")));

    let layout = format!("oci:{}:v1", dir.path().join("layout").display());
    let refused =
        fails(&mut strata(&["build", second.to_str().unwrap(), "-o", "/dev/null", "--previous", &layout, "--previous-key", public.to_str().unwrap()]));
    assert!(refused.contains("signatures are verified in registries"), "{refused}");
}
