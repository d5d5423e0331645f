//! strata's Nix library (`nix/`): images built by Nix with strata as the builder, loaded
//! into the real Docker engine and podman, and run.

use std::process::{Command, Stdio};

use crate::common::*;

fn docker_load(tarball: &str) -> String {
    let out = stdout_of(Command::new("docker").arg("load").stdin(std::fs::File::open(tarball).unwrap()));
    out.trim().strip_prefix("Loaded image: ").unwrap_or_else(|| panic!("{out}")).to_owned()
}

/// nix.dev's flow, word for word: `docker load < $(nix-build hello-docker.nix)`, then
/// `docker run -t hello-docker:<tag>`, the tag being the one `docker load` printed (also the
/// derivation's `imageTag`).
#[test]
fn build_image_loads_with_docker_load() {
    let result = nixlib_build("helloDocker");
    assert!(result.ends_with("-docker-image-hello-docker.tar.gz"), "{result}");
    let tag = nixlib_eval("helloDocker.imageTag");
    let expected = format!("hello-docker:{}", tag.trim().trim_matches('"'));
    let _claim = ImageNames::claim(&[&expected]);
    let image = docker_load(&result);
    assert_eq!(image, expected);
    let tag = tag.trim().trim_matches('"');
    assert!(tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "the default tag is a store hash: {tag}");
    let out = stdout_of(Command::new("docker").args(["run", "--rm", "--network", "none", "-t", &image]));
    assert_eq!(out.trim_end(), "Hello, world!");
    remove_images("docker", &[&image]);
    // Built again from scratch, the output is bit for bit the same (Nix checks it).
    for attr in ["helloDocker", "helloStream", "helloLayered", "makes"] {
        nixlib_build(attr);
        run_ok(nixlib_build_command(attr).arg("--check"));
    }
}

/// streamLayeredImage: the result is a small executable, not an image; it streams one.
#[test]
fn stream_layered_image_streams_into_podman() {
    let result = nixlib_build("helloStream");
    let size = std::fs::metadata(&result).unwrap().len();
    assert!(size < 64 * 1024, "the store holds a {size}-byte result: no image tarball");
    let mut stream = Command::new(&result).stdout(Stdio::piped()).spawn().unwrap();
    let load = Command::new("podman").arg("load").stdin(stream.stdout.take().unwrap()).output().unwrap();
    assert!(stream.wait().unwrap().success());
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(run_in("podman", "hello-stream:latest", &[]), "Hello, world!\n");
    // `contents` are joined as dockerTools joins them (symlinkJoin): busybox in the store,
    // and / holding symlinks into it (#16).
    assert_eq!(
        stdout_of(Command::new("podman").args(["run", "--rm", "--entrypoint", "/bin/echo", "hello-stream:latest", "from", "contents"])),
        "from contents\n"
    );
    let busybox = fixture("busybox");
    let listed = stdout_of(Command::new("podman").args(["run", "--rm", "--entrypoint", "/bin/ls", "hello-stream:latest", "-l", "/bin/sh"]));
    assert!(listed.trim_end().ends_with(&format!("/bin/sh -> {busybox}/bin/sh")), "{listed}");
    let in_store = stdout_of(Command::new("podman").args(["run", "--rm", "--entrypoint", "/bin/ls", "hello-stream:latest", &format!("{busybox}/bin/busybox")]));
    assert_eq!(in_store.trim(), format!("{busybox}/bin/busybox"));
    remove_images("podman", &["hello-stream:latest"]);
}

#[test]
fn build_layered_image_respects_max_layers() {
    let result = nixlib_build("helloLayered");
    let image = docker_load(&result);
    assert_eq!(run_in("docker", &image, &[]), "Hello, world!\n");
    let layers = stdout_of(Command::new("docker").args(["image", "inspect", &image, "--format", "{{len .RootFS.Layers}}"]));
    assert_eq!(layers.trim(), "2");
    remove_images("docker", &[&image]);
}

/// makes' example: `pwd` -> /working-dir, `cat my-file` -> my-file-contents, and `ls /`
/// lists the layers' top-level folders.
#[test]
fn make_container_image_lays_layers_over_root() {
    let image = docker_load(&nixlib_build("makes"));
    assert!(image.starts_with("container-image:"), "{image}");
    assert_eq!(run_in("docker", &image, &["pwd"]), "/working-dir\n");
    assert_eq!(run_in("docker", &image, &["cat", "my-file"]), "my-file-contents\n");
    let root = run_in("docker", &image, &["ls", "/"]);
    assert!(root.lines().any(|l| l == "bin") && root.lines().any(|l| l == "working-dir"), "{root}");
    remove_images("docker", &[&image]);
}

