//! Bad input: a non-zero exit, one message that names the cause, and nothing left at the
//! destination.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use strata_build::closure::Closure;
use strata_build::store::StorePath;

/// Nothing but the spec is left in `dir`: no output, no temporary file.
fn only_spec_left(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["spec.toml"], "left behind in the destination directory");
}

fn build_fails(spec_text: &str, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "spec.toml", spec_text);
    for dest in ["docker-archive:out.tar", "oci:out", "oci-archive:out.tar"] {
        let stderr = fails(strata(&["build", spec.to_str().unwrap(), "-o", dest]).current_dir(dir.path()));
        for e in expected {
            assert!(stderr.contains(e), "{dest}: {e:?} not in {stderr:?}");
        }
        assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
        only_spec_left(dir.path());
    }
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    build_fails("name = \"x\"\nrootz = []\n", &["spec.toml", "rootz", "unknown field"]);
    build_fails("name = \"x\"\n[config]\nEntrypoint = \"/bin/sh\"\n", &["config.Entrypoint", "invalid type"]);
    build_fails("name = \"x\"\n[config]\nWorkdir = \"/\"\n", &["config.Workdir", "unknown field"]);
    build_fails("name = \"x\"\nmax_layers = \"many\"\n", &["max_layers"]);
    build_fails("name = \"x\"\n[[perms]]\nregex = \"(\"\nmode = \"0755\"\n", &["perms[0].regex"]);
}

#[test]
fn paths_outside_the_store_missing_and_invalid_ones_are_named() {
    build_fails("name = \"x\"\nroots = [\"/usr/bin/env\"]\n", &["roots[0]", "/usr/bin/env", "not in the Nix store"]);
    let missing = "/nix/store/00000000000000000000000000000000-missing";
    build_fails(&format!("name = \"x\"\n[config]\nCmd = [\"{missing}/bin/x\"]\n"), &["config.Cmd[0]", missing, "does not exist"]);
    // Present in the store directory but never registered with Nix.
    let unregistered = format!("/nix/store/{}-unregistered", "1".repeat(32));
    std::fs::create_dir_all(&unregistered).unwrap();
    build_fails(&format!("name = \"x\"\nroots = [\"{unregistered}\"]\n"), &["roots[0]", &unregistered, "not valid"]);
    let _ = std::fs::remove_dir(&unregistered);
}

#[test]
fn a_missing_spec_and_a_bad_destination_are_named() {
    let stderr = fails(&mut strata(&["build", "/nonexistent/spec.toml", "-o", "docker-archive:x.tar"]));
    assert!(stderr.contains("/nonexistent/spec.toml"), "{stderr}");
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "spec.toml", &format!("name = \"x\"\nroots = [\"{hello}\"]\n"));
    // Refused before any layer is made, naming the directory that is missing (not the
    // scratch file a rename would have failed on) and leaving nothing behind.
    for (dest, missing) in [
        ("docker-archive:/nonexistent/dir/x.tar", "/nonexistent/dir"),
        ("oci:/nonexistent/dir/layout", "/nonexistent/dir"),
        ("oci-archive:/nonexistent/x.tar", "/nonexistent"),
        ("dir:/nonexistent/dir/image", "/nonexistent/dir"),
    ] {
        let stderr = fails(&mut strata(&["build", spec.to_str().unwrap(), "-o", dest]));
        assert!(stderr.contains(&format!("the directory {missing} does not exist")) && !stderr.contains(".partial"), "{dest}: {stderr}");
    }
    // An archive is a file: a directory is not replaced by one, nor written into.
    let target = tempfile::tempdir().unwrap();
    let t = target.path().display();
    for (dest, why) in [
        (format!("docker-archive:{t}"), "it is a directory"),
        (format!("oci-archive:{t}"), "it is a directory"),
        (format!("oci-archive:{t}/new/"), "a path ending in / names a directory"),
        (format!("docker-archive:{}/x.tar", spec.display()), "is not a directory"),
    ] {
        let stderr = fails(&mut strata(&["build", spec.to_str().unwrap(), "-o", &dest]));
        assert!(stderr.contains(why) && stderr.lines().count() == 1, "{dest}: {stderr}");
    }
    // So are the files `export` and `sbom` write.
    let image = format!("docker-archive:{}", build_archive(target.path(), &spec).display());
    for command in ["export", "sbom"] {
        for (output, why) in
            [(t.to_string(), "it is a directory".to_owned()), (format!("{t}/missing/out"), format!("the directory {t}/missing does not exist"))]
        {
            let stderr = fails(&mut strata(&[command, &image, "-o", &output]));
            assert!(stderr.contains(&why) && !stderr.contains(".partial"), "{command} -o {output}: {stderr}");
        }
    }
    std::fs::remove_file(image.trim_start_matches("docker-archive:")).unwrap();
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0, "the directory stays empty");
    only_spec_left(dir.path());
    let stderr = fails(&mut strata(&["build", spec.to_str().unwrap(), "-o", "s3:bucket"]));
    assert!(stderr.contains("unknown transport"), "{stderr}");
    // A directory that is something else is not turned into an OCI layout.
    let stderr = fails(&mut strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}", dir.path().display())]));
    assert!(stderr.contains("not an OCI layout"), "{stderr}");
}

