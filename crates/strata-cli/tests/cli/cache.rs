//! The second build costs what changed: the layer cache (hit, miss, corrupt entry, `strata
//! cache`), on an OCI layout and a docker-archive stream; and images that are the same bytes
//! on one core and on all.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// strata with its layer cache in `cache`, logging at info level (what the tests read).
fn strata_cached(cache: &Path, args: &[&str]) -> Command {
    let mut cmd = strata(args);
    cmd.arg("-v").env("STRATA_CACHE_DIR", cache);
    cmd
}

fn stderr_of(mut cmd: Command) -> String {
    String::from_utf8(run_ok(&mut cmd).stderr).unwrap()
}

/// The manifest digest of an image in a layout, as skopeo reads it.
fn manifest_digest(layout: &str) -> String {
    stdout_of(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", layout])).trim().to_owned()
}

#[test]
fn a_second_build_takes_its_layers_from_the_cache() {
    let (app, bulky) = (fixture("hello"), fixture("bulky"));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let spec = write_spec(dir.path(), "s.toml", &format!("name = \"cached\"\ntag = \"1\"\nroots = [\"{app}\", \"{bulky}\"]\n"));
    let spec = spec.to_str().unwrap();
    let layout = format!("oci:{}:t", dir.path().join("layout").display());

    // Cold: every layer made. (hello, its glibc, bulky: three store paths, three layers.)
    let cold = stderr_of(strata_cached(&cache, &["build", spec, "-o", &layout]));
    assert!(cold.contains("0 of 3 layer blobs were there already"), "{cold}");
    let digest = manifest_digest(&layout);
    let shown = stdout_of(strata_cached(&cache, &["cache"]));
    assert!(shown.contains(&format!("{}\n3 entries", cache.display())), "{shown}");

    // Warm: nothing made, the same image.
    let warm = stderr_of(strata_cached(&cache, &["build", spec, "-o", &layout]));
    assert!(warm.contains("3 of 3 layer blobs were there already"), "{warm}");
    assert_eq!(manifest_digest(&layout), digest);

    // Corrupt entries: misses, the layers made again, the same digests; the layout still reads.
    for entry in walk(&cache.join("layers-v1")) {
        std::fs::write(&entry, b"{\"key\": \"garbage\"").unwrap();
    }
    let repaired = stderr_of(strata_cached(&cache, &["build", spec, "-o", &layout]));
    assert!(repaired.contains("0 of 3 layer blobs were there already") && repaired.contains("is corrupt; removed"), "{repaired}");
    assert_eq!(manifest_digest(&layout), digest);
    run_ok(Command::new("umoci").args(["stat", "--image", &layout[4..]]));

    // A docker-archive stream: hashed once, then only copied; the same bytes either way.
    let stream = |name: &str| {
        let out = dir.path().join(name);
        let log = stderr_of(strata_cached(&cache, &["build", spec, "-o", &format!("docker-archive:{}", out.display())]));
        (std::fs::read(out).unwrap(), log)
    };
    let (first, log) = stream("a.tar");
    assert!(log.contains("0 of 3 layers known to the layer cache"), "{log}");
    let (second, log) = stream("b.tar");
    assert!(log.contains("3 of 3 layers known to the layer cache"), "{log}");
    assert_eq!(first, second);

    // A changed store path is a miss for its layer only.
    let other_app = fixture_with("hello", &[("greeting", "Hello from the cache test")]);
    let changed = write_spec(dir.path(), "c.toml", &format!("name = \"cached\"\ntag = \"1\"\nroots = [\"{other_app}\", \"{bulky}\"]\n"));
    let log = stderr_of(strata_cached(&cache, &["build", changed.to_str().unwrap(), "-o", &layout]));
    assert!(log.contains("2 of 3 layer blobs were there already"), "{log}");

    let cleared = stdout_of(strata_cached(&cache, &["cache", "clear"]));
    // Three layers in gzip and as plain tars, and the changed hello's gzip.
    assert!(cleared.starts_with("7 entries removed"), "{cleared}");
    assert!(stdout_of(strata_cached(&cache, &["cache", "show"])).contains("\n0 entries"));
}

/// gzip and zstd in blocks, and the uncompressed stream (its layers hashed two at a time by
/// helpers when there are cores for them): the same bytes whether strata has one core or all.
#[test]
fn images_are_the_same_bytes_on_one_core_and_on_all() {
    let (app, bulky, twins) = (fixture("toyApp"), fixture("bulky"), fixture("twins"));
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "s.toml", &format!("name = \"cores\"\ntag = \"1\"\nroots = [\"{app}\", \"{bulky}\", \"{twins}\"]\n"));
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(cores > 1, "this test needs a machine with more than one core");
    for codec in ["none", "gzip", "zstd"] {
        let mut digests = Vec::new();
        for one_core in [true, false] {
            let layout = format!("oci:{}:t", dir.path().join(format!("{codec}-{one_core}")).display());
            // A fresh cache each time: every layer is hashed and compressed here, none remembered.
            let cache = tempfile::tempdir().unwrap();
            let args = match codec {
                "none" => vec!["build", spec.to_str().unwrap()],
                _ => vec!["build", spec.to_str().unwrap(), "-o", &layout, "--compress", codec],
            };
            let mut cmd = if one_core {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", "0", STRATA]).args(&args);
                cmd
            } else {
                strata(&args)
            };
            let out = run_ok(cmd.env("STRATA_CACHE_DIR", cache.path()));
            digests.push(if codec == "none" { sha256_hex(&out.stdout) } else { manifest_digest(&layout) });
        }
        assert_eq!(digests[0], digests[1], "{codec}: one core and {cores} cores gave other bytes");
    }
}

/// The files below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir).into_iter().map(|e| e.unwrap()).filter(|e| e.file_type().is_file()).map(|e| e.into_path()).collect()
}