#[test]
fn bad_arguments_fail_evaluation_naming_them() {
    for (attr, expected) in [
        ("badArgument", "strata.buildImage: no argument `content`"),
        ("badLayer", "`layers` must hold derivations or store paths, not a int"),
        ("badCompressor", "`compressor` must be one of gz, zstd, none"),
        ("badN2cLayer", "`layers` must hold layers made with buildLayer, not a set"),
        ("badLayering", "`layeringPipeline` is not supported"),
        ("badExtra", "`extraCommands` needs coreutils from nixpkgs: import strata's library with your nixpkgs"),
    ] {
        let out = nixlib_command("nix-instantiate", attr).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{attr} evaluated");
        assert!(stderr.contains(expected), "{attr}: {expected:?} not in {stderr}");
    }
}

/// The digests a nix2container-style description recorded at build time.
fn recorded(description: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(description).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).expect("the description is JSON")["digests"].clone()
}

/// nix2container-style: the result is a description, no tarball; every runner writes the
/// image whose digests were recorded at build time; buildLayer layers are isolated.
#[test]
fn nix2container_style_images_match_their_recorded_digests() {
    let description = nixlib_build("n2c");
    let size = std::fs::metadata(&description).unwrap().len();
    assert!(size < 64 * 1024, "a {size}-byte description: no tarball in the store");
    let digests = recorded(&description);
    let config = digests["config"].as_str().unwrap().to_owned();
    run_ok(nixlib_build_command("n2c").arg("--check"));

    let runner = |attr: &str, name: &str| format!("{}/bin/{name}", nixlib_build(&format!("n2c.{attr}")));
    run_ok(&mut Command::new(runner("copyToPodman", "copy-to-podman")));
    let id = stdout_of(Command::new("podman").args(["image", "inspect", "n2c-hello:v1", "--format", "{{.Id}}"]));
    assert_eq!(format!("sha256:{}", id.trim()), config, "podman's image ID is the recorded config digest");
    assert_eq!(run_in("podman", "n2c-hello:v1", &[]), "Hello, world!\n");
    remove_images("podman", &["n2c-hello:v1"]);

    run_ok(&mut Command::new(runner("copyToDockerDaemon", "copy-to-docker-daemon")));
    let id = stdout_of(Command::new("docker").args(["image", "inspect", "n2c-hello:v1", "--format", "{{.Id}}"]));
    assert_eq!(id.trim(), config);
    let env = stdout_of(Command::new("docker").args(["image", "inspect", "n2c-hello:v1", "--format", "{{json .Config.Env}}"]));
    assert_eq!(env.trim(), r#"["A=1"]"#, "nix2container's lower-case config keys");
    assert_eq!(run_in("docker", "n2c-hello:v1", &[]), "Hello, world!\n");
    remove_images("docker", &["n2c-hello:v1"]);

    // copyTo any destination; into an OCI layout the manifest is the recorded one too: with
    // gzip layers (the codec described), and uncompressed when asked.
    let dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:v1", dir.path().join("layout").display());
    run_ok(Command::new(runner("copyTo", "copy-to")).arg(&layout));
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &layout]))).unwrap();
    assert_eq!(digests["compressed"][0]["codec"], "gzip-libdeflate1.26-level5-blocks1m-v3");
    assert_eq!(inspect["Digest"], digests["compressed"][0]["manifest"]);
    run_ok(Command::new(runner("copyTo", "copy-to")).args([&layout, "--compress", "none"]));
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &layout]))).unwrap();
    assert_eq!(inspect["Digest"], digests["manifest"]);

    // The buildLayer layer holds glibc and nothing else; perms applied.
    let archive = dir.path().join("image.tar");
    run_ok(Command::new(runner("copyTo", "copy-to")).arg(format!("docker-archive:{}", archive.display())));
    let layers = read_archive(&archive).layers;
    let stores = |l: &std::collections::BTreeMap<String, EntryInfo>| {
        l.keys().filter_map(|k| k.strip_prefix("nix/store/")).map(|k| k.split('/').next().unwrap().to_owned()).collect::<std::collections::BTreeSet<_>>()
    };
    let glibc = build_fixture_name("glibc");
    assert_eq!(stores(&layers[0]), [glibc].into());
    let hello_bin = layers[1].iter().find(|(k, _)| k.ends_with("/bin/hello")).unwrap().1;
    assert_eq!(hello_bin.mode, 0o700);
}

