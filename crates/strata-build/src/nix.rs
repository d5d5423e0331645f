//! Every `nix` process strata starts, from this one place: the experimental features each
//! command needs, and the parsing of what `nix build --json` prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `nix ARGS` with the `nix-command` and `flakes` features on (Nix 2.8 and later need them
/// named), in `dir` if given. `Err` when `nix` cannot be run at all.
pub fn run(args: &[&str], dir: Option<&Path>) -> std::io::Result<Output> {
    let mut command = Command::new("nix");
    command.args(["--extra-experimental-features", "nix-command flakes"]).args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.output()
}

/// What `nix build --no-link --json INSTALLABLE` (in `dir`) built: its `out` output, or its
/// first. The outer error: Nix could not be run; the inner: Nix's own error output.
pub fn build(installable: &str, dir: Option<&Path>) -> std::io::Result<Result<PathBuf, String>> {
    Ok(build_outputs(installable, dir)?.and_then(|outputs| outputs.into_iter().next().ok_or_else(|| format!("nix build {installable} gave no output path"))))
}

/// Every output `nix build --no-link --json INSTALLABLE` built (several with `^out,man` or
/// `^*`), `out` first, then by name.
pub fn build_outputs(installable: &str, dir: Option<&Path>) -> std::io::Result<Result<Vec<PathBuf>, String>> {
    let output = run(&["build", "--no-link", "--json", installable], dir)?;
    if !output.status.success() {
        return Ok(Err(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    #[derive(serde::Deserialize)]
    struct Built {
        outputs: BTreeMap<String, String>,
    }
    let built: Vec<Built> = match serde_json::from_slice(&output.stdout) {
        Ok(built) => built,
        Err(e) => return Ok(Err(format!("unexpected output of nix build: {e}"))),
    };
    let mut outputs: Vec<(bool, String, String)> = built.into_iter().flat_map(|b| b.outputs).map(|(name, path)| (name != "out", name, path)).collect();
    outputs.sort();
    if outputs.is_empty() {
        return Ok(Err(format!("nix build {installable} gave no output path")));
    }
    Ok(Ok(outputs.into_iter().map(|(_, _, path)| PathBuf::from(path)).collect()))
}
