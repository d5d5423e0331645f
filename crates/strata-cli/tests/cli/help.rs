//! What strata says of itself: shell completions (checked by the shells' own parsers where
//! they are installed: bash), man pages (rendered by man), help texts that name every
//! transport, and progress bars where someone watches (a pseudo-terminal), never elsewhere.

use std::process::Command;

use crate::common::*;

const SUBCOMMANDS: [&str; 17] = [
    "build",
    "containerize",
    "run",
    "stream",
    "copy",
    "inspect",
    "diff",
    "sbom",
    "export",
    "key",
    "verify",
    "login",
    "logout",
    "referrers",
    "cache",
    "completions",
    "man",
];

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

/// Progress bars: on a pseudo-terminal (`script`), a bar per layer being compressed and one
/// for all layers, with bytes and rate; none with `--quiet`, and none when standard error is
/// not a terminal, where the plain lines stand alone.
#[test]
fn progress_shows_on_a_terminal_and_nowhere_else() {
    let hello = fixture("hello");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "s.toml", &format!("name = \"bars\"\n[config]\nEntrypoint = [\"{hello}/bin/hello\"]\n"));
    let build = |layout: &str, extra: &str| {
        format!("{STRATA} build {} -o oci:{}:t --compress zstd --no-cache {extra}", spec.display(), dir.path().join(layout).display())
    };
    // `script -qfc CMD FILE` runs CMD on a pseudo-terminal and copies what it shows to FILE.
    let on_terminal = |command: String, file: &str| {
        let typescript = dir.path().join(file);
        run_ok(Command::new("script").arg("-qfc").arg(&command).arg(&typescript).stdout(std::process::Stdio::null()));
        String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).replace('\r', "\n")
    };
    let shown = on_terminal(build("a", ""), "bars");
    assert!(shown.contains("compressing") && shown.contains("all layers") && shown.contains("/s"), "{shown}");
    assert!(shown.contains("strata: wrote bars:"), "{shown}");
    let quiet = on_terminal(build("b", "--quiet"), "quiet");
    assert!(quiet.contains("strata: wrote bars:") && !quiet.contains("compressing") && !quiet.contains("all layers"), "{quiet}");
    let out =
        run_ok(strata(&["build", spec.to_str().unwrap(), "-o", &format!("oci:{}:t", dir.path().join("c").display()), "--compress", "zstd", "--no-cache"]));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("strata: wrote bars:") && !stderr.contains("compressing") && !stderr.contains('\u{1b}'), "{stderr}");
}
