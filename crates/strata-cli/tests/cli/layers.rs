//! What goes in which layer, and that the same spec always gives the same bytes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Store paths (`/nix/store/<name>`) that have entries in a layer.
fn store_paths_in(layer: &std::collections::BTreeMap<String, EntryInfo>) -> BTreeSet<String> {
    layer.keys().filter_map(|k| k.strip_prefix("nix/store/")).map(|k| k.split('/').next().unwrap().to_owned()).collect()
}

fn base(path: &str) -> String {
    path.trim_start_matches("/nix/store/").to_owned()
}

/// Every file below `dir`, relative, with its bytes.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        out.push((entry.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&entry).unwrap()));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

#[test]
fn same_spec_in_different_directories_gives_identical_bytes() {
    let (hello, awkward) = (fixture("hello"), fixture("awkward"));
    let spec_text = format!("name = \"repro\"\nroots = [\"{awkward}\"]\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n");
    let builds: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &builds {
        let spec = write_spec(dir.path(), "spec.toml", &spec_text);
        let d = dir.path().display();
        for dest in [format!("docker-archive:{d}/image.tar"), format!("oci-archive:{d}/gzip.tar"), format!("oci:{d}/layout")] {
            run_ok(strata(&["build", "spec.toml", "-o", &dest]).current_dir(dir.path()));
        }
        run_ok(strata(&["build", spec.to_str().unwrap(), "--compress", "zstd", "-o", &format!("oci-archive:{d}/zstd.tar")]));
    }
    let (a, b) = (builds[0].path(), builds[1].path());
    for file in ["image.tar", "gzip.tar", "zstd.tar"] {
        assert!(std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(), "{file} differs between builds");
    }
    assert_eq!(tree(&a.join("layout")), tree(&b.join("layout")));
    // Without a tag, the tag is derived from the content.
    let tags = read_archive(&a.join("image.tar")).manifest[0]["RepoTags"][0].as_str().unwrap().to_owned();
    assert!(tags.starts_with("repro:") && tags.len() == "repro:".len() + 32, "{tags}");
}

#[test]
fn tar_entries_are_deterministic_and_perms_apply() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "spec.toml",
        &format!(
            "name = \"perms\"\ncreated = \"2024-05-01T12:00:00Z\"\nroots = [\"{hello}\"]\n\
             [[perms]]\npath = \"{hello}/bin/hello\"\nmode = \"0750\"\nuid = 1000\ngid = 100\n\
             [[perms]]\nregex = \"{hello}(/.*)?/bin\"\nmode = \"0700\"\n"
        ),
    );
    let archive = read_archive(&build_archive(dir.path(), &spec));
    let created = 1714564800;
    let entries: Vec<(&String, &EntryInfo)> = archive.layers.iter().flat_map(|l| l.iter()).collect();
    assert!(entries.iter().all(|(_, e)| e.mtime == created), "every mtime is `created`");
    let hello_entry = entries.iter().find(|(k, _)| k.ends_with("/bin/hello")).unwrap().1;
    assert_eq!((hello_entry.mode, hello_entry.uid), (0o750, 1000));
    let bin = entries.iter().find(|(k, _)| k.ends_with("hello-2.12/bin")).unwrap().1;
    assert_eq!((bin.mode, bin.uid), (0o700, 0));
    for layer in &archive.layers {
        let first: Vec<&String> = layer.keys().take(2).collect();
        assert_eq!(first, ["nix", "nix/store"]);
        assert_eq!((layer["nix/store"].mode, layer["nix"].uid), (0o755, 0));
    }
}

