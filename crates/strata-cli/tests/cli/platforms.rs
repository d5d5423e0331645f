//! Multi-platform images (#13): two specs, one for amd64 (the host's busybox) and one for
//! arm64 (Debian's arm64 busybox, a real foreign binary run by qemu through binfmt_misc), made
//! into one image: an OCI image index in registries and OCI layouts, one platform's image
//! where one image goes. Checked with skopeo, umoci and podman, which runs each platform.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// arm64 binaries run here only through binfmt_misc and qemu (scripts/setup enables them): a
/// machine without them fails these tests, saying so, rather than passing them unchecked.
fn require_arm64_emulation() {
    let entry = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    assert!(
        entry.lines().next() == Some("enabled") && entry.lines().any(|l| l.starts_with("flags:") && l.contains('F')),
        "arm64 emulation is not enabled (binfmt_misc qemu-aarch64 with flag F): run scripts/setup, or \
         `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64`; found {entry:?}"
    );
}

/// Specs of one image `NAME:1` for amd64 and arm64, each printing its `uname -m`. Each test
/// names its image apart: tests run at once and share podman, where one test's clean-up would
/// take away the other's image.
fn specs(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    require_arm64_emulation();
    let spec = |file: &str, architecture: &str, busybox: &str| {
        write_spec(
            dir,
            file,
            &format!(
                "name = \"{name}\"\ntag = \"1\"\narchitecture = \"{architecture}\"\n[config]\nEntrypoint = [\"{busybox}/bin/sh\", \"-c\", \"uname -m\"]\n"
            ),
        )
    };
    (spec("amd64.toml", "amd64", &fixture("busybox")), spec("arm64.toml", "arm64", &fixture("busyboxArm64")))
}

fn raw_index(reference: &str, extra: &[&str]) -> serde_json::Value {
    serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw"]).args(extra).arg(reference))).unwrap()
}

/// (os, architecture, variant) of each entry of an index.
fn platforms(index: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
    let field = |p: &serde_json::Value, k: &str| p[k].as_str().map(str::to_owned);
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (field(&m["platform"], "os").unwrap(), field(&m["platform"], "architecture").unwrap(), field(&m["platform"], "variant")))
        .collect()
}

fn both() -> Vec<(String, String, Option<String>)> {
    vec![("linux".into(), "amd64".into(), None), ("linux".into(), "arm64".into(), Some("v8".into()))]
}

