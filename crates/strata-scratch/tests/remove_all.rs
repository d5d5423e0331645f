//! `remove_all`, in a process of its own (it removes every scratch of the process it runs in).

use std::time::Duration;

use strata_scratch::{remove_all, ScratchDir, ScratchFile};

fn names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// What a signal handler sees: every scratch made so far is removed, and a thread that
/// makes one while the handler holds the lock makes nothing on disk until it is released
/// (the process exits first, in the CLI): nothing is left behind.
#[test]
fn nothing_is_made_while_remove_all_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let made = ScratchDir::new_in(dir.path(), "before").unwrap();
    let guard = remove_all();
    assert!(!made.path().exists(), "a live scratch survived remove_all");
    let d = dir.path().to_owned();
    let maker = std::thread::spawn(move || ScratchFile::new_in(&d, "during").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(names(dir.path()), Vec::<String>::new(), "a scratch was made while remove_all held the lock");
    drop(guard);
    let during = maker.join().unwrap();
    assert!(during.path().exists());
    drop(during);
    drop(made);
    assert_eq!(names(dir.path()), Vec::<String>::new());
}
