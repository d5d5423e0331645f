//! OCI layouts and archives, checked by skopeo and umoci, and run by podman.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::*;

fn spec_for(dir: &Path, roots: &[&str], entrypoint: &str) -> std::path::PathBuf {
    let roots: Vec<String> = roots.iter().map(|r| format!("\"{r}\"")).collect();
    write_spec(dir, "spec.toml", &format!("name = \"strata-test-oci\"\nroots = [{}]\n[config]\nEntrypoint = [\"{entrypoint}\"]\n", roots.join(", ")))
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn oci_layout_passes_skopeo_and_umoci_with_store_modes() {
    let (hello, awkward) = (fixture("hello"), fixture("awkward"));
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(dir.path(), &[&awkward], &format!("{hello}/bin/hello"));
    let layout = dir.path().join("layout");
    run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}:v1", layout.display())]));

    let inspect: serde_json::Value =
        serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &format!("oci:{}:v1", layout.display())]))).unwrap();
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3, "glibc, hello, awkward: {inspect}");
    let raw: serde_json::Value =
        serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{}:v1", layout.display())]))).unwrap();
    assert_eq!(raw["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");

    let bundle = dir.path().join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--image", &format!("{}:v1", layout.display()), bundle.to_str().unwrap()]));
    let rootfs = bundle.join("rootfs");
    let in_root = |p: &str| rootfs.join(p.trim_start_matches('/'));
    assert_eq!(mode(&in_root("/nix/store")), 0o755);
    assert_eq!(mode(&in_root(&format!("{hello}/bin/hello"))), 0o555);
    assert_eq!(mode(&in_root(&format!("{hello}/bin"))), 0o555);
    assert_eq!(std::fs::metadata(in_root(&format!("{hello}/bin/hello"))).unwrap().mtime(), 1);
    assert_eq!(std::fs::read(in_root(&format!("{hello}/bin/hello"))).unwrap(), std::fs::read(format!("{hello}/bin/hello")).unwrap());
    // Awkward store contents survive exactly.
    assert_eq!(std::fs::read_link(in_root(&format!("{awkward}/dangling"))).unwrap(), Path::new("/nowhere/at/all"));
    assert_eq!(std::fs::read_link(in_root(&format!("{awkward}/hello"))).unwrap(), Path::new(&format!("{hello}/bin/hello")));
    let deep: String = (0..6).map(|i| format!("/deeply-nested-directory-{i}")).collect();
    assert_eq!(std::fs::read_to_string(in_root(&format!("{awkward}/share{deep}/file"))).unwrap(), "deep\n");
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    assert_eq!(std::fs::read(in_root(&awkward).join(latin1)).unwrap(), b"latin1");
    // Hard links become regular files, whatever the store's optimisation state.
    for name in ["a", "b"] {
        let meta = std::fs::metadata(in_root(&format!("{awkward}/{name}"))).unwrap();
        assert_eq!((meta.nlink(), std::fs::read_to_string(in_root(&format!("{awkward}/{name}"))).unwrap()), (1, "linked\n".to_owned()));
    }
}

#[test]
fn oci_layout_keeps_several_tags() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(dir.path(), &[], &format!("{hello}/bin/hello"));
    let layout = dir.path().join("layout");
    for (tag, codec) in [("gz", "gzip"), ("zst", "zstd"), ("plain", "none")] {
        run_ok(strata(&["build", spec.to_str().unwrap(), "--compress", codec, "-o", &format!("oci:{}:{tag}", layout.display())]));
    }
    for (tag, media_type) in [("gz", "tar+gzip"), ("zst", "tar+zstd"), ("plain", "tar")] {
        let raw = stdout_of(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{}:{tag}", layout.display())]));
        assert!(raw.contains(&format!("\"application/vnd.oci.image.layer.v1.{media_type}\"")), "{tag}: {raw}");
    }
    // Rebuilding a tag replaces it rather than adding a second entry.
    run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}:gz", layout.display())]));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
}

#[test]
fn oci_archives_are_read_by_skopeo_and_run_by_podman() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(dir.path(), &[], &format!("{hello}/bin/hello"));
    for codec in ["gzip", "zstd"] {
        let archive = dir.path().join(format!("image-{codec}.tar"));
        let reference = format!("oci-archive:{}:{codec}", archive.display());
        run_ok(strata(&["build", spec.to_str().unwrap(), "--compress", codec, "-o", &reference]));
        let inspect: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &reference]))).unwrap();
        assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
        let image = format!("localhost/strata-test-oci-archive:{codec}");
        run_ok(Command::new("skopeo").args(["copy", &reference, &format!("containers-storage:{image}")]));
        assert_eq!(run_in("podman", &image, &[]), "Hello, world!\n");
        remove_images("podman", &[&image]);
    }
}