#[test]
fn a_two_platform_image_goes_to_a_registry_and_each_platform_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (amd, arm) = specs(dir.path(), "multi-registry");
    let registry = Registry::start();
    let target = format!("{}:1", registry.reference("strata-test/multi-registry"));
    let reg = ["--creds", CREDS, "--tls-verify=false"];
    let out = run_ok(strata(&["build", amd.to_str().unwrap(), arm.to_str().unwrap(), "-o", &target, "--json"]).args(reg));
    let written: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let index = raw_index(&target, &reg);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(platforms(&index), both());
    let index_digest = written["index_digest"].as_str().unwrap().to_owned();
    assert_eq!(format!("sha256:{}", sha256_hex(&run_ok(Command::new("skopeo").args(["inspect", "--raw"]).args(reg).arg(&target)).stdout)), index_digest);

    // podman pulls each platform from the index and runs it.
    let host_ref = target.trim_start_matches("docker://");
    for (platform, machine) in [("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")] {
        remove_images("podman", &[host_ref]);
        run_ok(Command::new("podman").args(["pull", "-q", "--platform", platform]).args(reg).arg(host_ref));
        let out = stdout_of(Command::new("podman").args(["run", "--rm", "--platform", platform, host_ref]));
        assert_eq!(out.trim(), machine, "{platform}");
    }
    remove_images("podman", &[host_ref]);

    // By digest, the index is the image: copied with --all, every platform and the index
    // itself, whose digest stays; without, the host's image or --platform's.
    let by_digest = format!("{}@{index_digest}", registry.reference("strata-test/multi-registry"));
    let layout = dir.path().join("copied");
    run_ok(strata(&["copy", &by_digest, &format!("oci:{}:all", layout.display()), "--all"]).args(reg));
    let copied = run_ok(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{}:all", layout.display())])).stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&copied)), index_digest, "copy --all keeps the index digest");
    run_ok(strata(&["copy", &by_digest, &format!("oci:{}:one", layout.display())]).args(reg));
    let one: serde_json::Value =
        serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{}:one", layout.display())]))).unwrap();
    assert_eq!(one["mediaType"], "application/vnd.oci.image.manifest.v1+json", "without --all, one image");
    assert_eq!(one["config"]["digest"], written["images"][0]["config_digest"], "the host's (amd64)");
    let archive = dir.path().join("arm.tar");
    run_ok(strata(&["copy", &target, &format!("docker-archive:{}", archive.display()), "--platform", "linux/arm64"]).args(reg));
    let loaded = stdout_of(Command::new("podman").arg("load").arg("-i").arg(&archive));
    assert!(loaded.contains(&format!("{host_ref}\n")), "{loaded}");
    assert_eq!(stdout_of(Command::new("podman").args(["run", "--rm", "--arch", "arm64", host_ref])).trim(), "aarch64");
    remove_images("podman", &[host_ref]);

    // strata run picks the platform asked for.
    let out = stdout_of(strata(&["run", &target, "--engine", "podman", "--platform", "linux/arm64"]).args(reg));
    assert_eq!(out.trim(), "aarch64");
    remove_images("podman", &[host_ref]);

    // Signed, the index is the release a next one believes (`--previous-key`): each
    // platform's image is read through the index digest that was verified, and no layer
    // blob is read.
    let key = dir.path().join("release");
    run_ok(strata(&["key", "generate", key.to_str().unwrap()]).env("COSIGN_PASSWORD", ""));
    let signed = format!("{}:signed", registry.reference("strata-test/multi-registry"));
    let (specs, cache) = ([amd.to_str().unwrap(), arm.to_str().unwrap()], dir.path().join("cache"));
    run_ok(strata(&["build", specs[0], specs[1], "-o", &signed, "--sign-key", &format!("{}.key", key.display())]).args(reg).env("COSIGN_PASSWORD", ""));
    let layers: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| {
            raw_index(&format!("{}@{}", registry.reference("strata-test/multi-registry"), m["digest"].as_str().unwrap()), &reg)["layers"]
                .clone()
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let reads = || layers.iter().map(|layer| registry.requests("GET", &format!("/blobs/{layer}"))).collect::<Vec<_>>();
    let before = reads();
    let next = format!("{}:2", registry.reference("strata-test/multi-registry"));
    let out = run_ok(
        strata(&["build", specs[0], specs[1], "-o", &next, "--previous", &signed, "--previous-key", &format!("{}.pub", key.display()), "-v"])
            .args(reg)
            .env("STRATA_CACHE_DIR", &cache),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("is signed by").count(), 2, "{log}");
    assert_eq!(raw_index(&next, &reg), index, "the same index");
    assert_eq!(reads(), before, "a layer blob was read: {log}");
}

#[test]
fn a_two_platform_oci_layout_is_read_by_skopeo_and_umoci_and_one_platform_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (amd, arm) = specs(dir.path(), "multi-layout");
    let (amd, arm) = (amd.to_str().unwrap(), arm.to_str().unwrap());
    let layout = format!("oci:{}:1", dir.path().join("layout").display());
    run_ok(strata(&["build", amd, arm, "-o", &layout]));
    assert_eq!(platforms(&raw_index(&layout, &[])), both());
    let arch = |extra: &[&str]| {
        let inspect: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(extra).args(["inspect", &layout]))).unwrap();
        inspect["Architecture"].as_str().unwrap().to_owned()
    };
    assert_eq!((arch(&[]), arch(&["--override-arch", "arm64"])), ("amd64".to_owned(), "arm64".to_owned()));

    // umoci cannot unpack a tag that names an index ("tag is ambiguous"): one platform copied
    // out of it unpacks, with the arm64 busybox inside.
    let arm_layout = dir.path().join("arm");
    run_ok(strata(&["copy", &layout, &format!("oci:{}:arm", arm_layout.display()), "--platform", "linux/arm64"]));
    let bundle = dir.path().join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--rootless", "--image"]).arg(format!("{}:arm", arm_layout.display())).arg(&bundle));
    let busybox = fixture("busyboxArm64");
    let unpacked = std::fs::read(bundle.join("rootfs").join(busybox.trim_start_matches('/')).join("bin/busybox")).unwrap();
    assert_eq!(&unpacked[..4], b"\x7fELF");
    assert_eq!(unpacked[18], 0xb7, "an aarch64 ELF (e_machine 183)");

    // Where one image goes, the platform named, else the host's; a missing one is an error
    // naming those there are; two specs for one platform are refused.
    let archive = dir.path().join("arm.tar");
    run_ok(strata(&["build", amd, arm, "-o", &format!("docker-archive:{}", archive.display()), "--platform", "linux/arm64"]));
    run_ok(Command::new("podman").arg("load").arg("-i").arg(&archive));
    assert_eq!(stdout_of(Command::new("podman").args(["run", "--rm", "--arch", "arm64", "multi-layout:1"])).trim(), "aarch64");
    remove_images("podman", &["multi-layout:1"]);
    let stderr = fails(&mut strata(&["build", amd, arm, "-o", "docker-archive:/dev/null", "--platform", "linux/riscv64"]));
    assert!(stderr.contains("no image for linux/riscv64 among linux/amd64, linux/arm64"), "{stderr}");
    let stderr = fails(&mut strata(&["build", amd, amd, "-o", &format!("oci:{}:2", dir.path().join("twice").display())]));
    assert!(stderr.contains("two images for linux/amd64"), "{stderr}");
    assert!(!dir.path().join("twice").exists(), "nothing written");
}

