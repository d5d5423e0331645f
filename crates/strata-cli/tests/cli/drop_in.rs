//! #16: strata's drop-ins for nixpkgs' dockerTools and nix2container (`lib.dockerTools`,
//! `lib.nix2container`): the anchors' arguments with their meaning and defaults, checked
//! with the engines that run the images. Fixtures: `tests/fixtures/nixlib.nix`.

use std::process::Command;

use crate::common::*;

/// The store paths each layer of an image lists (strata's inspect reads them off the
/// history), bottom first.
fn layer_paths(image: &str) -> Vec<Vec<String>> {
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["inspect", image, "--json"]))).unwrap();
    let names =
        |l: &serde_json::Value| l["store_paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().split_once('-').unwrap().1.to_owned()).collect();
    inspect["layers"].as_array().unwrap().iter().map(names).collect()
}

/// Loads a docker-archive into Docker and runs it; returns standard output.
fn docker_run(archive: &str, image: &str) -> String {
    load_and_run("docker", std::path::Path::new(archive), image, &[])
}

/// dockerTools' `fakeRootCommands` shape the join of `contents` (symlinks into the store)
/// under fakeroot: the owners and modes they set hold in the image, after `extraCommands`.
#[test]
fn fake_root_commands_set_owners() {
    let archive = tempfile::NamedTempFile::new().unwrap();
    run_ok(Command::new(nixlib_build("dtFakeRoot")).stdout(archive.reopen().unwrap()));
    let out = docker_run(&archive.path().display().to_string(), "fake-root:v1");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].contains(" 1000 ") && lines[0].contains(" 100 ") && lines[0].ends_with("/data"), "{out}");
    assert!(lines[1].starts_with("drwxrwxrwt") && lines[1].ends_with("/tmp"), "{out}");
    assert_eq!(lines[2], "shaped", "{out}");
    assert!(lines[3].contains("/bin/sh -> /nix/store/") && lines[3].ends_with("-busybox-1.35/bin/sh"), "{out}");
}

/// `enableFakechroot`: the commands see the image's tree as / (with the store), and write
/// /etc/passwd and a home of their user; buildImage's `runAsRoot` runs the same way over a
/// copy of copyToRoot (one layer, as dockerTools makes it), no VM.
#[test]
fn fakechroot_and_run_as_root_see_the_image_as_root() {
    let out = docker_run(&nixlib_build("dtFakechroot"), "fake-chroot:v1");
    assert!(out.starts_with("drwxr-xr-x") && out.lines().next().unwrap().contains(" 1000 ") && out.contains("/home/app\n"), "{out}");
    assert!(out.ends_with("app:x:1000:100::/home/app:/bin/sh\n"), "{out}");

    let archive = nixlib_build("dtRunAsRoot");
    let layers = layer_paths(&archive);
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert!(
        layers[0].contains(&"show-data".to_owned()) && layers[1].is_empty(),
        "the store paths (the command's, what copyToRoot links to) in one layer, then copyToRoot copied, shaped and laid over / in one: {layers:?}"
    );
    let out = docker_run(&archive, "run-as-root:v1");
    assert!(out.starts_with("drwxr-xr-x") && out.contains(" 1000 ") && out.contains(" 100 ") && out.trim_end().ends_with("/data"), "{out}");
}

