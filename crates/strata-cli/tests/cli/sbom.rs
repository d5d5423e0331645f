//! `strata sbom` (#14): SPDX 2.3 checked by pyspdxtools and CycloneDX 1.5 by
//! cyclonedx-python-lib's strict validator (both installed by scripts/setup; each is first
//! shown to refuse a broken document, so a pass means something), agreeing with Nix on the
//! hello + glibc closure: exactly those two packages, their versions, NAR hashes and the
//! dependency between them.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const VENV: &str = "/opt/strata-test/venv/bin";

fn pyspdxtools(file: &Path) -> std::process::Output {
    Command::new(format!("{VENV}/pyspdxtools")).arg("-i").arg(file).output().expect("pyspdxtools (run scripts/setup)")
}

fn cyclonedx_validate(file: &Path) -> std::process::Output {
    Command::new(format!("{VENV}/python"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cyclonedx_validate.py"))
        .arg(file)
        .output()
        .expect("cyclonedx-python-lib (run scripts/setup)")
}

/// `nix-store --query --hash` as hex.
fn nar_hash_hex(path: &str) -> String {
    let hash = stdout_of(Command::new("nix-store").args(["--query", "--hash", path]));
    let nix32 = hash.trim().trim_start_matches("sha256:");
    stdout_of(Command::new("nix-hash").args(["--type", "sha256", "--to-base16", nix32])).trim().to_owned()
}

#[test]
fn sboms_of_hello_validate_and_agree_with_nix() {
    let (hello, glibc) = (fixture("hello"), fixture("glibc"));
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "hello.toml", &format!("name = \"hello\"\ntag = \"1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let spdx = dir.path().join("hello.spdx.json");
    run_ok(strata(&["sbom", spec.to_str().unwrap(), "-o", spdx.to_str().unwrap()]));
    let out = pyspdxtools(&spdx);
    assert!(out.status.success(), "pyspdxtools: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spdx).unwrap()).unwrap();
    let broken = dir.path().join("broken.spdx.json");
    let mut bad = doc.clone();
    bad["packages"][1]["SPDXID"] = "not an SPDX id".into();
    std::fs::write(&broken, bad.to_string()).unwrap();
    assert!(!pyspdxtools(&broken).status.success(), "pyspdxtools accepts a broken document: it proves nothing");

    // Exactly hello and glibc (besides the image itself), with versions and NAR hashes.
    let packages: Vec<&serde_json::Value> = doc["packages"].as_array().unwrap().iter().filter(|p| p["SPDXID"] != "SPDXRef-Image").collect();
    let named: Vec<(&str, &str)> = packages.iter().map(|p| (p["name"].as_str().unwrap(), p["versionInfo"].as_str().unwrap())).collect();
    assert_eq!(named, [("glibc", "2.36"), ("hello", "2.12")]);
    for (package, path) in packages.iter().zip([&glibc, &hello]) {
        assert_eq!(package["checksums"][0]["checksumValue"], nar_hash_hex(path), "{path}");
        assert!(package["comment"].as_str().unwrap().contains(path.as_str()));
    }
    let depends: Vec<(String, String)> = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "DEPENDS_ON")
        .map(|r| (r["spdxElementId"].as_str().unwrap().to_owned(), r["relatedSpdxElement"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(depends, [(packages[1]["SPDXID"].as_str().unwrap().to_owned(), packages[0]["SPDXID"].as_str().unwrap().to_owned())], "hello depends on glibc");
    // The same image, the same bytes; also where the store's database is not read (a store
    // URI strata does not know as the local one): `nix path-info` answers and the NAR hashes
    // are computed from the files.
    assert_eq!(run_ok(strata(&["sbom", spec.to_str().unwrap()])).stdout, std::fs::read(&spdx).unwrap());
    assert_eq!(run_ok(strata(&["sbom", spec.to_str().unwrap()]).env("NIX_REMOTE", "local?root=/")).stdout, std::fs::read(&spdx).unwrap());

    let cdx = dir.path().join("hello.cdx.json");
    run_ok(strata(&["sbom", spec.to_str().unwrap(), "--format", "cyclonedx", "-o", cdx.to_str().unwrap()]));
    let out = cyclonedx_validate(&cdx);
    assert!(out.status.success(), "cyclonedx: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cdx).unwrap()).unwrap();
    let mut bad = doc.clone();
    bad["components"][0]["type"] = "no such type".into();
    std::fs::write(&broken, bad.to_string()).unwrap();
    assert!(!cyclonedx_validate(&broken).status.success(), "the CycloneDX validator accepts a broken document: it proves nothing");
    let components: Vec<(&str, &str)> =
        doc["components"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap(), c["version"].as_str().unwrap())).collect();
    assert_eq!(components, [("glibc", "2.36"), ("hello", "2.12")]);
    let hello_ref = hello.trim_start_matches("/nix/store/");
    let hello_deps = doc["dependencies"].as_array().unwrap().iter().find(|d| d["ref"] == hello_ref).unwrap();
    assert_eq!(hello_deps["dependsOn"], serde_json::json!([glibc.trim_start_matches("/nix/store/")]));
}

/// Layers of a base image made by another tool (umoci: a file, no Nix store) are named as
/// holding no store paths; nothing is guessed about them.
#[test]
fn a_base_image_without_nix_is_said_so() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("base");
    let bundle = dir.path().join("bundle");
    run_ok(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run_ok(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:base", layout.display())));
    run_ok(Command::new("umoci").args(["unpack", "--rootless", "--image"]).arg(format!("{}:base", layout.display())).arg(&bundle));
    std::fs::write(bundle.join("rootfs/motd"), "not from Nix\n").unwrap();
    run_ok(Command::new("umoci").args(["repack", "--image"]).arg(format!("{}:base", layout.display())).arg(&bundle));
    let spec = write_spec(
        dir.path(),
        "over.toml",
        &format!("name = \"over\"\ntag = \"1\"\nfrom_image = \"oci:{}:base\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n", layout.display()),
    );
    let spdx = dir.path().join("over.spdx.json");
    run_ok(strata(&["sbom", spec.to_str().unwrap(), "-o", spdx.to_str().unwrap()]));
    assert!(pyspdxtools(&spdx).status.success());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spdx).unwrap()).unwrap();
    let comment = doc["comment"].as_str().unwrap();
    assert!(comment.contains("Layers 1 (sha256:") && comment.contains("hold no Nix store paths"), "{comment}");
    assert_eq!(doc["packages"].as_array().unwrap().len(), 3, "the image, hello and glibc: nothing made up for the base layer");
}

/// The Nix library builds an image's bill of materials (`sbom`, `sbomCycloneDX`): the store
/// paths and the trees laid over `/`, licences from the packages' `meta`, layers named by the
/// digests the description recorded; `strata sbom` of the same description says the same.
#[test]
fn the_nix_library_builds_sboms_with_licences() {
    let spdx = nixlib_build("n2cSbom.sbom");
    let out = pyspdxtools(Path::new(&spdx));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spdx).unwrap()).unwrap();
    let licences: Vec<(&str, &str)> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"] != "SPDXRef-Image")
        .map(|p| (p["name"].as_str().unwrap(), p["licenseDeclared"].as_str().unwrap()))
        .collect();
    assert_eq!(licences, [("busybox", "GPL-2.0-only"), ("glibc", "LGPL-2.1-or-later AND GPL-2.0-or-later"), ("hello", "NOASSERTION")]);
    let description: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(nixlib_build("n2cSbom")).unwrap()).unwrap();
    let recorded = &description["digests"]["compressed"][0];
    assert_eq!(doc["packages"][0]["checksums"][0]["checksumValue"], recorded["manifest"].as_str().unwrap().trim_start_matches("sha256:"));
    let glibc_layer = recorded["layers"][0]["digest"].as_str().unwrap();
    assert!(doc.to_string().contains(&format!("in layer 1 ({glibc_layer})")), "the layers are named by the recorded digests");

    let cdx = nixlib_build("n2cSbom.sbomCycloneDX");
    assert!(cyclonedx_validate(Path::new(&cdx)).status.success());
    let cli = run_ok(strata(&["sbom", &nixlib_build("n2cSbom"), "--format", "cyclonedx"])).stdout;
    let cli: serde_json::Value = serde_json::from_slice(&cli).unwrap();
    let names = |d: &serde_json::Value| d["components"].as_array().unwrap().iter().map(|c| c["bom-ref"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let built: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cdx).unwrap()).unwrap();
    assert_eq!(names(&cli), names(&built), "the command line and the Nix build list the same packages");
    // The command line takes NAR hashes from the store's database; the Nix build, which cannot
    // read it, hashes the files: the two agree.
    let hashes = |d: &serde_json::Value| d["components"].as_array().unwrap().iter().map(|c| c["hashes"].to_string()).collect::<Vec<_>>();
    assert!(hashes(&cli).iter().all(|h| h.contains("SHA-256")), "{:?}", hashes(&cli));
    assert_eq!(hashes(&cli), hashes(&built), "NAR hashes registered and NAR hashes computed");
}

/// `--sbom` on a push attaches the bill of materials as an OCI 1.1 artifact whose subject is
/// the image; the test registry (distribution 2.8) has no referrers API, so it is reachable
/// through the referrers tag schema (an index at tag `sha256-<manifest hex>`), as skopeo
/// reads it; `strata referrers` lists it.
#[test]
fn a_pushed_image_carries_its_sbom_as_a_referrer() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "s.toml", &format!("name = \"attached\"\ntag = \"1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let registry = Registry::start();
    let repo = registry.reference("strata-test/attached");
    let reg = ["--creds", CREDS, "--tls-verify=false"];
    let out = run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("{repo}:1"), "--sbom", "--json"]).args(reg));
    let written: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = written["manifest_digest"].as_str().unwrap().to_owned();
    let raw = |reference: String| -> serde_json::Value {
        serde_json::from_slice(&run_ok(Command::new("skopeo").args(["inspect", "--raw"]).args(reg).arg(reference)).stdout).unwrap()
    };
    let index = raw(format!("{repo}:sha256-{}", digest.trim_start_matches("sha256:")));
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let entry = &index["manifests"][0];
    assert_eq!(entry["artifactType"], "application/spdx+json");
    let artifact = raw(format!("{repo}@{}", entry["digest"].as_str().unwrap()));
    assert_eq!(artifact["subject"]["digest"], digest.as_str(), "the artifact's subject is the image");
    assert_eq!(artifact["artifactType"], "application/spdx+json");
    assert_eq!(artifact["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
    // The attached document is the image's bill of materials, and valid.
    let blob = artifact["layers"][0]["digest"].as_str().unwrap();
    let copied = dir.path().join("artifact");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--src-creds", CREDS])
            .arg(format!("{repo}@{}", entry["digest"].as_str().unwrap()))
            .arg(format!("oci:{}:a", copied.display())),
    );
    let sbom = copied.join("blobs/sha256").join(blob.trim_start_matches("sha256:"));
    let document = dir.path().join("attached.spdx.json");
    std::fs::copy(&sbom, &document).unwrap();
    assert!(pyspdxtools(&document).status.success());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&document).unwrap()).unwrap();
    assert_eq!(doc["packages"][0]["checksums"][0]["checksumValue"], digest.trim_start_matches("sha256:"));

    let listed: serde_json::Value = serde_json::from_slice(&run_ok(strata(&["referrers", &format!("{repo}:1"), "--json"]).args(reg)).stdout).unwrap();
    assert_eq!(listed["manifest_digest"], digest.as_str());
    assert_eq!(listed["referrers"][0]["digest"], entry["digest"]);
    assert_eq!(listed["referrers"][0]["artifact_type"], "application/spdx+json");
}