/// A zstd layer is a frame a 2 MiB block: zstd's own tool counts the frames and checks each,
/// and podman (through skopeo and containers-storage) reads the whole file back.
#[test]
fn zstd_layers_of_many_frames_are_read_whole() {
    let (busybox, bulky) = (fixture("busybox"), fixture("bulky"));
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(dir.path(), &[&bulky], &format!("{busybox}/bin/sh"));
    let layout = dir.path().join("layout");
    let reference = format!("oci:{}:zstd", layout.display());
    run_ok(strata(&["build", spec.to_str().unwrap(), "--compress", "zstd", "-o", &reference, "--no-cache"]));
    let mut frames = Vec::new();
    for blob in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let blob = blob.unwrap().path();
        if std::fs::read(&blob).unwrap().starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            run_ok(Command::new("zstd").arg("-tq").arg(&blob));
            let listing = stdout_of(Command::new("zstd").arg("-l").arg(&blob));
            frames.push(listing.lines().nth(1).and_then(|l| l.split_whitespace().next()).unwrap().parse::<u32>().unwrap());
        }
    }
    // 26 MiB of numbers: at least 13 frames.
    assert!(frames.iter().any(|&n| n >= 13), "frames per layer: {frames:?}");
    let image = "localhost/strata-test-zstd-frames:1";
    run_ok(Command::new("skopeo").args(["copy", &reference, &format!("containers-storage:{image}")]));
    let count = run_in("podman", image, &["-c", &format!("{busybox}/bin/busybox wc -l < {bulky}/numbers")]);
    assert_eq!(count.trim(), "3500000");
    remove_images("podman", &[image]);
}

/// `--json` on build and copy: one object on standard output, agreeing with what skopeo
/// reads at the destination; refused when the image itself would go to standard output.
#[test]
fn json_reports_what_was_written() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(dir.path(), &[&hello], &format!("{hello}/bin/hello"));
    let layout = format!("oci:{}:json", dir.path().join("layout").display());
    let built: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["build", spec.to_str().unwrap(), "-o", &layout, "--json"]))).unwrap();
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &layout]))).unwrap();
    assert_eq!(built["destination"], layout.as_str());
    assert_eq!(built["manifest_digest"], inspect["Digest"]);
    let digests =
        |layers: &serde_json::Value, key: &str| -> Vec<String> { layers.as_array().unwrap().iter().map(|l| l[key].as_str().unwrap().to_owned()).collect() };
    // The manifest as skopeo reads it lists the same blobs, sizes and media types.
    let manifest: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", &layout]))).unwrap();
    assert_eq!(digests(&built["layers"], "digest"), digests(&manifest["layers"], "digest"));
    assert_eq!(digests(&built["layers"], "media_type"), digests(&manifest["layers"], "mediaType"));
    let sizes = |layers: &serde_json::Value| -> Vec<u64> { layers.as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).collect() };
    assert_eq!(sizes(&built["layers"]), sizes(&manifest["layers"]));
    let config = stdout_of(Command::new("skopeo").args(["inspect", "--raw", "--config", &layout]));
    assert_eq!(built["config_digest"], format!("sha256:{}", sha256_hex(config.trim_end().as_bytes())).as_str());

    // A copy keeps the config: the same config digest; a docker-archive has no manifest digest.
    let archive = format!("docker-archive:{}", dir.path().join("copy.tar").display());
    let copied: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["copy", &layout, &archive, "--json"]))).unwrap();
    assert_eq!(copied["config_digest"], built["config_digest"]);
    assert!(copied["manifest_digest"].is_null());
    assert_eq!(digests(&copied["layers"], "diff_id"), digests(&built["layers"], "diff_id"));

    let err = fails(strata(&["build", spec.to_str().unwrap(), "--json"]).stdout(std::process::Stdio::piped()));
    assert!(err.contains("--json prints to standard output"), "{err}");
}