#[test]
fn a_terminal_stdout_needs_dash_o() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "spec.toml", &format!("name = \"x\"\nroots = [\"{hello}\"]\n"));
    // `script` gives strata a pseudo-terminal as standard output.
    let out = Command::new("script").args(["-qec", &format!("{STRATA} build {}", spec.display()), "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("standard output is a terminal") && text.contains("-o"), "{text}");
}

#[test]
fn missing_nix_is_explained() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), "spec.toml", &format!("name = \"x\"\nroots = [\"{hello}\"]\n"));
    // No `nix` to run, and no database to read (strata reads Nix's where NIX_STATE_DIR says).
    let stderr = fails(
        strata(&["build", "spec.toml", "-o", "docker-archive:x.tar"]).current_dir(dir.path()).env("PATH", "/nonexistent").env("NIX_STATE_DIR", "/nonexistent"),
    );
    assert!(stderr.contains("Nix is needed") && stderr.contains("--closure-graph"), "{stderr}");
    only_spec_left(dir.path());
}

/// The closure read from Nix's database is the one `nix path-info` gives; a database that
/// cannot answer for sure steps aside (and `nix` answers).
#[test]
fn the_nix_database_gives_the_closure_nix_gives() {
    let roots = [fixture("hello"), fixture("chain"), fixture("linkToHello")];
    let store_paths: Vec<StorePath> = roots.iter().map(|r| StorePath::containing(r).unwrap()).collect();
    let refs: Vec<&StorePath> = store_paths.iter().collect();
    let database = Path::new("/nix/var/nix/db/db.sqlite");
    let read = Closure::from_nix_database(database, &refs).expect("the database answers for registered paths");
    let json = stdout_of(Command::new("nix").args(["--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive"]).args(&roots));
    let asked = Closure::from_graph_text(&json, Path::new("nix path-info")).unwrap();
    assert_eq!(read.graph(), asked.graph());
    assert!(read.graph().len() > roots.len(), "the roots have references: {:?}", read.graph().keys());

    let unregistered = StorePath::containing(&format!("/nix/store/{}-unregistered", "2".repeat(32))).unwrap();
    assert_eq!(Closure::from_nix_database(database, &[&store_paths[0], &unregistered]), None, "a root not registered");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbage.sqlite"), b"not a database").unwrap();
    std::fs::write(dir.path().join("empty.sqlite"), b"").unwrap();
    for other in ["garbage.sqlite", "empty.sqlite", "missing.sqlite"] {
        assert_eq!(Closure::from_nix_database(&dir.path().join(other), &refs), None, "{other}");
    }
}

/// Without Nix, a closure graph file gives the same image as Nix does.
#[test]
fn closure_graph_file_replaces_nix() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), "spec.toml", &format!("name = \"x\"\ntag = \"t\"\nroots = [\"{hello}\"]\n"));
    let graph = stdout_of(Command::new("nix-store").args(["--query", "--requisites", &hello]));
    // The registration format `exportReferencesGraph` writes, via `nix-store --dump-db`.
    let registration = stdout_of(Command::new("nix-store").arg("--dump-db").args(graph.lines()));
    std::fs::write(dir.path().join("graph"), registration).unwrap();
    run_ok(strata(&["build", "spec.toml", "-o", "docker-archive:nix.tar"]).current_dir(dir.path()));
    run_ok(strata(&["build", "spec.toml", "--closure-graph", "graph", "-o", "docker-archive:graph.tar"]).current_dir(dir.path()).env("PATH", "/nonexistent"));
    assert!(std::fs::read(dir.path().join("nix.tar")).unwrap() == std::fs::read(dir.path().join("graph.tar")).unwrap());
    // A root the graph does not list is named.
    std::fs::write(dir.path().join("graph"), "").unwrap();
    let stderr = fails(strata(&["build", "spec.toml", "--closure-graph", "graph", "-o", "docker-archive:x.tar"]).current_dir(dir.path()));
    assert!(stderr.contains("roots[0]") && stderr.contains("not in the closure graph"), "{stderr}");
}

