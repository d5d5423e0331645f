//! The 512-byte ustar headers of the tars strata writes (layers, docker-archives, OCI
//! archives), filled through the `tar` crate's `Header` with fixed owners and times: the
//! streams around them are written by their writers, which know every size in advance.

use tar::{EntryType, Header};

/// The largest value of ustar's 11-digit octal size field, and of the 7-digit id fields.
pub const USTAR_MAX_SIZE: u64 = 0o77777777777;
pub const USTAR_MAX_ID: u32 = 0o7777777;

/// A ustar header. Names and link targets longer than 100 bytes are cut here; the PAX record
/// written before the header carries them whole.
#[allow(clippy::too_many_arguments)]
pub fn header(name: &[u8], kind: EntryType, mode: u32, uid: u32, gid: u32, size: u64, mtime: u64, link: &[u8]) -> Header {
    let mut h = Header::new_ustar();
    let old = h.as_old_mut();
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    old.linkname[..l].copy_from_slice(&link[..l]);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(u64::from(uid.min(USTAR_MAX_ID)));
    h.set_gid(u64::from(gid.min(USTAR_MAX_ID)));
    h.set_size(size.min(USTAR_MAX_SIZE));
    h.set_mtime(mtime);
    h.set_cksum();
    h
}
