//! `strata inspect`: a spec, an OCI layout and a docker-archive of the same image agree with
//! each other and with Nix on what each layer holds; `--raw` is the manifest skopeo reads; an
//! image without strata's history is read from its tars.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::common::*;

fn inspect_json(image: &str) -> serde_json::Value {
    serde_json::from_str(&stdout_of(strata(&["inspect", image, "--json"]))).unwrap()
}

/// Each layer's store paths and diff ID.
fn contents(view: &serde_json::Value) -> Vec<(Vec<String>, String)> {
    view["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["store_paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect(), l["diff_id"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn inspect_agrees_across_formats_and_with_nix() {
    let (hello, busybox) = (fixture("hello"), fixture("busybox"));
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "s.toml",
        &format!("name = \"inspected\"\ntag = \"1\"\nroots = [\"{hello}\", \"{busybox}\"]\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"),
    );
    let spec = spec.to_str().unwrap();
    let layout = format!("oci:{}:1", dir.path().join("layout").display());
    let archive_path = dir.path().join("image.tar");
    let archive = format!("docker-archive:{}", archive_path.display());
    run_ok(strata(&["build", spec, "-o", &layout]));
    run_ok(strata(&["build", spec, "-o", &archive]));

    let (of_spec, of_layout, of_archive) = (inspect_json(spec), inspect_json(&layout), inspect_json(&archive));
    assert_eq!(contents(&of_spec), contents(&of_layout));
    assert_eq!(contents(&of_spec), contents(&of_archive));
    assert_eq!(of_spec["config_digest"], of_layout["config_digest"]);
    assert_eq!(of_spec["platform"], "linux/amd64");
    assert!(of_archive["manifest_digest"].is_null());

    // Every store path of the closure, each in one layer, and nothing else.
    let listed: Vec<String> = contents(&of_layout).into_iter().flat_map(|(paths, _)| paths).collect();
    let closure = stdout_of(Command::new("nix-store").args(["-qR", &hello, &busybox]));
    let closure: BTreeSet<String> = closure.lines().map(|p| p.trim_start_matches("/nix/store/").to_owned()).collect();
    assert_eq!(listed.len(), closure.len(), "{listed:?}");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), closure);

    // --raw: the manifest, whose digest is the one skopeo reports.
    let raw = run_ok(strata(&["inspect", &layout, "--raw"])).stdout;
    let skopeo: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", &layout]))).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), skopeo["Digest"].as_str().unwrap());
    assert_eq!(of_layout["manifest_digest"], skopeo["Digest"]);
    let err = fails(&mut strata(&["inspect", &archive, "--raw"]));
    assert!(err.contains("has no manifest"), "{err}");

    // The same archive without history: the store paths come from the layers' tars.
    let bare = dir.path().join("bare.tar");
    without_history(&archive_path, &bare);
    let of_bare = inspect_json(&format!("docker-archive:{}", bare.display()));
    assert_eq!(contents(&of_bare), contents(&of_archive));
    assert!(of_bare["config"]["history"].is_null());

    // The text form names each layer's store paths.
    let text = stdout_of(strata(&["inspect", &layout]));
    assert!(text.contains("platform  linux/amd64") && text.contains(hello.trim_start_matches("/nix/store/")), "{text}");
}

/// Copies the docker-archive `from` to `to` with its config's history removed (as images of
/// other tools may have none), the config renamed after its new digest.
fn without_history(from: &Path, to: &Path) {
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in tar::Archive::new(std::fs::File::open(from).unwrap()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        members.push((name, data));
    }
    let mut manifest: serde_json::Value = serde_json::from_slice(&members.iter().find(|(n, _)| n == "manifest.json").unwrap().1).unwrap();
    let old_config = manifest[0]["Config"].as_str().unwrap().to_owned();
    let mut config: serde_json::Value = serde_json::from_slice(&members.iter().find(|(n, _)| *n == old_config).unwrap().1).unwrap();
    config.as_object_mut().unwrap().remove("history");
    let config = serde_json::to_vec(&config).unwrap();
    let new_config = format!("{}.json", sha256_hex(&config));
    manifest[0]["Config"] = new_config.clone().into();
    let mut out = tar::Builder::new(std::fs::File::create(to).unwrap());
    for (name, data) in members {
        let (name, data) = match name.as_str() {
            "manifest.json" => (name, serde_json::to_vec(&manifest).unwrap()),
            n if n == old_config => (new_config.clone(), config.clone()),
            _ => (name, data),
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, &name, &data[..]).unwrap();
    }
    out.finish().unwrap();
}