/// A store file deleted while strata writes the image: an error naming it, no output left.
/// The "store path" is a directory of the test's own in the store directory, never registered
/// with Nix (the closure comes from a graph file): no path of the host's Nix store is changed
/// or deleted.
#[test]
fn a_file_that_vanishes_mid_build() {
    let digits: String = nonce().chars().filter(char::is_ascii_digit).collect();
    let path = format!("/nix/store/{:0>32}-vanishing", &digits[digits.len().saturating_sub(32)..]);
    std::fs::create_dir(&path).unwrap();
    let big = std::fs::File::create(format!("{path}/a-big")).unwrap();
    big.set_len(64 << 20).unwrap();
    std::fs::write(format!("{path}/z-vanishes"), b"bye\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), "spec.toml", &format!("name = \"x\"\nroots = [\"{path}\"]\n"));
    std::fs::write(dir.path().join("graph"), format!("{path}\n\n0\n")).unwrap();
    let child = strata(&["build", "spec.toml", "--closure-graph", "graph", "-o", "docker-archive:out.tar"])
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the temporary output exists, planning is over and the big file is being written:
    // stop strata, delete the small file that comes after it, let strata go on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(dir.path()).unwrap().count() < 3 {
        assert!(std::time::Instant::now() < deadline, "no temporary output appeared");
        std::thread::yield_now();
    }
    let pid = child.id().to_string();
    run_ok(Command::new("kill").args(["-STOP", &pid]));
    std::fs::remove_file(format!("{path}/z-vanishes")).unwrap();
    run_ok(Command::new("kill").args(["-CONT", &pid]));
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{path}/z-vanishes")), "{stderr}");
    let left: Vec<String> = names_in(dir.path()).into_iter().filter(|n| n != "graph").collect();
    assert_eq!(left, ["spec.toml"], "left behind in the destination directory");
}

/// A reader that stops reading (`strata build … | head -c 100`) ends strata quietly with
/// 141, as it ends `cat` (killed by SIGPIPE): no error message for what is no fault of
/// strata's.
#[test]
fn a_reader_that_goes_away_ends_strata_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "spec.toml", &format!("name = \"x\"\nroots = [\"{}\"]\n", fixture("hello")));
    let mut child = strata(&["build", spec.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut head = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take()); // the image is megabytes: strata is still writing
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// An input read whole that never ends (`/dev/zero`) is refused at its bound, naming it:
/// a spec, a closure graph, a key, credentials. Nothing is read without end.
#[test]
fn inputs_without_end_are_refused_at_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let zero = |name: &str| {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        link.to_str().unwrap().to_owned()
    };
    let spec = write_spec(dir.path(), "spec.toml", &format!("name = \"x\"\nroots = [\"{}\"]\n", fixture("hello")));
    let spec = spec.to_str().unwrap();
    let auth = zero("auth.json");
    for (args, named, why) in [
        (vec!["build", &zero("zero.toml")], "zero.toml", "larger than 256 MiB"),
        (vec!["build", spec, "--closure-graph", &zero("graph"), "-o", "oci:out"], "graph", "larger than 256 MiB"),
        (vec!["verify", "docker://127.0.0.1:1/x:t", "--key", &zero("cosign.pub")], "cosign.pub", "larger than 64 KiB"),
        (vec!["inspect", "docker://127.0.0.1:1/x:t"], "auth.json", "more than a credentials file holds"),
    ] {
        let stderr = fails(strata(&args).env("REGISTRY_AUTH_FILE", &auth).current_dir(dir.path()));
        assert!(stderr.contains(named) && stderr.contains(why), "{args:?}: {stderr}");
    }
}
