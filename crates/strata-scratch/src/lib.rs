//! Scratch files and directories: everything strata writes before it is complete.
//!
//! Outputs are never written in place. Each is made as a scratch file (or directory) named
//! `.<stem>.<random>.partial`, beside its destination or in the temporary directory, and
//! renamed into place once complete ([`ScratchFile::persist`]), flushed to disk first, so that
//! a power cut too leaves the old content or the new. (What a rename would wrongly replace,
//! a device, a fifo, the process's own standard output, is written through: [`OutputFile`].
//! A file staged inside a scratch directory for an archive, which is flushed itself, is
//! renamed unflushed: [`ScratchFile::persist_new_staged`].) Three promises hold:
//!
//! - **Removed when not needed.** Dropping a scratch removes it (an error on the way, a
//!   panic), and [`remove_all`] removes every live one: the CLI calls it on SIGINT and SIGTERM
//!   before it exits. A scratch is made and registered under one lock, which persisting and
//!   [`remove_all`] take too: a signal leaves no scratch behind (not even one being made at
//!   that moment), and the destination either as it was or complete, never half-written.
//! - **A killed run's leftovers go with the next run.** A process killed with `-9` runs no
//!   cleanup. So every scratch is locked (`flock`) by its owner for its whole life, and
//!   making a scratch first sweeps the same directory for `.<stem>.*.partial` entries whose
//!   lock can be taken: their owner is gone. The one race, a sweeper taking the lock of a
//!   scratch just created and not yet locked, is closed on the creator's side: after locking,
//!   it checks that its path still names its file, and otherwise starts again.
//! - **Modes as tar and skopeo make them.** Files are created 0666 and directories 0777, less
//!   the umask (the kernel applies it), not 0600.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};

/// Paths of live scratch files and directories of this process.
static LIVE: LazyLock<Mutex<BTreeSet<PathBuf>>> = LazyLock::new(|| Mutex::new(BTreeSet::new()));