/// The anchors' layer budgets: dockerTools' buildImage puts its store paths in one layer
/// (strata's own spreads them); streamLayeredImage's maxLayers counts the customisation
/// layer; nix2container's default maxLayers = 1 gives the image's own paths one layer beside
/// its buildLayer layers, and its created time is 0001-01-01.
#[test]
fn layer_budgets_follow_the_anchors() {
    assert_eq!(layer_paths(&nixlib_build("dtOneLayer")), vec![vec!["glibc-2.36".to_owned(), "hello-2.12".to_owned()]]);
    assert_eq!(layer_paths(&nixlib_build("strataManyLayers")).len(), 2, "strata's buildImage: a layer a path here");
    let two = layer_paths(&nixlib_build("dtTwoLayers"));
    assert_eq!(two.len(), 2, "{two:?}");
    assert_eq!(two[0].len(), 3, "busybox, glibc and hello in one store layer: {two:?}");

    let description = nixlib_build("n2cDefaults");
    assert_eq!(layer_paths(&description), vec![vec!["busybox-1.35".to_owned()], vec!["glibc-2.36".to_owned(), "hello-2.12".to_owned()]]);
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["inspect", &description, "--json"]))).unwrap();
    assert_eq!(inspect["config"]["created"], "0001-01-01T00:00:00Z");
    assert_eq!(nixlib_eval("n2cDefaults.imageRefUnsafe").trim(), r#""n2c-defaults:v1""#);
    // buildLayer's perms apply in the layer (and so in its recorded digests).
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("n2c.tar");
    run_ok(strata(&["stream", &description, "-o", &format!("docker-archive:{}", archive.display())]));
    let layers = read_archive(&archive).layers;
    let busybox = layers[0].iter().find(|(path, _)| path.ends_with("-busybox-1.35/bin/busybox")).expect("busybox in the first layer").1;
    assert_eq!(busybox.mode & 0o7777, 0o700);
}

/// Layered images' uid/gid/uname/gname own the store (nixpkgs: so Nix can run as that user);
/// includeStorePaths = false leaves the customisation layer alone.
#[test]
fn layered_owners_and_store_paths() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("owner.tar");
    run_ok(Command::new(nixlib_build("dtStoreOwner")).stdout(std::fs::File::create(&archive).unwrap()));
    let layers = read_archive(&archive).layers;
    let store = &layers[0];
    for path in ["nix/store", "nix/store/9l3h83vvx1qih2b4laj7fdsylkfnlkkv-busybox-1.35/bin/busybox"] {
        let entry = store.get(path).unwrap_or_else(|| panic!("{path} not in {:?}", store.keys().collect::<Vec<_>>()));
        assert_eq!((entry.uid, entry.gid, entry.names.clone()), (1000, 100, ("app".to_owned(), "users".to_owned())), "{path}");
    }
    let links = &layers[1];
    assert!(links.values().all(|e| (e.uid, e.gid) == (0, 0)), "what is linked from / stays root's");

    let archive = dir.path().join("no-store.tar");
    run_ok(Command::new(nixlib_build("dtNoStore")).stdout(std::fs::File::create(&archive).unwrap()));
    let layers = read_archive(&archive).layers;
    assert_eq!(layers.len(), 1);
    assert!(layers[0].contains_key("tmp") && layers[0].contains_key("bin/sh"), "{:?}", layers[0].keys().collect::<Vec<_>>());
    assert!(!layers[0].keys().any(|k| k.starts_with("nix/store/")), "no store path");
}

/// nix2container's nixUid/nixGid: the Nix database and /nix/store are that user's.
#[test]
fn nix_uid_owns_the_store_and_database() {
    let runner = format!("{}/bin/copy-to-podman", nixlib_build("n2cNixUser.copyToPodman"));
    run_ok(&mut Command::new(runner));
    let out = run_in("podman", "n2c-nix-user:v1", &[]);
    for (line, path) in out.lines().zip(["/nix/store", "/nix/var/nix/db/db.sqlite"]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((fields[2], fields[3], *fields.last().unwrap()), ("1000", "100", path), "{out}");
    }
    remove_images("podman", &["n2c-nix-user:v1"]);
}

