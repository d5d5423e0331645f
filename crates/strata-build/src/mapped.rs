//! Windows of files mapped into memory, which a file shrinking under them cannot crash.
//!
//! A layer's files are mapped rather than read (see `layer::FileContents`): their pages are
//! hashed where the page cache holds them, never copied. But a page of a mapping that lies
//! past the end of its file, because the file was truncated after it was mapped, cannot be
//! read: the kernel sends `SIGBUS`, whose default action kills the process in the middle of
//! whatever it was writing.
//!
//! So each [`Window`] is entered in a small table while it lives, and a `SIGBUS` handler
//! (installed with the first window, chained to the handler before it) that finds the
//! faulting address in a window of the table maps a page of zeros there, marks the window,
//! and returns: the read goes on, finding zeros, and the window's owner, told by
//! [`Window::shrank`], reports the file as changed, so nothing made of those zeros is ever
//! committed. A `SIGBUS` elsewhere goes to the handler before (Rust's own, which lets the
//! default action kill the process). EFL's `eina_mmap` and Sapling's indexedlog do the same.
//!
//! Written here because no well-kept crate does it: memmap2 maps, and leaves `SIGBUS` to
//! its callers.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A window of a file mapped read-only, in the table while it lives.
pub struct Window {
    map: memmap2::Mmap,
    slot: &'static Slot,
}

impl Window {
    /// Maps `len` bytes of `file` from `offset`, its pages read in now. Fails if the handler cannot be installed or the table is full (the caller
    /// reads instead), or if the file cannot be mapped.
    pub fn map(file: &File, offset: u64, len: usize) -> io::Result<Window> {
        install()?;
        // SAFETY: the mapping is only ever read; a page of it that its file no longer has
        // reads as zeros (see the module's essay) rather than raise SIGBUS.
        let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).populate().map(file)? };
        let start = map.as_ptr() as usize;
        let slot = SLOTS
            .iter()
            .find(|slot| slot.start.compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire).is_ok())
            .ok_or_else(|| io::Error::other("too many files mapped at once"))?;
        slot.shrank.store(false, Ordering::Release);
        slot.end.store(start + len, Ordering::Release);
        Ok(Window { map, slot })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Whether part of the window was gone from its file when it was read (and read as
    /// zeros).
    pub fn shrank(&self) -> bool {
        self.slot.shrank.load(Ordering::Acquire)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Out of the table before it is unmapped (the field drops after this).
        self.slot.end.store(0, Ordering::Release);
        self.slot.start.store(0, Ordering::Release);
    }
}

/// A window in the table: `start..end` (0 when free), and whether a page of it was replaced.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    shrank: AtomicBool,
}

impl Slot {
    /// The window's range, read whole: a window is entered start first, end last, and taken
    /// out end first, so a start that is the same before and after the end is read belongs
    /// with it (a slot changing hands as it is read could otherwise give the start of one
    /// window and the end of the next, a range holding a third window's pages).
    fn range(&self) -> Option<(usize, usize)> {
        loop {
            let start = self.start.load(Ordering::Acquire);
            let end = self.end.load(Ordering::Acquire);
            if self.start.load(Ordering::Acquire) == start {
                return (start != 0 && end != 0).then_some((start, end));
            }
        }
    }
}

/// As many windows as can be mapped at once; a reader holds one, and readers are a few a core.
const SLOTS_LEN: usize = 256;
#[allow(clippy::declare_interior_mutable_const)] // only to fill the table
const FREE: Slot = Slot { start: AtomicUsize::new(0), end: AtomicUsize::new(0), shrank: AtomicBool::new(false) };
static SLOTS: [Slot; SLOTS_LEN] = [FREE; SLOTS_LEN];

/// The page size, and the handler that was there before ours.
static INSTALLED: OnceLock<Result<(usize, libc::sigaction), i32>> = OnceLock::new();

fn install() -> io::Result<()> {
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: sysconf and sigaction with structures this function owns; the handler
        // only reads the table, maps a page and calls the handler before.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut before: libc::sigaction = std::mem::zeroed();
            if page <= 0 || libc::sigaction(libc::SIGBUS, &action, &mut before) != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok((page as usize, before))
        }
    });
    installed.as_ref().map(|_| ()).map_err(|&e| io::Error::from_raw_os_error(e))
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(Ok((page, before))) = INSTALLED.get() else { return };
    // SAFETY: the kernel hands a SA_SIGINFO handler a valid siginfo_t.
    let address = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        let Some((start, end)) = slot.range() else { continue };
        if (start..end).contains(&address) {
            let at = address & !(page - 1);
            // SAFETY: the page is inside a live window, which only this process reads; a
            // private page of zeros takes its place, and the window's munmap removes it too.
            let zeros =
                unsafe { libc::mmap(at as *mut libc::c_void, *page, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED, -1, 0) };
            if zeros != libc::MAP_FAILED {
                slot.shrank.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not a window's: the handler before decides, or the default action (back to it, the
    // fault happens again when this returns, and kills the process as it would have).
    if before.sa_sigaction != libc::SIG_DFL && before.sa_sigaction != libc::SIG_IGN && before.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: a SA_SIGINFO handler installed before ours, called as the kernel would.
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(before.sa_sigaction) };
        handler(signal, info, context);
    } else {
        // SAFETY: sigaction with a structure of this function's own.
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file truncated under its window reads as zeros, and the window says so; a window of
    /// a file left alone does not. (Cut to nothing: a file cut in the middle of a large page
    /// of the page cache may have that page zeroed rather than dropped, without a fault.)
    #[test]
    fn a_file_shrinking_under_its_window_reads_as_zeros_and_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let (cut, kept) = (dir.path().join("cut"), dir.path().join("kept"));
        std::fs::write(&cut, vec![7u8; 1 << 20]).unwrap();
        std::fs::write(&kept, vec![7u8; 1 << 20]).unwrap();
        let untouched = Window::map(&File::open(&kept).unwrap(), 0, 1 << 20).unwrap();
        let window = Window::map(&File::open(&cut).unwrap(), 512 << 10, 512 << 10).unwrap();
        std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(0).unwrap();
        assert!(window.bytes().iter().all(|&b| b == 0), "the bytes gone read as zeros");
        assert!(window.shrank());
        assert!(untouched.bytes().iter().all(|&b| b == 7) && !untouched.shrank());
        drop(window);
        let again = Window::map(&File::open(&kept).unwrap(), 0, 64 << 10).unwrap();
        assert!(!again.shrank(), "a slot is clean when it is taken again");
    }
}