#[test]
fn layer_count_never_exceeds_max_layers() {
    let (chain, hello) = (fixture("chain"), fixture("hello"));
    let dir = tempfile::tempdir().unwrap();
    let mut all_paths = None;
    for max_layers in [1, 2, 4, 13, 100] {
        let spec = write_spec(dir.path(), "spec.toml", &format!("name = \"budget\"\nmax_layers = {max_layers}\nroots = [\"{chain}\", \"{hello}\"]\n"));
        let archive = read_archive(&build_archive(dir.path(), &spec));
        assert!(archive.layers.len() <= max_layers, "{} layers for max_layers = {max_layers}", archive.layers.len());
        let per_layer: Vec<BTreeSet<String>> = archive.layers.iter().map(store_paths_in).collect();
        let union: BTreeSet<String> = per_layer.iter().flatten().cloned().collect();
        assert_eq!(per_layer.iter().map(BTreeSet::len).sum::<usize>(), union.len(), "a store path repeats");
        assert_eq!(union.len(), 14, "12 chain paths, hello, glibc");
        assert_eq!(*all_paths.get_or_insert_with(|| union.clone()), union);
    }
}

#[test]
fn explicit_layers_hold_their_closures_and_nothing_repeats() {
    let (hello, glibc, chain, tree) = (fixture("hello"), fixture("glibc"), fixture("chain"), fixture("workingDir"));
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "spec.toml",
        &format!(
            "name = \"explicit\"\nroots = [\"{chain}\"]\n\
             [[layers]]\nroots = [\"{glibc}\"]\n\
             [[layers]]\nroots = [\"{hello}\"]\ncopy_to_root = [\"{tree}\"]\n\
             [config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"
        ),
    );
    let archive = read_archive(&build_archive(dir.path(), &spec));
    let layers: Vec<BTreeSet<String>> = archive.layers.iter().map(store_paths_in).collect();
    assert_eq!(layers[0], [base(&glibc)].into());
    assert_eq!(layers[1], [base(&hello)].into(), "glibc is not repeated");
    assert!(archive.layers[1].contains_key("working-dir/my-file"), "the layer's tree is laid over /");
    let rest: BTreeSet<String> = layers[2..].iter().flatten().cloned().collect();
    assert_eq!(rest.len(), 12);
    assert!(!rest.contains(&base(&hello)) && !rest.contains(&base(&glibc)));
}