/// What strata does not do is an evaluation error naming the function, the argument and
/// what to do instead.
#[test]
fn what_the_drop_ins_refuse_they_name() {
    for (attr, expected) in [
        ("badStrataArg", "strata.dockerTools.buildImage: no argument `maxLayers` (strata.buildImage takes it)"),
        ("badFakeroot", "`fakeRootCommands` needs fakeroot from nixpkgs: import strata's library with your nixpkgs"),
    ] {
        let out = nixlib_command("nix-instantiate", attr).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{attr} evaluated");
        assert!(stderr.contains(expected), "{attr}: {expected:?} not in {stderr}");
    }
}

/// nix2container's buildLayer: `metadata` is the layer's history entry, `ignore` leaves a path
/// to the image's own layer, and a layer built on another brings it along, below it.
#[test]
fn build_layer_metadata_ignore_and_nesting() {
    let description = nixlib_build("n2cMetadata");
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["inspect", &description, "--json"]))).unwrap();
    let history = inspect["config"]["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(
        (&history[0]["created_by"], &history[0]["comment"]),
        (&"nix2container".into(), &format!("store paths: {}", fixture("busybox").trim_start_matches("/nix/store/")).into())
    );
    assert_eq!(
        history[1],
        serde_json::json!({ "created": "0001-01-01T00:00:00Z", "created_by": "test created_by", "author": "test author", "comment": "test comment" })
    );
    let layers = layer_paths(&description);
    assert_eq!(layers[2], vec!["glibc-2.36".to_owned()], "the ignored glibc is in the image's own layer: {layers:?}");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("n2c.tar");
    run_ok(strata(&["stream", &description, "-o", &format!("docker-archive:{}", archive.display())]));
    let read = read_archive(&archive).layers;
    assert!(
        read[1].keys().any(|k| k.ends_with("-hello-2.12/bin/hello")) && !read[1].keys().any(|k| k.contains("glibc")),
        "{:?}",
        read[1].keys().collect::<Vec<_>>()
    );
}

/// buildImage's keepContentsDirlinks: `lib -> usr/lib` from one tree stays a link, and the
/// next tree's `lib/b` lands in /usr/lib beside the first tree's file.
#[test]
fn keep_contents_dirlinks_lays_trees_through_links() {
    let out = docker_run(&nixlib_build("dtDirlinks"), "dirlinks:v1");
    assert_eq!(out, "l\na\nb\n");
}

/// mergeImages: one docker-archive of several images; `docker load` loads each, and they run.
#[test]
fn merged_images_load_together() {
    let merged = nixlib_build("merged");
    let tag = nixlib_eval("helloDocker.imageTag");
    let hello = format!("hello-docker:{}", tag.trim().trim_matches('"'));
    let _claim = ImageNames::claim(&[&hello, "run-as-root:v1"]);
    let out = stdout_of(Command::new("docker").arg("load").stdin(std::fs::File::open(&merged).unwrap()));
    assert!(out.contains(&format!("Loaded image: {hello}")) && out.contains("Loaded image: run-as-root:v1"), "{out}");
    assert_eq!(run_in("docker", &hello, &[]), "Hello, world!\n");
    assert!(run_in("docker", "run-as-root:v1", &[]).trim_end().ends_with("/data"));
    remove_images("docker", &[&hello, "run-as-root:v1"]);
    // strata reads archives of one image, and says so of this one.
    let message = fails(&mut strata(&["inspect", &format!("docker-archive:{merged}")]));
    assert!(message.contains("describes 2 images; strata reads docker-archives of one"), "{message}");
}

/// runAsRoot over a base image (no VM): it sees the base's files, and its layer holds what it
/// changed, owners kept and a removed file whited out; three images each adding to a file
/// over the one before show their layers in order (nixpkgs' layersUnpackOrder).
#[test]
fn run_as_root_over_a_base_image() {
    let out = docker_run(&nixlib_build("dtRunAsRootOverBase"), "run-as-root-over:v1");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains(" 1000 ") && lines[0].ends_with("/data"), "{out}");
    assert!(lines[1].contains(" 2000 ") && lines[1].contains(" 200 ") && lines[1].ends_with("/data/more"), "{out}");
    assert_eq!(lines[2], "no ls", "{out}");
    let archive = nixlib_build("dtLayerOrder");
    let layers = layer_paths(&archive);
    assert_eq!(layers.len(), 3, "the base's two layers and one of its own: {layers:?}");
    assert_eq!(docker_run(&archive, "layer-order-c:v1"), "abc");
}