fn build_fixture_name(attr: &str) -> String {
    fixture(attr).trim_start_matches("/nix/store/").to_owned()
}

/// initializeNixDatabase: Nix inside the container knows every store path of the image, with
/// the NAR hash and size the host's Nix has for it, and its references; the database is
/// deterministic (Nix's --check rebuilds the description, digests included).
#[test]
fn initialize_nix_database_registers_the_closure_as_nix_does() {
    let (hello, glibc) = (fixture("hello"), fixture("glibc"));
    run_ok(&mut Command::new(format!("{}/bin/copy-to-podman", nixlib_build("n2cNixDb.copyToPodman"))));
    let image = "n2c-nixdb:v1";
    assert_eq!(run_in("podman", image, &["--query", "--references", &hello]), format!("{glibc}\n"));
    for query in ["--hash", "--size"] {
        let host = stdout_of(Command::new("nix-store").args(["--query", query, &hello]));
        assert_eq!(run_in("podman", image, &["--query", query, &hello]), host, "{query}");
    }
    let verify = Command::new("podman").args(["run", "--rm", image, "--verify", "--check-contents"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && !stderr.contains("error") && !stderr.contains("modified"), "{stderr}");
    remove_images("podman", &[image]);
    run_ok(nixlib_build_command("n2cNixDb").arg("--check"));
}

/// A description whose recorded digests the image no longer has writes nothing: a file,
/// a layout's index and a registry tag stay as they were (#10.4).
#[test]
fn a_description_that_does_not_match_writes_nothing() {
    let description = nixlib_build("n2c");
    let dir = tempfile::tempdir().unwrap();
    let mut body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&description).unwrap()).unwrap();
    body["digests"]["config"] = format!("sha256:{}", "0".repeat(64)).into();
    let stale = dir.path().join("stale.json");
    std::fs::write(&stale, body.to_string()).unwrap();

    let archive = dir.path().join("out.tar");
    std::fs::write(&archive, b"the old content").unwrap();
    let layout = format!("oci:{}:v1", dir.path().join("layout").display());
    run_ok(strata(&["stream", &description, "-o", &layout]));
    let index = std::fs::read(dir.path().join("layout/index.json")).unwrap();
    let registry = Registry::start();
    let target = format!("{}:v1", registry.reference("strata-test/described"));
    let reg = |args: &[&str]| {
        let mut cmd = strata(args);
        cmd.args(["--creds", CREDS, "--tls-verify=false"]).env("STRATA_CACHE_DIR", dir.path());
        cmd
    };
    run_ok(reg(&["stream", &description, "-o", &target]));
    let digest = |r: &str| stdout_of(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", "--tls-verify=false", "--creds", CREDS, r]));
    let pushed = digest(&target);

    for dest in [format!("docker-archive:{}", archive.display()), layout.clone(), target.clone()] {
        let stderr = fails(&mut reg(&["stream", stale.to_str().unwrap(), "-o", &dest]));
        assert!(stderr.contains("was recorded when the image was built") && stderr.contains("nothing was written"), "{dest}: {stderr}");
    }
    assert_eq!(std::fs::read(&archive).unwrap(), b"the old content");
    assert_eq!(std::fs::read(dir.path().join("layout/index.json")).unwrap(), index);
    assert_eq!(digest(&target), pushed, "the tag did not move");
    assert!(!names_in(dir.path()).iter().any(|n| n.ends_with(".partial")), "{:?}", names_in(dir.path()));
}

