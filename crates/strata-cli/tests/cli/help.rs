//! What strata says of itself: shell completions (checked by the shells' own parsers where
//! they are installed: bash), man pages (rendered by man), and help texts that name every
//! transport.

use std::process::Command;

use crate::common::*;

const SUBCOMMANDS: [&str; 9] = ["build", "containerize", "run", "stream", "copy", "inspect", "cache", "completions", "man"];

#[test]
fn completions_parse_and_name_every_subcommand() {
    let bash = stdout_of(strata(&["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("strata.bash");
    std::fs::write(&script, &bash).unwrap();
    run_ok(Command::new("bash").arg("-n").arg(&script));
    // Loaded into bash, the completion of `strata c` offers the subcommands starting with c.
    let offered = stdout_of(
        Command::new("bash")
            .arg("-c")
            .arg(format!("source {}; COMP_WORDS=(strata c); COMP_CWORD=1; _strata strata c strata; printf '%s\\n' \"${{COMPREPLY[@]}}\"", script.display())),
    );
    let mut offered: Vec<&str> = offered.lines().collect();
    offered.sort();
    assert_eq!(offered, ["cache", "completions", "containerize", "copy"]);
    for sub in SUBCOMMANDS {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(stdout_of(strata(&["completions", "zsh"])).starts_with("#compdef strata"));
    assert!(stdout_of(strata(&["completions", "fish"])).contains("complete -c strata"));
}

#[test]
fn man_pages_render() {
    let dir = tempfile::tempdir().unwrap();
    let listed = stdout_of(strata(&["man", "-o", dir.path().to_str().unwrap()]));
    let mut expected: Vec<String> = SUBCOMMANDS.iter().map(|s| format!("strata-{s}.1")).collect();
    expected.push("strata.1".to_owned());
    expected.sort();
    assert_eq!(names_in(dir.path()), expected);
    assert_eq!(listed.lines().count(), expected.len());
    for (page, heading) in [("strata.1", "strata - Turn Nix closures"), ("strata-build.1", "strata-build - Build an image from a spec")] {
        let rendered = stdout_of(Command::new("man").arg("-l").arg(dir.path().join(page)).env("MANPAGER", "cat").env("MANWIDTH", "200"));
        assert!(rendered.contains("NAME") && rendered.contains(heading), "{page}: {rendered}");
    }
    // To standard output, strata(1).
    let page = stdout_of(strata(&["man"]));
    assert!(page.starts_with(".ie") || page.contains(".TH strata 1"), "{}", &page[..page.len().min(200)]);
}

#[test]
fn help_texts_name_every_transport() {
    for sub in ["build", "copy", "run", "containerize"] {
        let help = stdout_of(strata(&[sub, "--help"]));
        for transport in ["docker-archive:", "oci:", "oci-archive:", "docker://"] {
            assert!(help.contains(transport), "`strata {sub} --help` does not name {transport}");
        }
    }
    let err = fails(&mut strata(&["copy", "nope:x", "oci:y"]));
    for transport in ["docker-archive:", "oci:", "oci-archive:", "docker://", "docker-daemon:", "podman:"] {
        assert!(err.contains(transport), "the invalid-transport error does not name {transport}: {err}");
    }
}