fn live() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    // A panic while holding the lock leaves a set that is still correct.
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every live scratch of this process and returns holding the lock, so that no scratch
/// is persisted or made afterwards. For a signal handler that exits right after.
pub fn remove_all() -> impl Drop {
    let guard = live();
    // Other threads go on until the process exits, but none can make, register or persist
    // a scratch any more (each does so holding this lock). A thread may still be writing
    // inside a scratch directory, so removing it can fail once (not empty): a few passes.
    for _ in 0..20 {
        for path in guard.iter() {
            let _ = remove_any(path);
        }
        if guard.iter().all(|p| std::fs::symlink_metadata(p).is_err()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    guard
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The directory `path` is in (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The directory a scratch beside `dest` goes in, checked before anything is written: it
/// must exist and be a directory, and a file's `dest` must not be a directory (nor end in
/// `/`). Left to the final rename, these failed after all the work, and the message named
/// the scratch, not what is wrong.
fn dir_beside(dest: &Path, making_file: bool) -> io::Result<&Path> {
    let refuse = |kind, why: String| Err(io::Error::new(kind, why));
    if making_file && dest.as_os_str().as_bytes().ends_with(b"/") {
        return refuse(io::ErrorKind::IsADirectory, "a path ending in / names a directory, and this is written to a file".into());
    }
    if making_file && dest.is_dir() {
        return refuse(io::ErrorKind::IsADirectory, "it is a directory, and this is written to a file".into());
    }
    let dir = parent_of(dest);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(dir),
        Ok(_) => refuse(io::ErrorKind::NotADirectory, format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => refuse(io::ErrorKind::NotFound, format!("the directory {} does not exist", dir.display())),
        Err(e) => Err(e),
    }
}

/// The stem for scratch beside `dest`: its file name.
fn stem_of(dest: &Path) -> io::Result<String> {
    dest.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a file name", dest.display())))
}

/// Removes `.<stem>.*.partial` entries of `dir` that no live process holds.
fn sweep(dir: &Path, stem: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{stem}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if !(bytes.starts_with(prefix.as_bytes()) && bytes.ends_with(b".partial")) {
            continue;
        }
        let path = entry.path();
        if live().contains(&path) {
            continue;
        }
        // Opening never follows a link: a link is nobody's scratch, and is removed as it is.
        let Ok(handle) = open_no_follow(&path) else {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        };
        if handle.try_lock().is_ok() {
            tracing::debug!("removing {}, left by a run that was killed", path.display());
            let _ = remove_any(&path);
        }
    }
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// Locks `handle` and checks that `path` still names it (a sweeper may have removed it
/// between its creation and the lock).
fn lock_and_check(handle: &File, path: &Path) -> io::Result<bool> {
    handle.lock()?;
    let (ours, there) = (handle.metadata()?, std::fs::symlink_metadata(path));
    Ok(there.is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev()))
}

/// Makes a scratch with `make` and registers it (its path is `path`), holding the lock of
/// the live set throughout: [`remove_all`] then sees every scratch on disk, since a thread
/// that would make one after it took the lock waits before making anything.
fn registered<T>(make: impl FnOnce() -> io::Result<T>, path: impl Fn(&T) -> &Path) -> io::Result<T> {
    let mut live = live();
    let made = make()?;
    live.insert(path(&made).to_owned());
    Ok(made)
}

/// Runs `make` with a builder of `.<stem>.<random>.partial` names created with `mode`.
fn with_builder<T>(stem: &str, mode: u32, make: impl FnOnce(&tempfile::Builder) -> io::Result<T>) -> io::Result<T> {
    let prefix = format!(".{stem}.");
    make(tempfile::Builder::new().prefix(&prefix).suffix(".partial").rand_bytes(10).permissions(Permissions::from_mode(mode)))
}

/// A file being written; removed on drop unless persisted.
pub struct ScratchFile {
    /// `None` once persisted.
    file: Option<tempfile::NamedTempFile>,
}

impl ScratchFile {
    /// A scratch file beside `dest`, for writing `dest`.
    pub fn beside(dest: &Path) -> io::Result<ScratchFile> {
        ScratchFile::new_in(dir_beside(dest, true)?, &stem_of(dest)?)
    }

    /// A scratch file in the temporary directory.
    pub fn temporary() -> io::Result<ScratchFile> {
        ScratchFile::new_in(&std::env::temp_dir(), "strata")
    }

    /// A scratch file `.<stem>.<random>.partial` in `dir`.
    pub fn new_in(dir: &Path, stem: &str) -> io::Result<ScratchFile> {
        sweep(dir, stem);
        loop {
            let file = registered(|| with_builder(stem, 0o666, |b| b.tempfile_in(dir)), tempfile::NamedTempFile::path)?;
            if lock_and_check(file.as_file(), file.path())? {
                return Ok(ScratchFile { file: Some(file) });
            }
            live().remove(file.path());
        }
    }

    fn file(&self) -> &tempfile::NamedTempFile {
        self.file.as_ref().expect("only persist takes the file")
    }

    pub fn path(&self) -> &Path {
        self.file().path()
    }

    pub fn as_file(&self) -> &File {
        self.file().as_file()
    }

    /// Another handle on the same file.
    pub fn reopen(&self) -> io::Result<File> {
        self.file().reopen()
    }

    /// Flushes the file to disk and renames it to `dest`, replacing what is there.
    pub fn persist(self, dest: &Path) -> io::Result<()> {
        self.as_file().sync_all()?;
        self.rename(dest)
    }

    /// Renames the file to `dest` as it is, flushed or not.
    fn rename(mut self, dest: &Path) -> io::Result<()> {
        let mut live = live();
        let file = self.file.take().expect("persisted once");
        let path = file.path().to_owned();
        match file.persist(dest) {
            Ok(_) => {
                live.remove(&path);
                Ok(())
            }
            Err(e) => {
                self.file = Some(e.file);
                Err(e.error)
            }
        }
    }

    /// Writes `bytes` to `dest` whole: into a scratch file `stem` in `dir` (where the scratch
    /// files of `dest` belong), flushed, then renamed over `dest`.
    pub fn write_whole(dir: &Path, stem: &str, dest: &Path, bytes: &[u8]) -> io::Result<()> {
        ScratchFile::holding(dir, stem, bytes)?.persist(dest)
    }

    /// A scratch file `stem` in `dir` holding `bytes`, not yet persisted.
    pub fn holding(dir: &Path, stem: &str, bytes: &[u8]) -> io::Result<ScratchFile> {
        let scratch = ScratchFile::new_in(dir, stem)?;
        io::Write::write_all(&mut scratch.as_file(), bytes)?;
        Ok(scratch)
    }

    /// Like [`persist`](Self::persist), but leaves an existing `dest` as it is (for blobs
    /// named by their digest, where what is there is the same).
    pub fn persist_new(self, dest: &Path) -> io::Result<()> {
        if dest.exists() {
            return Ok(()); // dropping self removes the scratch
        }
        self.persist(dest)
    }

    /// Like [`persist_new`](Self::persist_new), but not flushed to disk: for a file staged in
    /// a scratch directory for something else that is flushed itself (an archive's member), so
    /// that a power cut loses the staging directory whole. Flushing it would only cost time.
    pub fn persist_new_staged(self, dest: &Path) -> io::Result<()> {
        if dest.exists() {
            return Ok(());
        }
        self.rename(dest)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            live().remove(file.path());
        }
    }
}

/// A directory being filled; removed with its contents on drop unless persisted.
pub struct ScratchDir {
    dir: Option<tempfile::TempDir>,
    _lock: File,
}

impl ScratchDir {
    /// A scratch directory beside `dest`, for making `dest`.
    pub fn beside(dest: &Path) -> io::Result<ScratchDir> {
        ScratchDir::new_in(dir_beside(dest, false)?, &stem_of(dest)?)
    }

    /// A scratch directory in the temporary directory.
    pub fn temporary() -> io::Result<ScratchDir> {
        ScratchDir::new_in(&std::env::temp_dir(), "strata")
    }

    pub fn new_in(parent: &Path, stem: &str) -> io::Result<ScratchDir> {
        sweep(parent, stem);
        loop {
            let dir = registered(|| with_builder(stem, 0o777, |b| b.tempdir_in(parent)), tempfile::TempDir::path)?;
            // Made, then opened: another process sweeping `parent` may remove it in between
            // (it is not locked yet, so it looks like a killed run's), or after the open and
            // before the lock (`lock_and_check`). Either way another is made.
            let locked = match File::open(dir.path()) {
                Ok(lock) => lock_and_check(&lock, dir.path())?.then_some(lock),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if let Some(lock) = locked {
                return Ok(ScratchDir { dir: Some(dir), _lock: lock });
            }
            live().remove(dir.path());
            let _ = dir.keep(); // someone else removed it already
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("only persist takes the directory").path()
    }

    /// Puts the directory at `dest`, replacing what is there in one step: the two are
    /// exchanged (`renameat2` with `RENAME_EXCHANGE` on Linux, `renameatx_np` with
    /// `RENAME_SWAP` on macOS), and the old content, now here, is removed with this scratch
    /// directory. Where `dest` does not exist, [`persist`](Self::persist).
    pub fn replace(&mut self, dest: &Path) -> io::Result<()> {
        if std::fs::symlink_metadata(dest).is_err() {
            return self.persist(dest);
        }
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        Ok(renameat_with(CWD, self.path(), CWD, dest, RenameFlags::EXCHANGE)?)
    }

    /// Renames the directory to `dest`, which must not exist (or be an empty directory).
    /// On failure the scratch directory is kept, for the caller to use otherwise.
    pub fn persist(&mut self, dest: &Path) -> io::Result<()> {
        let mut live = live();
        let path = self.path().to_owned();
        std::fs::rename(&path, dest)?;
        live.remove(&path);
        let _ = self.dir.take().map(tempfile::TempDir::keep);
        Ok(())
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            live().remove(dir.path());
        }
    }
}

/// Whether `name` is one of strata's scratch entries (of any stem).
pub fn is_scratch_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    bytes.starts_with(b".") && bytes.ends_with(b".partial")
}

/// An output file a command writes (an archive, an exported tar, an SBOM): a scratch file
/// [`beside`](ScratchFile::beside) it, renamed over it by [`commit`](Self::commit). Three
/// kinds of `dest` are not replaced, as `tar -f` and `cp` would not replace them:
///
/// - this process's own standard output, however named (`/dev/stdout`, `/dev/fd/1`, a link
///   to the file the shell redirected it to): written through it, as the shell opened it
///   (`>>` appends);
/// - anything but a regular file or a directory (`/dev/null`, a fifo, `>(…)`): written in
///   place; renaming over it would replace the device or the fifo with a regular file;
/// - a symbolic link to a regular file: the file it names is replaced, the link stays.
pub struct OutputFile {
    dest: PathBuf,
    target: OutputTarget,
}

enum OutputTarget {
    InPlace(File),
    Scratch(ScratchFile),
}

impl OutputFile {
    /// Opens the output for `dest`; a destination that cannot be written (a directory, a
    /// missing directory) fails here, before any work.
    pub fn create(dest: &Path) -> io::Result<OutputFile> {
        let in_place = |file| Ok(OutputFile { dest: dest.to_owned(), target: OutputTarget::InPlace(file) });
        if let Ok(meta) = std::fs::metadata(dest) {
            // (Standard output may be closed: then it is nothing `dest` could be.)
            if let Ok(stdout) = std::os::fd::AsFd::as_fd(&io::stdout()).try_clone_to_owned().map(File::from) {
                if stdout.metadata().is_ok_and(|out| (out.dev(), out.ino()) == (meta.dev(), meta.ino())) {
                    return in_place(stdout);
                }
            }
            if !meta.is_file() && !meta.is_dir() {
                return in_place(std::fs::OpenOptions::new().write(true).open(dest)?);
            }
            if meta.is_file() && std::fs::symlink_metadata(dest)?.is_symlink() {
                let target = std::fs::canonicalize(dest)?;
                return Ok(OutputFile { target: OutputTarget::Scratch(ScratchFile::beside(&target)?), dest: target });
            }
        }
        Ok(OutputFile { dest: dest.to_owned(), target: OutputTarget::Scratch(ScratchFile::beside(dest)?) })
    }

    /// Writes `bytes` to `dest` whole, or leaves it as it was.
    pub fn write_whole(dest: &Path, bytes: &[u8]) -> io::Result<()> {
        let output = OutputFile::create(dest)?;
        io::Write::write_all(&mut output.as_file(), bytes)?;
        output.commit()
    }

    /// Whether `dest` is written in place (a device, a fifo, a socket).
    pub fn in_place(&self) -> bool {
        matches!(self.target, OutputTarget::InPlace(_))
    }

    /// What to write to.
    pub fn as_file(&self) -> &File {
        match &self.target {
            OutputTarget::InPlace(file) => file,
            OutputTarget::Scratch(scratch) => scratch.as_file(),
        }
    }

    /// Puts what was written in place: the scratch file, flushed, renamed over `dest`.
    /// Dropped without a commit, the scratch file is removed and `dest` is as it was.
    pub fn commit(self) -> io::Result<()> {
        match self.target {
            OutputTarget::InPlace(_) => Ok(()),
            OutputTarget::Scratch(scratch) => scratch.persist(&self.dest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn persisted_files_have_umask_modes_and_dropped_ones_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        let scratch = ScratchFile::beside(&dest).unwrap();
        assert!(scratch.path().file_name().unwrap().to_string_lossy().starts_with(".out.tar."));
        drop(scratch);
        assert!(names(dir.path()).is_empty());
        let scratch = ScratchFile::beside(&dest).unwrap();
        std::io::Write::write_all(&mut scratch.as_file(), b"x").unwrap();
        scratch.persist(&dest).unwrap();
        assert_eq!(names(dir.path()), ["out.tar"]);
        // The test process's umask is 022 on CI and developer machines alike.
        let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        rustix::process::umask(umask);
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o666 & !umask.as_raw_mode() as u32);
    }

    /// What cannot be written is refused when the output is opened, saying why; nothing is
    /// made. A file written whole replaces a regular file; a fifo is written through.
    #[test]
    fn outputs_refuse_what_cannot_be_written_and_write_fifos_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |dest: &Path| OutputFile::create(dest).err().unwrap_or_else(|| panic!("{} accepted", dest.display())).to_string();
        assert!(refused(dir.path()).contains("it is a directory"));
        assert!(refused(&dir.path().join("new/")).contains("a path ending in / names a directory"));
        assert!(refused(&dir.path().join("missing/out")).contains(&format!("the directory {}/missing does not exist", dir.path().display())));
        std::fs::write(dir.path().join("file"), b"old").unwrap();
        assert!(refused(&dir.path().join("file/out")).contains("is not a directory"));
        assert!(ScratchDir::beside(&dir.path().join("missing/layout")).is_err());
        assert_eq!(names(dir.path()), ["file"]);

        OutputFile::write_whole(&dir.path().join("file"), b"new").unwrap();
        assert_eq!(std::fs::read(dir.path().join("file")).unwrap(), b"new");
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || std::fs::read(fifo).unwrap()
        });
        let output = OutputFile::create(&fifo).unwrap();
        assert!(output.in_place());
        io::Write::write_all(&mut output.as_file(), b"through").unwrap();
        output.commit().unwrap();
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "still a fifo");
        assert_eq!(reader.join().unwrap(), b"through");
        assert_eq!(names(dir.path()), ["fifo", "file"]);
    }

    #[test]
    fn leftovers_of_dead_owners_are_swept_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        // A leftover: a scratch name nobody locks.
        std::fs::write(dir.path().join(".x.dead.partial"), b"old").unwrap();
        std::fs::create_dir(dir.path().join(".x.deaddir.partial")).unwrap();
        std::fs::write(dir.path().join(".other.dead.partial"), b"old").unwrap();
        let first = ScratchFile::beside(&dest).unwrap();
        let left = names(dir.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&".other.dead.partial".to_owned()), "another stem is not touched");
        // A live one (locked by another open file description) survives a sweep.
        let second = ScratchDir::beside(&dest).unwrap();
        assert!(first.path().exists() && second.path().exists());
        drop((first, second));
        assert_eq!(names(dir.path()), [".other.dead.partial"]);
    }
}