/// The Nix library's `buildImageIndex`: two nix2container-style images (amd64, arm64) as one;
/// its copyToRegistry pushes the index (each image's digests as Nix recorded them), and its
/// copyToPodman loads the host's platform.
#[test]
fn the_nix_library_builds_an_image_index() {
    require_arm64_emulation();
    let registry = Registry::start();
    let host = format!("127.0.0.1:{}", registry.port);
    let reg = ["--creds", CREDS, "--tls-verify=false"];
    // copyTo takes any destination (copyToRegistry pushes to the image's name alone).
    let copy_to = format!("{}/bin/copy-to", nixlib_build("multi.copyTo"));
    let target = format!("docker://{host}/strata-multi:v1");
    run_ok(Command::new(&copy_to).arg(&target).args(reg));
    let index = raw_index(&target, &reg);
    assert_eq!(platforms(&index), both());
    // Each image's manifest is the one Nix recorded (gzip, the codec described).
    let listed: Vec<String> = index["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_owned()).collect();
    let descriptions: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(nixlib_build("multi")).unwrap()).unwrap();
    for (description, digest) in descriptions["strata_index"]["images"].as_array().unwrap().iter().zip(&listed) {
        let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(description.as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(recorded["digests"]["compressed"][0]["manifest"].as_str(), Some(digest.as_str()));
    }
    let host_ref = target.trim_start_matches("docker://");
    remove_images("podman", &[host_ref]);
    run_ok(Command::new("podman").args(["pull", "-q", "--platform", "linux/arm64"]).args(reg).arg(host_ref));
    assert_eq!(stdout_of(Command::new("podman").args(["run", "--rm", "--platform", "linux/arm64", host_ref])).trim(), "aarch64");
    remove_images("podman", &[host_ref]);

    run_ok(Command::new(format!("{}/bin/copy-to-podman", nixlib_build("multi.copyToPodman"))));
    assert_eq!(run_in("podman", "strata-multi:v1", &[]).trim(), "x86_64");
    remove_images("podman", &["strata-multi:v1"]);
}