/// `strata diff` of two builds of one closure where one store path changed: it names exactly
/// that path, as a change (same package, another hash), keeps the other layer shared, and a
/// push of the second after the first uploads only the changed layer; specs and OCI layouts
/// of the same two images agree.
#[test]
fn diff_names_the_one_changed_path_and_keeps_the_rest_shared() {
    let dir = tempfile::tempdir().unwrap();
    let glibc = fixture("glibc").trim_start_matches("/nix/store/").to_owned();
    let mut specs = Vec::new();
    let mut hellos = Vec::new();
    for (i, greeting) in ["Hello, world!", "Hello, diff!"].into_iter().enumerate() {
        let hello = fixture_with("hello", &[("greeting", greeting)]);
        hellos.push(hello.trim_start_matches("/nix/store/").to_owned());
        let spec = write_spec(dir.path(), &format!("{i}.toml"), &format!("name = \"diffed\"\ntag = \"{i}\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
        specs.push(spec.to_str().unwrap().to_owned());
    }
    assert_ne!(hellos[0], hellos[1]);
    let layouts: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let layout = format!("oci:{}:{i}", dir.path().join("layout").display());
            run_ok(strata(&["build", spec, "-o", &layout]));
            layout
        })
        .collect();
    for (a, b) in [(&specs[0], &specs[1]), (&layouts[0], &layouts[1])] {
        let diff: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["diff", a, b, "--json"]))).unwrap();
        assert_eq!(diff["shared_layers"], 1, "{diff}");
        let new = diff["new_layers"].as_array().unwrap();
        assert_eq!(new.len(), 1, "{diff}");
        assert_eq!(new[0]["store_paths"], serde_json::json!([hellos[1]]));
        assert_eq!(new[0]["paths"]["changed"], serde_json::json!([{ "from": hellos[0], "to": hellos[1] }]));
        assert_eq!(diff["store_paths"]["changed"], serde_json::json!([{ "from": hellos[0], "to": hellos[1] }]));
        assert_eq!((diff["store_paths"]["added"].as_array().unwrap().len(), diff["store_paths"]["removed"].as_array().unwrap().len()), (0, 0));
        assert_eq!(diff["gone_layers"][0]["store_paths"], serde_json::json!([hellos[0]]));
        assert_eq!(diff["push"]["layers"], 1);
        assert_eq!(diff["push"]["bytes"], new[0]["size"]);
        let kept: Vec<&str> =
            diff["new_layers"].as_array().unwrap().iter().flat_map(|l| l["store_paths"].as_array().unwrap()).map(|p| p.as_str().unwrap()).collect();
        assert!(!kept.contains(&glibc.as_str()), "glibc's layer is shared: {diff}");

        let text = String::from_utf8(run_ok(strata(&["diff", a, b])).stdout).unwrap();
        assert!(text.contains(&format!("~ {} -> {}", hellos[0], hellos[1])), "{text}");
        assert!(text.contains("layers: 1 of B's 2 shared with A, 1 new, 1 of A's gone"), "{text}");
        assert!(text.contains("store paths: 0 added, 0 removed, 1 changed"), "{text}");
    }
    // In the layouts, the bytes a push uploads are the gzip blob's, as the manifest skopeo
    // reads lists it.
    let manifest: serde_json::Value = serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", "--raw", &layouts[1]]))).unwrap();
    let diff: serde_json::Value = serde_json::from_str(&stdout_of(strata(&["diff", &layouts[0], &layouts[1], "--json"]))).unwrap();
    let changed = &diff["new_layers"][0]["digest"];
    let listed = manifest["layers"].as_array().unwrap().iter().find(|l| &l["digest"] == changed).expect("the changed layer is listed");
    assert_eq!(listed["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(listed["size"], diff["push"]["bytes"]);
}
