//! Images read back: `strata copy` between formats and into engines, `from_image` with its
//! config merge, and `strata run` in both engines.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&stdout_of(Command::new("skopeo").args(args))).unwrap()
}

fn hello_layout(dir: &Path) -> String {
    let hello = fixture("hello");
    let spec = write_spec(dir, "hello.toml", &format!("name = \"strata-test-src\"\ntag = \"v1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let reference = format!("oci:{}:v1", dir.join("layout").display());
    run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &reference]));
    reference
}

/// oci -> docker-archive -> oci-archive -> oci keeps the config (the image ID) and every
/// layer byte for byte; the copy runs in podman and docker.
#[test]
fn copies_keep_digests_across_formats() {
    let dir = tempfile::tempdir().unwrap();
    let original = hello_layout(dir.path());
    let d = dir.path().display();
    let hops = [format!("docker-archive:{d}/a.tar"), format!("oci-archive:{d}/b.tar:v1"), format!("oci:{d}/c:v1")];
    let mut from = original.clone();
    for to in &hops {
        run_ok(strata(&["copy", &from, to]));
        from = to.clone();
    }
    let config = |r: &str| stdout_of(Command::new("skopeo").args(["inspect", "--config", "--raw", r]));
    assert_eq!(config(&original), config(&from));
    assert_eq!(skopeo_json(&["inspect", &original])["Layers"], skopeo_json(&["inspect", &from])["Layers"]);
    assert_eq!(skopeo_json(&["inspect", &original])["Digest"], skopeo_json(&["inspect", &from])["Digest"], "same manifest too");

    // A docker-archive compressed whole (as `buildImage` writes them) reads the same.
    for (tool, suffix) in [("gzip", "gz"), ("zstd", "zst")] {
        run_ok(Command::new(tool).args(["-k", "-q", &format!("{d}/a.tar")]));
        let copy = format!("oci:{d}/{suffix}:v1");
        run_ok(strata(&["copy", &format!("docker-archive:{d}/a.tar.{suffix}"), &copy]));
        assert_eq!(config(&original), config(&copy), "{tool}");
        assert_eq!(skopeo_json(&["inspect", &original])["Digest"], skopeo_json(&["inspect", &copy])["Digest"], "{tool}");
    }

    run_ok(strata(&["copy", &format!("docker-archive:{d}/a.tar"), "podman:strata-test-copied:v2"]));
    assert_eq!(run_in("podman", "strata-test-copied:v2", &[]), "Hello, world!\n");
    remove_images("podman", &["strata-test-copied:v2"]);
    run_ok(strata(&["copy", &from, "docker-daemon:strata-test-copied:v3"]));
    assert_eq!(run_in("docker", "strata-test-copied:v3", &[]), "Hello, world!\n");
    remove_images("docker", &["strata-test-copied:v3"]);
}

