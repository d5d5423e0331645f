//! Processes making scratch directories beside one destination at once, each sweeping what it
//! takes for a killed run's leftovers as it makes one (as concurrent writers to one OCI layout
//! do): every one is made, and none is left.

use std::path::Path;
use std::process::{Command, Stdio};

use strata_scratch::ScratchDir;

/// Set in the child processes: the directory they all make their scratch directories in.
const PARENT: &str = "STRATA_SCRATCH_TEST_PARENT";
const NAME: &str = "processes_making_scratch_directories_at_once_all_succeed";

/// Runs itself in four processes at once (this test again, with [`PARENT`] set), each making
/// and dropping scratch directories in one directory.
#[test]
fn processes_making_scratch_directories_at_once_all_succeed() {
    if let Some(parent) = std::env::var_os(PARENT) {
        for i in 0..400 {
            let dir = ScratchDir::new_in(Path::new(&parent), "layout").unwrap_or_else(|e| panic!("scratch directory {i}: {e}"));
            assert!(dir.path().is_dir());
        }
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut child = Command::new(&me);
            child.args(["--exact", NAME, "--nocapture", "--test-threads", "1"]).env(PARENT, parent.path());
            child.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "a process failed to make a scratch directory: {}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains("1 passed"), "the child ran no test: {said}");
    }
    let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