/// #12: a described image pushed from a machine that never pushed it (an empty layer cache),
/// in the codec it was described in (gzip) and uncompressed: Nix recorded its layers' digests
/// and the registry has them, so no layer is read, hashed, compressed or uploaded, and the
/// manifest is the recorded one.
#[test]
fn a_described_image_pushes_from_an_empty_cache_without_reading_its_layers() {
    let description = nixlib_build("n2c");
    let recorded = recorded(&description);
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    for (compress, manifest, tag) in [(&[][..], &recorded["compressed"][0]["manifest"], "gzip"), (&["--compress", "none"][..], &recorded["manifest"], "tar")] {
        let target = format!("{}:{tag}", registry.reference("strata-test/n2c"));
        let push = |cache: &str| {
            let mut cmd = strata(&["stream", &description, "-o", &target, "-v", "--creds", CREDS, "--tls-verify=false"]);
            cmd.args(compress).env("STRATA_CACHE_DIR", dir.path().join(tag).join(cache));
            String::from_utf8(run_ok(cmd).stderr).unwrap()
        };
        let first = push("first-machine");
        assert!(first.contains("2 layers uploaded, 0 mounted, 0 already there; 2 layers read"), "{tag}: {first}");
        let uploads = registry.uploads();
        let second = push("second-machine");
        assert!(second.contains("0 layers uploaded, 0 mounted, 2 already there; 0 layers read"), "{tag}: {second}");
        assert_eq!(registry.uploads(), uploads, "{tag}: a blob was uploaded again");
        let inspect = stdout_of(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--creds", CREDS, &target]));
        let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(&inspect["Digest"], manifest, "{tag}");
    }
}

/// #12: a buildLayer layer is its own derivation, whose record (the layer's digests,
/// uncompressed and gzip) is made once: every image with the layer takes its digests from
/// there instead of compressing it again, and they are the digests the layer really has.
#[test]
fn a_layer_record_is_made_once_and_every_image_with_the_layer_uses_it() {
    let record_path = nixlib_build("n2cGlibc");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(record["roots"], serde_json::json!([fixture("glibc")]));
    let references = stdout_of(Command::new("nix-store").args(["--query", "--references", &record_path]));
    assert_eq!(references.trim(), fixture("glibc"), "the record keeps the layer's store paths alive");
    let blobs = &record["parts"][0]["blobs"];
    assert_eq!(record["parts"].as_array().unwrap().len(), 1, "{record}");
    let (tar, gzip) = (&blobs["tar"], &blobs["gzip-libdeflate1.26-level5-blocks1m-v3"]);
    assert_eq!(tar["digest"], tar["diff_id"]);
    assert_eq!(gzip["diff_id"], tar["diff_id"]);
    for image in ["n2c", "n2cOther"] {
        // Built again (Nix's --check), the description's build says where the layer's digests came from.
        let description = nixlib_build(image);
        let out = nixlib_build_command(image).arg("--check").output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains(&format!("are from the layer record {record_path}")), "{image}: {log}");
        let recorded = recorded(&description);
        assert_eq!(recorded["compressed"][0]["layers"][0], *gzip, "{image}");
        assert_eq!(recorded["diff_ids"][0], tar["diff_id"], "{image}");
    }
    // The digests are the layer's: an OCI layout written from the description, with no
    // record and no cache, has the same blob.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let mut write = strata(&["stream", &nixlib_build("n2cOther"), "-o", &format!("oci:{}:t", layout.display()), "--no-cache"]);
    run_ok(&mut write);
    let blob = layout.join("blobs/sha256").join(gzip["digest"].as_str().unwrap().trim_start_matches("sha256:"));
    assert_eq!(format!("sha256:{}", sha256_hex(&std::fs::read(&blob).unwrap())), gzip["digest"].as_str().unwrap());
}