/// A changed path changes its own layer only: the other layers keep their digests.
#[test]
fn a_changed_path_leaves_other_layers_unchanged() {
    let diff_ids = |greeting: &str| {
        let hello = fixture_with("hello", &[("greeting", greeting)]);
        let dir = tempfile::tempdir().unwrap();
        let spec = write_spec(dir.path(), "spec.toml", &format!("name = \"stable\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
        let out = dir.path().join("layout");
        run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}:t", out.display())]));
        let config = stdout_of(std::process::Command::new("skopeo").args(["inspect", "--config", &format!("oci:{}:t", out.display())]));
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let (before, after) = (diff_ids("Hello, world!"), diff_ids("Hello, strata!"));
    assert_eq!(before.len(), 2);
    assert_eq!(before[0], after[0], "glibc's layer is unchanged");
    assert_ne!(before[1], after[1], "hello's layer changed");
}

/// The same specs give the same bytes, release after release: the digests of images made of
/// toy store paths (which depend on nothing of the host) are pinned here. A change to any of
/// them changes every image users have built: it must be on purpose. (They changed on
/// purpose in #12: gzip on every core in fixed blocks, and history comments that name every
/// store path of a layer in full, which `--previous` reads; and again for gzip, made by
/// libdeflate at level 5 since; and for zstd, a frame a block since, no longer zstd's
/// multi-threaded mode.)
#[test]
fn digests_of_toy_images_are_pinned() {
    let (app, etc) = (fixture("toyApp"), fixture("toyEtc"));
    let dir = tempfile::tempdir().unwrap();
    let plain = write_spec(dir.path(), "plain.toml", &format!("name = \"toy\"\ntag = \"1\"\nroots = [\"{app}\"]\n"));
    let rich = write_spec(
        dir.path(),
        "rich.toml",
        &format!(
            "name = \"toy\"\ntag = \"2\"\ncreated = \"2024-05-06T07:08:09+02:00\"\ncopy_to_root = [\"{etc}\"]\nmax_layers = 3\n\
             [[perms]]\nregex = \"/nix/store/[^/]*-toy-app-1.0/bin/.*\"\nmode = \"0700\"\nuid = 1000\n\
             [config]\nEntrypoint = [\"{app}/bin/app\"]\nEnv = [\"A=1\"]\nExposedPorts = {{ \"80/tcp\" = {{}} }}\nLabels = {{ l = \"v\" }}\n"
        ),
    );
    // Read back by skopeo: the config's digest in a docker-archive, the manifest's in a layout.
    let config_digest = |r: &str| stdout_of(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", r]));
    let mut digests = Vec::new();
    for spec in [&plain, &rich] {
        let name = spec.file_name().unwrap().to_string_lossy().into_owned();
        run_ok(strata(&["build", spec.to_str().unwrap(), "-o", "docker-archive:x.tar"]).current_dir(dir.path()));
        let config = stdout_of(Command::new("skopeo").args(["inspect", "--config", "--raw", &format!("docker-archive:{}/x.tar", dir.path().display())]));
        std::fs::write(dir.path().join("config.json"), config.trim_end()).unwrap();
        let hex = stdout_of(Command::new("sha256sum").arg(dir.path().join("config.json")));
        digests.push(format!("{name} docker-archive config sha256:{}", hex.split_whitespace().next().unwrap()));
        for codec in ["none", "gzip", "zstd"] {
            let layout = format!("oci:{}:{codec}", dir.path().join("layout").display());
            run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &layout, "--compress", codec]));
            digests.push(format!("{name} oci {codec} manifest {}", config_digest(&layout).trim()));
        }
    }
    let expected = [
        "plain.toml docker-archive config sha256:a7c2b9ccb665fa8873c773f871b34c21fe5a7447064518d3744bf0d95d3d4abc",
        "plain.toml oci none manifest sha256:cf382a7090d881a35ca301bc889f23b4ab2c113a9d489a581b0fd567b01f200f",
        "plain.toml oci gzip manifest sha256:dcb3692d28b6c9612c6f498de7c6c1748ab1229b1da017afd8f2c703bb6e0a54",
        "plain.toml oci zstd manifest sha256:28d5cf4bf43f347689c6b619e77ffea1342a0e0915562ad856ab83fc5e41a74c",
        "rich.toml docker-archive config sha256:110257078c5d6e6c9d83d4cd02a3569cf6299fcddf54ebf865dc55ec8a837809",
        "rich.toml oci none manifest sha256:9c80c42636bc91cbdaec55991e82f0940ba897e07d0fec35661a6aa52956d9de",
        "rich.toml oci gzip manifest sha256:859179238debd415701b87cfeb924684f8dba4dda159f7380a7835f2b75f45f8",
        "rich.toml oci zstd manifest sha256:a34cf4f47f90d0c040cd41a88b45fa07113d071e7150a02e525e653a8ae3b020",
    ];
    assert_eq!(digests, expected);
}

