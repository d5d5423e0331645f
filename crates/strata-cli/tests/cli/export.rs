//! `strata export` and the Nix library's `dockerTools.exportImage`: an image's file system as
//! one tar, checked against the Docker engine's own `docker export` of the same image.

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::*;

/// The entries of a plain tar: path (no leading `./` or `/`, no trailing `/`) to (type, mode,
/// uid, gid, link target, bytes).
type Entries = BTreeMap<String, (u8, u32, u64, u64, Option<Vec<u8>>, Vec<u8>)>;

fn entries_of(tar_bytes: &[u8]) -> Entries {
    let mut entries = BTreeMap::new();
    for entry in tar::Archive::new(tar_bytes).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8_lossy(&entry.path_bytes()).trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_owned();
        let h = entry.header().clone();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if !path.is_empty() {
            entries.insert(path, (h.entry_type().as_byte(), h.mode().unwrap() & 0o7777, h.uid().unwrap(), h.gid().unwrap(), link, data));
        }
    }
    entries
}

/// An image with whiteouts made by the Docker engine (a file and a directory removed over a
/// strata image, one added): strata's export is the file system Docker's own export of a
/// container of it shows, bar what Docker adds to every container.
#[test]
fn export_matches_docker_export() {
    let base = nixlib_build("dtRunAsRoot");
    let _claim = ImageNames::claim(&["run-as-root:v1"]);
    run_ok(Command::new("docker").arg("load").stdin(std::fs::File::open(&base).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("strata-export-test:{}", nonce());
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM run-as-root:v1\nRUN /bin/busybox rm /bin/cat && /bin/busybox rm -r /data && /bin/busybox mkdir -p /new/dir && echo made > /new/dir/file\n",
    )
    .unwrap();
    run_ok(Command::new("docker").args(["build", "--network", "none", "-q", "-t", &tag]).arg(dir.path()));
    let archive = dir.path().join("image.tar");
    run_ok(Command::new("docker").args(["save", "-o"]).arg(&archive).arg(&tag));

    let exported = dir.path().join("fs.tar");
    run_ok(strata(&["export", &format!("docker-archive:{}", archive.display()), "-o", exported.to_str().unwrap()]));
    let ours = entries_of(&std::fs::read(&exported).unwrap());
    let container = stdout_of(Command::new("docker").args(["create", "--network", "none", &tag]));
    let theirs = run_ok(Command::new("docker").args(["export", container.trim()])).stdout;
    let _ = Command::new("docker").args(["rm", "-f", container.trim()]).output();
    remove_images("docker", &[&tag, "run-as-root:v1"]);
    let theirs = entries_of(&theirs);

    assert!(!ours.contains_key("bin/cat") && !ours.keys().any(|k| k == "data" || k.starts_with("data/")), "whiteouts applied");
    assert_eq!(ours.get("new/dir/file").map(|e| e.5.clone()), Some(b"made\n".to_vec()));
    assert!(ours.contains_key("bin/busybox") && ours.contains_key("bin/sh"));
    // Docker adds the container's own files: /.dockerenv, /etc/{hosts,hostname,resolv.conf,mtab},
    // the mount points /dev, /proc, /sys and what they need.
    let docker_adds = |path: &str| {
        [".dockerenv", "etc", "etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/mtab", "dev", "proc", "sys"].contains(&path) || path.starts_with("dev/")
    };
    let theirs: Entries = theirs.into_iter().filter(|(path, _)| !docker_adds(path)).collect();
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (path, (kind, mode, uid, gid, link, data)) in &ours {
        let (their_kind, their_mode, their_uid, their_gid, their_link, their_data) = &theirs[path];
        assert_eq!((kind, mode, uid, gid, link, data), (their_kind, their_mode, their_uid, their_gid, their_link, their_data), "{path}");
    }
}

/// dockerTools.exportImage: the tar holds the image's files, owners and modes as the image
/// has them; `strata export` of a spec gives the same file system.
#[test]
fn export_image_in_nix() {
    let exported = nixlib_build("exported");
    assert!(exported.ends_with("-run-as-root.tar"), "{exported}");
    let bytes = std::fs::read(&exported).unwrap();
    let names: Vec<String> = tar::Archive::new(&bytes[..]).entries().unwrap().map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned()).collect();
    assert!(names.iter().all(|n| n.starts_with("./")) && names.contains(&"./bin/busybox".to_owned()), "named as dockerTools names them: {names:?}");
    let entries = entries_of(&bytes);
    let data = &entries["data"];
    assert_eq!((data.0, data.2, data.3), (b'5', 1000, 100), "a directory of uid 1000, gid 100");
    assert!(entries.contains_key("bin/busybox"));
    let again = run_ok(strata(&["export", &nixlib_build("dtRunAsRoot")])).stdout;
    assert_eq!(entries_of(&again), entries);
    // A terminal is no place for a tar; a missing image names itself.
    let message = fails(&mut strata(&["export", "docker-archive:/nonexistent/image.tar", "-o", "/tmp/strata-export-never.tar"]));
    assert!(message.contains("/nonexistent/image.tar"), "{message}");
    assert!(!std::path::Path::new("/tmp/strata-export-never.tar").exists());
}