/// #16: dockerTools users' own arguments: an image name with a registry path and capitals
/// (lower-cased, as dockerTools does; the derivation named after its last component, as
/// no `/` may be in a derivation name),
/// Docker's config keys beyond OCI's passed through to the engine, and `config = null`.
#[test]
fn docker_tools_names_docker_config_keys_and_null_config() {
    let result = nixlib_build("dockerStyle");
    assert!(result.ends_with("-docker-image-app.tar.gz"), "{result}");
    let image = docker_load(&result);
    assert_eq!(image, "ghcr.io/strata-test/app:v1");
    let config: serde_json::Value =
        serde_json::from_str(&stdout_of(Command::new("docker").args(["image", "inspect", &image, "--format", "{{json .Config}}"]))).unwrap();
    assert_eq!(config["Healthcheck"]["Test"][0], "CMD");
    assert_eq!(config["Healthcheck"]["Interval"], 30000000000u64);
    assert_eq!(config["OnBuild"], serde_json::json!(["RUN true"]));
    assert!(config["Shell"][0].as_str().unwrap().ends_with("/bin/sh"), "{config}");
    assert_eq!(run_in("docker", &image, &[]), "Hello, world!\n");
    remove_images("docker", &[&image]);

    let stream = nixlib_build("dockerNullConfig");
    let mut streaming = Command::new(&stream).stdout(Stdio::piped()).spawn().unwrap();
    let load = Command::new("podman").arg("load").stdin(streaming.stdout.take().unwrap()).output().unwrap();
    assert!(streaming.wait().unwrap().success() && load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(stdout_of(Command::new("podman").args(["run", "--rm", "null-config:v1", "/bin/echo", "null config"])), "null config\n");
    remove_images("podman", &["null-config:v1"]);
}

/// #16: nix2container's perms apply where nix2container applies them: `path` names a store
/// path, whether its tree is laid over `/` (copyToRoot) or it sits in the store, and `regex`
/// is searched in the store path of each of its files; `uname`/`gname` go in the tar headers.
#[test]
fn nix2container_perms_apply_to_trees_laid_over_root() {
    let description = nixlib_build("n2cPerms");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("perms.tar");
    run_ok(strata(&["stream", &description, "-o", &format!("docker-archive:{}", archive.display())]));
    let layers = read_archive(&archive).layers;
    let find = |path: &str| layers.iter().find_map(|l| l.get(path)).unwrap_or_else(|| panic!("{path} is in no layer"));
    let busybox = find("bin/busybox");
    assert_eq!((busybox.mode, busybox.uid, busybox.gid), (0o750, 1000, 100));
    assert_eq!(busybox.names, ("app".to_owned(), "users".to_owned()));
    let sh = find("bin/sh");
    assert_eq!((sh.mode, sh.uid), (0o777, 0), "the regex matched bin/busybox only");
    let hello = fixture("hello");
    let hello_bin = find(&format!("{}/bin/hello", hello.trim_start_matches('/')));
    assert_eq!(hello_bin.mode, 0o700, "a store path's files too");
    run_ok(Command::new("podman").arg("load").arg("-i").arg(&archive));
    let listed = run_in("podman", "n2c-perms:v1", &[]);
    assert!(listed.starts_with("-rwxr-x---") && listed.contains(" 1000 ") && listed.contains(" 100 "), "{listed}");
    remove_images("podman", &["n2c-perms:v1"]);
}

/// #16: pullImage (dockerTools' and nix2container's) fetches an image by digest from a
/// registry (on loopback; builds here have no sandbox) as a fixed-output docker-archive whose
/// hash Nix checks; `docker load` takes it, and an image over it (fromImage) runs.
#[test]
fn pull_image_fetches_by_digest_and_serves_as_a_base() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open();
    let spec = write_spec(dir.path(), "s.toml", &format!("name = \"to-pull\"\ntag = \"1\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let repo = format!("127.0.0.1:{}/strata-test/to-pull", registry.port);
    let pushed: serde_json::Value =
        serde_json::from_slice(&run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("docker://{repo}:1"), "--tls-verify=false", "--json"])).stdout)
            .unwrap();
    let digest = pushed["manifest_digest"].as_str().unwrap().to_owned();
    let with_pull = |attr: &str, hashes: (&str, &str)| {
        let mut cmd = nixlib_build_command(attr);
        cmd.args(["--argstr", "pullName", &repo, "--argstr", "pullDigest", &digest, "--argstr", "pullHash", hashes.0, "--argstr", "pullHashN2c", hashes.1]);
        cmd
    };
    // The archive's hash, as users find it: a build with a wrong one fails saying the right
    // one (and lands nothing in the store).
    let found = |attr: &str, hashes: (&str, &str)| {
        let out = with_pull(attr, hashes).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && stderr.contains("hash mismatch"), "{stderr}");
        stderr.split("got:").nth(1).and_then(|g| g.split_whitespace().next()).unwrap_or_else(|| panic!("{stderr}")).to_owned()
    };
    let zeros = "0".repeat(52);
    let hash = found("pulled", (&zeros, &zeros));
    let hash_n2c = found("overPulled", (&hash, &zeros));
    let pulled = stdout_of(with_pull("pulled", (&hash, &hash_n2c))).trim().to_owned();
    assert_eq!(docker_load(&pulled), "pulled:v1");
    // Fetched again from scratch, the same bytes (Nix checks the hash).
    run_ok(with_pull("pulled", (&hash, &hash_n2c)).arg("--check"));
    assert_eq!(run_in("docker", "pulled:v1", &[]), "Hello, world!\n");
    remove_images("docker", &["pulled:v1"]);

    let over = stdout_of(with_pull("overPulled", (&hash, &hash_n2c))).trim().to_owned();
    run_ok(strata(&["stream", &over, "-o", "podman:over-pulled:v1"]));
    assert_eq!(run_in("podman", "over-pulled:v1", &[]), "Hello, world!\nagain\n");
    remove_images("podman", &["over-pulled:v1"]);

    // nix2container's pullImageFromManifest: getManifest prints the manifest (the one pushed,
    // byte for byte); from that file, the blobs are fetched with no hash given.
    let with_manifest = |attr: &str, manifest: &str| {
        let mut cmd = nixlib_build_command(attr);
        let registry_host = format!("127.0.0.1:{}", registry.port);
        cmd.args(["--argstr", "pullRegistry", &registry_host, "--argstr", "pullRepository", "strata-test/to-pull", "--arg", "pullManifest", manifest]);
        cmd
    };
    let get_manifest = stdout_of(with_manifest("fromManifest.getManifest", "null")).trim().to_owned();
    let manifest = run_ok(Command::new(format!("{get_manifest}/bin/get-manifest"))).stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest)), digest, "getManifest prints the pushed manifest");
    let manifest_file = dir.path().join("manifest.json");
    std::fs::write(&manifest_file, &manifest).unwrap();
    let over = stdout_of(with_manifest("overManifest", manifest_file.to_str().unwrap())).trim().to_owned();
    run_ok(strata(&["stream", &over, "-o", "podman:over-manifest:v1"]));
    assert_eq!(run_in("podman", "over-manifest:v1", &[]), "Hello, world!\nfrom a manifest\n");
    remove_images("podman", &["over-manifest:v1"]);
}