/// Files with the same bytes are written once per layer, the others as hard links to the first
/// (whether or not the store has them linked): podman and docker make them one inode with
/// the right bytes.
#[test]
fn identical_files_are_one_file_in_the_image() {
    let (busybox, twins) = (fixture("busybox"), fixture("twins"));
    let dir = tempfile::tempdir().unwrap();
    let name = format!("strata-twins-{}", nonce());
    let spec = write_spec(
        dir.path(),
        "twins.toml",
        &format!("name = \"{name}\"\ntag = \"t\"\nroots = [\"{busybox}\", \"{twins}\"]\n[config]\nEntrypoint = [\"{busybox}/bin/sh\", \"-c\"]\n"),
    );
    let archive = build_archive(dir.path(), &spec);
    let store_name = twins.trim_start_matches('/');
    let mut layers = read_archive(&archive).layers;
    let mut entry = |file: &str| layers.iter_mut().find_map(|l| l.remove(&format!("{store_name}/{file}"))).unwrap();
    let (a, b, c) = (entry("a"), entry("b"), entry("c"));
    assert_eq!((a.kind, a.data.len(), c.kind), (tar::EntryType::Regular, 70000, tar::EntryType::Regular));
    assert_eq!((b.kind, b.link, b.data.len()), (tar::EntryType::Link, Some(format!("{store_name}/a").into_bytes()), 0));
    for engine in ["podman", "docker"] {
        let out = load_and_run(engine, &archive, &format!("{name}:t"), &[&format!("cd {twins} && stat -c '%n %h %s' a b c && md5sum a b c")]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..3], ["a 2 70000", "b 2 70000", "c 1 70000"], "{engine}: {out}");
        let sums: Vec<&str> = lines[3..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
        let host = stdout_of(Command::new("md5sum").arg(format!("{twins}/a")));
        assert_eq!((sums[0], sums[0] == sums[1], sums[0] == sums[2]), (host.split_whitespace().next().unwrap(), true, false), "{engine}: {out}");
    }
}

/// #12: `--previous IMAGE` keeps the layers of an earlier release whose store paths are all
/// still in the image, digest and all; new paths are planned around them. The history names
/// every store path of a layer (that is what `--previous` reads). (bench/layering compares
/// this with planning from scratch over a series of releases.)
#[test]
fn layers_of_the_previous_release_are_kept() {
    let (hello, chain, busybox) = (fixture("hello"), fixture("chain"), fixture("busybox"));
    let dir = tempfile::tempdir().unwrap();
    let layout = |tag: &str| format!("oci:{}:{tag}", dir.path().join("layout").display());
    let spec = |name: &str, roots: &[&str]| {
        let roots = roots.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
        write_spec(dir.path(), name, &format!("name = \"release\"\nroots = [{roots}]\nmax_layers = 8\n"))
    };
    let v1 = spec("v1.toml", &[&hello, &chain]);
    let v2 = spec("v2.toml", &[&hello, &chain, &busybox]);
    let build = |spec: &Path, tag: &str, extra: &[&str]| run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &layout(tag)]).args(extra));
    let layers = |tag: &str| -> Vec<String> {
        let inspect: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &layout(tag)]))).unwrap();
        inspect["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect()
    };
    build(&v1, "v1", &[]);
    build(&v2, "v2", &["--previous", &layout("v1")]);
    let (first, second) = (layers("v1"), layers("v2"));
    assert_eq!(first.len(), 8, "14 store paths, 8 layers at most: some share a layer");
    assert_eq!(second.len(), 8);
    let shared = |a: &[String], b: &[String]| a.iter().filter(|l| b.contains(l)).count();
    // A layer for busybox: the two smallest layers of v1 merged, the other six kept as they were.
    assert_eq!(shared(&first, &second), 6, "v1 {first:?}\nv2 {second:?}");
    // Given itself, a release is planned as it was.
    build(&v2, "v2-again", &["--previous", &layout("v2")]);
    assert_eq!(layers("v2-again"), second);

    // The history names each layer's store paths in full (hash and name).
    let config = stdout_of(Command::new("skopeo").args(["inspect", "--config", &layout("v1")]));
    let base_name = |path: &str| path.trim_start_matches("/nix/store/").to_owned();
    assert!(config.contains(&base_name(&hello)) && config.contains(&base_name(&chain)), "{config}");

    // An earlier image that cannot be read is a warning: the first release has none.
    let missing = layout("nothing-here");
    let out = run_ok(strata(&["build", v1.to_str().unwrap(), "-o", &layout("again"), "--previous", &missing]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("planning the layers from scratch"));
    assert_eq!(layers("again"), first);
}
