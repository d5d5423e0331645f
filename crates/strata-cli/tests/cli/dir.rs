//! skopeo's `dir:` format (#16: nix2container's copyTo takes skopeo's destinations): written
//! by strata and read by skopeo, written by skopeo and read by strata, replaced in one step,
//! and never written over a directory that holds something else.

use std::process::Command;

use crate::common::*;

#[test]
fn dir_images_go_both_ways_with_skopeo() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "s.toml", &format!("name = \"dirred\"\ntag = \"1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let target = dir.path().join("image");
    let dest = format!("dir:{}", target.display());
    let written: serde_json::Value = serde_json::from_slice(&run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &dest, "--json"])).stdout).unwrap();
    assert_eq!(std::fs::read_to_string(target.join("version")).unwrap(), "Directory Transport Version: 1.1\n");
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &dest]))).unwrap();
    assert_eq!(inspect["Digest"], written["manifest_digest"]);
    let archive = dir.path().join("from-dir.tar");
    run_ok(Command::new("skopeo").args(["copy", "-q", &dest]).arg(format!("docker-archive:{}:dirred:1", archive.display())));
    run_ok(Command::new("podman").arg("load").arg("-i").arg(&archive));
    assert_eq!(run_in("podman", "dirred:1", &[]), "Hello, world!\n");
    remove_images("podman", &["dirred:1"]);

    // Written again: replaced whole (a layer of the old image would be left otherwise).
    std::fs::write(&spec, format!("name = \"dirred\"\ntag = \"1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\nCmd = [\"again\"]\n")).unwrap();
    run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &dest]));
    let files = std::fs::read_dir(&target).unwrap().count();
    assert_eq!(files, 2 + 2 + 1, "two layers, the config, manifest.json and version: nothing of the old image");
    assert!(names_in(dir.path()).iter().all(|n| !n.ends_with(".partial")), "{:?}", names_in(dir.path()));

    // A directory holding something else is refused, and left as it was.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let stderr = fails(&mut strata(&["build", spec.to_str().unwrap(), "-o", &format!("dir:{}", other.display())]));
    assert!(stderr.contains("is not a dir: image"), "{stderr}");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);

    // skopeo's own dir: images are read: copied by strata into podman.
    let skopeos = dir.path().join("skopeos");
    run_ok(Command::new("skopeo").args(["copy", "-q"]).arg(format!("docker-archive:{}", archive.display())).arg(format!("dir:{}", skopeos.display())));
    // skopeo's name for podman's storage is taken too.
    run_ok(strata(&["copy", &format!("dir:{}", skopeos.display()), "containers-storage:from-skopeo:1"]));
    assert_eq!(run_in("podman", "from-skopeo:1", &[]), "Hello, world!\n");
    remove_images("podman", &["from-skopeo:1"]);
}