/// A layout written from an empty layer cache given the previous release (`--previous`): a
/// layer whose tar the previous release holds (decoded and compared) is its blob, copied as
/// it is, here one skopeo compressed (other bytes than strata's); umoci reads the layout and
/// podman runs it. A previous release that lies about a layer gives nothing, and what was
/// read of its blob to check it is not left in the layout.
#[test]
fn layouts_take_unchanged_layers_from_the_previous_release() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |greeting: &str| {
        let hello = fixture_with("hello", &[("greeting", greeting)]);
        write_spec(dir.path(), &format!("{}.toml", greeting.len()), &format!("name = \"strata-test-taken\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"))
    };
    let (first, second) = (spec("Hello, first release!"), spec("Hello, the second release!"));
    let archive = dir.path().join("v1.tar");
    run_ok(strata(&["build", first.to_str().unwrap(), "-o", &format!("docker-archive:{}", archive.display())]));
    let previous = format!("oci:{}:v1", dir.path().join("by-skopeo").display());
    run_ok(Command::new("skopeo").args(["copy", "-q", "--dest-compress"]).arg(format!("docker-archive:{}", archive.display())).arg(&previous));
    let layers = |reference: &str| -> Vec<String> {
        let manifest: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", reference]))).unwrap();
        manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
    };
    let (taken, cold) = (format!("oci:{}:v2", dir.path().join("taken").display()), format!("oci:{}:v2", dir.path().join("cold").display()));
    let out = run_ok(
        strata(&["build", second.to_str().unwrap(), "-o", &taken, "--previous", &previous, "-v"]).env("STRATA_CACHE_DIR", dir.path().join("cache-taken")),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 taken from the previous release"), "{}", String::from_utf8_lossy(&out.stderr));
    run_ok(strata(&["build", second.to_str().unwrap(), "-o", &cold]).env("STRATA_CACHE_DIR", dir.path().join("cache-cold")));
    let (skopeos, taken_layers, cold_layers) = (layers(&previous), layers(&taken), layers(&cold));
    assert_eq!(taken_layers[0], skopeos[0], "the libc layer as skopeo compressed it");
    assert_ne!(taken_layers[0], cold_layers[0]);
    assert_eq!(taken_layers[1], cold_layers[1], "the changed layer made by strata");

    // The layer cache warm (it made both layers of the cold build), into a new layout: the
    // layers the previous release holds by the digests the cache knows are copied from it,
    // not compressed again; one not what its name says there is made again.
    let warm = |name: &str, previous: &str| {
        let reference = format!("oci:{}:v2", dir.path().join(name).display());
        let out = run_ok(
            strata(&["build", second.to_str().unwrap(), "-o", &reference, "--previous", previous, "-v"]).env("STRATA_CACHE_DIR", dir.path().join("cache-cold")),
        );
        assert_eq!(layers(&reference), cold_layers, "{name}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let log = warm("warm", &cold);
    assert!(log.contains("2 taken from the previous release"), "{log}");
    let corrupt = dir.path().join("cold/blobs/sha256").join(cold_layers[0].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&corrupt).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&corrupt, bytes).unwrap();
    let log = warm("warm-corrupt", &cold);
    assert!(log.contains("1 taken from the previous release") && log.contains("cannot be read"), "{log}");

    let unpacked = dir.path().join("unpacked");
    run_ok(Command::new("umoci").args(["unpack", "--rootless", "--image", taken.trim_start_matches("oci:")]).arg(&unpacked));
    let name = "localhost/strata-test-taken:v2";
    let _claim = ImageNames::claim(&[name]);
    run_ok(Command::new("skopeo").args(["copy", "-q", &taken, &format!("containers-storage:{name}")]));
    assert_eq!(run_in("podman", name, &[]), "Hello, the second release!\n");
    remove_images("podman", &[name]);

    let refused = format!("oci:{}:v2", dir.path().join("refused").display());
    let poisoned = poisoned_layout(dir.path(), &first);
    let out = run_ok(
        strata(&["build", second.to_str().unwrap(), "-o", &refused, "--previous", &poisoned, "-v"]).env("STRATA_CACHE_DIR", dir.path().join("cache-refused")),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 taken from the previous release"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(layers(&refused), cold_layers, "made again, not taken");
    let blobs = dir.path().join("refused/blobs/sha256");
    let names: Vec<String> = std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), cold_layers.len() + 2, "the layers, the config and the manifest, nothing else: {names:?}");
    for name in names {
        assert_eq!(sha256_hex(&std::fs::read(blobs.join(&name)).unwrap()), name, "a blob is what it is named");
    }
    assert_eq!(std::fs::read_dir(dir.path().join("refused")).unwrap().count(), 3, "oci-layout, index.json, blobs: no scratch left");
}