/// #16: more of dockerTools' arguments on the layered images: `compressor`, `architecture`,
/// `includeNixDB` (buildLayeredImageWithNixDb), `uid`/`gid`/`uname`/`gname` (the owner of what
/// is laid over /), `meta`.
#[test]
fn docker_tools_layered_arguments() {
    let result = nixlib_build("dockerLayeredArgs");
    assert!(result.ends_with("-docker-image-layered-args.tar.zst"), "{result}");
    let inspect: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["inspect", &result, "--json"]))).unwrap();
    assert_eq!(inspect["platform"], "linux/arm64");
    let layers = inspect["layers"].as_array().unwrap();
    assert!(layers.len() >= 3, "store layers, the links and the Nix database: {inspect}");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("plain.tar");
    run_ok(strata(&["copy", &format!("docker-archive:{result}"), &format!("docker-archive:{}", archive.display()), "--compress", "none"]));
    let read = read_archive(&archive).layers;
    // As in dockerTools, uid/gid/uname/gname own the store; what is linked from / is root's.
    let busybox = read.iter().find_map(|l| l.iter().find(|(path, _)| path.ends_with("-busybox-1.35/bin/busybox"))).expect("busybox in the store").1;
    assert_eq!((busybox.uid, busybox.gid, busybox.names.clone()), (1000, 100, ("app".to_owned(), "users".to_owned())));
    let sh = read.iter().find_map(|l| l.get("bin/sh")).expect("bin/sh is linked from /");
    assert_eq!((sh.uid, sh.gid), (0, 0));
    assert!(read.iter().any(|l| l.keys().any(|k| k.starts_with("nix/var/nix/db/"))), "the Nix database is in the image");
    let description = nixlib_eval("dockerLayeredArgs.meta.description");
    assert_eq!(description.trim(), r#""an image with dockerTools' arguments""#);
}

/// #16: dockerTools' `extraCommands` shape a directory laid over / (with the caller's
/// nixpkgs' shell), and the modes they set hold in the image (`chmod 1777 tmp`), though the
/// store makes everything read-only.
#[test]
fn docker_tools_extra_commands_shape_the_root() {
    let image = docker_load(&nixlib_build("dockerExtra"));
    assert_eq!(image, "extra:v1");
    let out = run_in("docker", &image, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("drwxrwxrwt") && l.ends_with("/tmp")), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("drwxr-xr-x") && l.ends_with("/var/log/nginx")), "{out}");
    assert!(out.contains("shaped by extraCommands"), "{out}");
    remove_images("docker", &[&image]);
}