/// A corrupted blob is caught while copying, and nothing is written.
#[test]
fn corrupt_sources_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let original = hello_layout(dir.path());
    let layer = skopeo_json(&["inspect", &original])["Layers"][1].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let blob = dir.path().join("layout/blobs/sha256").join(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = strata(&["copy", &original, &format!("docker-archive:{}/out.tar", dir.path().display())]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(!dir.path().join("out.tar").exists());
    let out = strata(&["copy", "oci:/nonexistent:v1", "docker-archive:x.tar"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

/// from_image: base layers first and unchanged, config merged, history kept; it runs.
#[test]
fn from_image_merges_config_and_runs() {
    let (busybox, hello) = (fixture("busybox"), fixture("hello"));
    let dir = tempfile::tempdir().unwrap();
    let base_spec = write_spec(
        dir.path(),
        "base.toml",
        &format!(
            "name = \"base\"\nroots = [\"{busybox}\"]\n[config]\nEnv = [\"PATH={busybox}/bin\", \"A=base\", \"KEEP=1\"]\n\
             Labels = {{ from = \"base\", x = \"1\" }}\nCmd = [\"from-base\"]\nWorkingDir = \"/tmp\"\nExposedPorts = {{ \"80/tcp\" = {{}} }}\n"
        ),
    );
    let base = format!("oci:{}:b", dir.path().join("base").display());
    run_ok(strata(&["build", base_spec.to_str().unwrap(), "-o", &base]));
    let base_archive = format!("docker-archive:{}", dir.path().join("base.tar").display());
    run_ok(strata(&["copy", &base, &base_archive]));

    for (i, from) in [&base, &base_archive].into_iter().enumerate() {
        let spec = write_spec(
            dir.path(),
            "top.toml",
            &format!(
                "name = \"top\"\nfrom_image = \"{from}\"\n[config]\nEnv = [\"A=top\"]\nLabels = {{ x = \"2\" }}\n\
                 Entrypoint = [\"{hello}/bin/hello\"]\nExposedPorts = {{ \"8080/tcp\" = {{}} }}\n"
            ),
        );
        let top = format!("oci:{}:t{i}", dir.path().join("top").display());
        run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &top]));
        let config = skopeo_json(&["inspect", "--config", &top]);
        let c = &config["config"];
        assert_eq!(c["Env"], serde_json::json!([format!("PATH={busybox}/bin"), "A=top", "KEEP=1"]));
        assert_eq!(c["Labels"], serde_json::json!({"from": "base", "x": "2"}));
        assert_eq!(c["ExposedPorts"], serde_json::json!({"80/tcp": {}, "8080/tcp": {}}));
        assert_eq!((&c["Cmd"], &c["WorkingDir"]), (&serde_json::json!(["from-base"]), &serde_json::json!("/tmp")));
        assert_eq!(config["history"].as_array().unwrap().len(), 3, "busybox, then glibc and hello");
        let (base_layers, top_layers) = (skopeo_json(&["inspect", &base])["Layers"].clone(), skopeo_json(&["inspect", &top])["Layers"].clone());
        assert_eq!(top_layers[0], base_layers[0], "the base layer comes first, unchanged");

        let image = format!("localhost/strata-test-top:t{i}");
        run_ok(Command::new("skopeo").args(["copy", &top, &format!("containers-storage:{image}")]));
        assert_eq!(run_in("podman", &image, &[]), "Hello, world!\nfrom-base\n");
        remove_images("podman", &[&image]);
    }
}

#[test]
fn run_passes_arguments_and_exit_codes_in_both_engines() {
    let busybox = fixture("busybox");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "run.toml", &format!("name = \"strata-test-run\"\ntag = \"t\"\n[config]\nEntrypoint = [\"{busybox}/bin/sh\", \"-c\"]\n"));
    for engine in ["podman", "docker"] {
        let out = strata(&["run", spec.to_str().unwrap(), "--engine", engine, "--network", "none", "-e", "X=42", "--", "echo $X; exit 3"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{engine}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n", "{engine}");
        assert!(stderr.contains(&format!("running with {engine}")), "{stderr}");
        remove_images(engine, &["strata-test-run:t"]);
    }
    // An image reference runs too, and without --engine strata picks one and says which.
    let reference = hello_layout(dir.path());
    let out = strata(&["run", &reference, "--", "arg"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, world!\narg\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("running with podman"));
}

/// from_image naming an index takes the image for the spec's own architecture, not the
/// host's (#11): a hand-made index of two images in an OCI layout.
#[test]
fn from_image_takes_the_specs_platform_from_an_index() {
    let (lib, etc) = (fixture("toyLib"), fixture("toyEtc"));
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layers = |r: &str| skopeo_json(&["inspect", "--raw", r])["layers"].clone();
    let mut base_layers = std::collections::BTreeMap::new();
    for (arch, root) in [("amd64", &lib), ("arm64", &etc)] {
        let spec = write_spec(dir.path(), &format!("{arch}.toml"), &format!("name = \"base\"\narchitecture = \"{arch}\"\nroots = [\"{root}\"]\n"));
        let reference = format!("oci:{}:{arch}", layout.display());
        run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &reference]));
        base_layers.insert(arch, layers(&reference));
    }
    assert_ne!(base_layers["amd64"], base_layers["arm64"]);
    // index.json's two entries become one entry: an index of both, with their platforms.
    let index_path = layout.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut manifests = index["manifests"].as_array().unwrap().clone();
    for m in &mut manifests {
        let arch = m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap().to_owned();
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        m.as_object_mut().unwrap().remove("annotations");
    }
    let nested =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})).unwrap();
    std::fs::write(dir.path().join("nested"), &nested).unwrap();
    let hex = stdout_of(Command::new("sha256sum").arg(dir.path().join("nested"))).split_whitespace().next().unwrap().to_owned();
    std::fs::rename(dir.path().join("nested"), layout.join("blobs/sha256").join(&hex)).unwrap();
    let entry = serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{hex}"), "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}});
    std::fs::write(&index_path, serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [entry]})).unwrap()).unwrap();

    for arch in ["arm64", "amd64"] {
        let spec = write_spec(dir.path(), "top.toml", &format!("name = \"top\"\narchitecture = \"{arch}\"\nfrom_image = \"oci:{}:multi\"\n", layout.display()));
        let top = format!("oci:{}:{arch}", dir.path().join("top").display());
        run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &top]));
        assert_eq!(layers(&top), base_layers[arch], "{arch}: the base for {arch}");
        assert_eq!(skopeo_json(&["inspect", "--config", &top])["architecture"], arch);
    }
    // A platform the index lacks is named.
    let spec = write_spec(dir.path(), "top.toml", &format!("name = \"top\"\narchitecture = \"riscv64\"\nfrom_image = \"oci:{}:multi\"\n", layout.display()));
    let out = strata(&["build", spec.to_str().unwrap(), "-o", "docker-archive:/dev/null"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image for linux/riscv64"), "{}", String::from_utf8_lossy(&out.stderr));
}