/// A store path that is a link to a directory, in `contents`, is joined through the link and
/// stays a link in the image's store (nixpkgs' layeredStoreSymlink).
#[test]
fn a_store_path_that_is_a_link_is_joined_through_it() {
    assert_eq!(docker_run(&nixlib_build("dtStoreSymlink"), "store-symlink:v1"), "content\n");
}

/// dockerTools' nix-shell images: the derivation's environment, its build as
/// `buildDerivation` (run as the build user, adding to the store), passAsFile's files,
/// stdenv's setup and the shell hook for an interactive shell; `run` in a non-interactive one.
#[test]
fn nix_shell_images_are_the_derivations_shell() {
    let out = docker_run(&nixlib_build("dtNixShellRun"), "greeter-1.0-env:v1");
    assert_eq!(out, "This is the shell hook!\nHello, world!\nthis is a string\nnot interactive\n1000 /build\n");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("shell.tar");
    run_ok(Command::new(nixlib_build("dtNixShellCommand")).stdout(std::fs::File::create(&archive).unwrap()));
    run_ok(Command::new("docker").arg("load").arg("-i").arg(&archive));
    // A terminal makes the shell interactive: it reads the rc file, which runs the hook.
    let out = stdout_of(Command::new("docker").args(["run", "--rm", "-t", "--network", "none", "nix-shell-command:v1"]));
    remove_images("docker", &["nix-shell-command:v1"]);
    assert_eq!(out.replace('\r', ""), "This is the shell hook!\ninteractive\n");
}

/// buildLayer's maxLayers: the layer is split as the rest of a closure is (glibc, needed by
/// hello, apart from it), each part with the layer's history entry, before the image's own.
/// The layer's record holds the digests of both parts, and the image takes both from it.
#[test]
fn a_build_layer_may_be_several() {
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(nixlib_build("n2cSplit")).unwrap()).unwrap();
    let parts = record["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{record}");
    let description = nixlib_build("n2cSplitLayer");
    let rebuilt = nixlib_build_command("n2cSplitLayer").arg("--check").output().unwrap();
    let log = String::from_utf8_lossy(&rebuilt.stderr);
    assert!(rebuilt.status.success() && log.matches("are from the layer record").count() == 2, "{log}");
    let digests: serde_json::Value = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&description).unwrap()).unwrap()["digests"].clone();
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(digests["diff_ids"][i], part["blobs"]["tar"]["diff_id"], "part {i}");
        assert_eq!(digests["compressed"][0]["layers"][i], part["blobs"]["gzip-libdeflate1.26-level5-blocks1m-v3"], "part {i}");
    }
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["inspect", &description, "--json"]))).unwrap();
    let history = inspect["config"]["history"].as_array().unwrap();
    assert_eq!((history.len(), &history[0]["comment"], &history[1]["comment"]), (3, &"split".into(), &"split".into()), "{history:?}");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("split.tar");
    run_ok(strata(&["stream", &description, "-o", &format!("docker-archive:{}", archive.display())]));
    let layers = read_archive(&archive).layers;
    let holds = |layer: &std::collections::BTreeMap<String, EntryInfo>, name: &str| layer.keys().any(|k| k.ends_with(name));
    assert!(holds(&layers[0], "-glibc-2.36") && !holds(&layers[0], "-hello-2.12"), "{:?}", layers[0].keys().collect::<Vec<_>>());
    assert!(holds(&layers[1], "-hello-2.12") && !holds(&layers[1], "-glibc-2.36"));
    assert!(holds(&layers[2], "-busybox-1.35"));
}
