//! Layers as recipes: an ordered list of tar entries read from the store, from which the
//! deterministic tar can be written any number of times, and whose exact size is known
//! before a byte is written (so a docker-archive can be streamed in one pass).
//!
//! What makes the tar deterministic:
//! - entries in depth-first order with siblings sorted by their bytes (GNU `tar --sort=name`),
//!   `nix` and `nix/store` (0755) before any store path;
//! - every mtime is the spec's `created`; uid/gid 0 and empty owner names unless a perm rule
//!   says otherwise; modes exactly as in the store;
//! - names of any length and any bytes kept exact through PAX `path`/`linkpath` records
//!   (also `size`, `uid`, `gid` when they overflow ustar's octal fields);
//! - a regular file of 4 KiB or more whose bytes and header (mode, owners) equal those of an
//!   earlier file of the same layer is written as a tar hard link to it. The decision is
//!   made on contents alone, never on the store's own hard links: whether the store was
//!   optimised (`nix-store --optimise` turns identical files into hard links) does not change
//!   the image. Its links only spare reading: files that are one inode are equal without
//!   being read; files that could be equal (same size and header, other inodes) are hashed
//!   when the recipe is made. A layer with duplicated files is then hashed, compressed,
//!   pushed and stored once per contents, as `tar` does for an optimised tree;
//! - symlinks are kept as they are, dangling ones too, and never followed: a store path that
//!   is itself a link (`ln -s /etc $out`) is a link in the image, and a file is opened only if
//!   it is still a regular file, not a link put in its place; no walk leaves the tree it
//!   archives. Fifos, sockets and devices cannot be in a Nix store path and are skipped with
//!   a warning.
//!
//! The 512-byte headers are filled through the `tar` crate's `Header`; the stream around
//! them is written here because the crate's `Builder` neither precomputes sizes nor writes
//! PAX names deterministically.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use strata_oci::ustar::{header, USTAR_MAX_ID, USTAR_MAX_SIZE};
use tar::EntryType;

use crate::mapped::Window;
use crate::spec::PermRule;
use crate::store::StorePath;
use strata_oci::digest::{Digest, HashingWriter};
use strata_oci::image::{LayerTar, TarError, TarPieces};
use strata_oci::sha256::Sha256;

const BLOCK: u64 = 512;
/// Reads of a file's contents that is not mapped (see [`FileContents`]), at most this much at once.
const COPY_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} changed while the image was being written (it was {expected} bytes)")]
    Changed { path: PathBuf, expected: u64 },
    #[error("{path}: a tree laid over / (copy_to_root, link_to_root) must be a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: copy_to_root needs a directory, not a symlink (to {target}): its tree would not be the store path's own")]
    RootIsSymlink { path: PathBuf, target: PathBuf },
    #[error("cannot write the layer")]
    Write(#[source] io::Error),
}

/// What a tar entry is, and where its bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File {
        source: PathBuf,
        size: u64,
        /// The file's inode and change time when it was scanned: see [`LayerRecipe::fingerprint`].
        stamp: FileStamp,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A file whose contents strata makes (`/etc/passwd` of an environment, say).
    Contents(Vec<u8>),
    /// A regular file with the same bytes and header as the earlier entry `target` (a path
    /// in the same layer): a tar hard link to it. Made by [`LayerRecipe::new`] only.
    HardLink {
        target: Vec<u8>,
    },
}

/// What changes whenever a file does: its inode number (a file replaced is a new inode) and
/// its change time (which the kernel sets on every write, chmod or link, and nobody can set
/// back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    pub device: u64,
    pub inode: u64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp { device: meta.dev(), inode: meta.ino(), ctime: meta.ctime(), ctime_nsec: meta.ctime_nsec() }
    }
}

/// One tar entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name inside the tar: relative, `/`-separated, no trailing slash.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The owner's user and group names in the tar header (nix2container's `uname`,
    /// `gname`); empty by default, as numeric owners need none.
    pub uname: String,
    pub gname: String,
}

impl Entry {
    pub fn directory(path: &[u8], mode: u32) -> Entry {
        Entry { path: path.to_vec(), kind: EntryKind::Directory, mode, uid: 0, gid: 0, uname: String::new(), gname: String::new() }
    }

    pub fn symlink(path: &[u8], target: &[u8]) -> Entry {
        Entry {
            path: path.to_vec(),
            kind: EntryKind::Symlink { target: target.to_vec() },
            mode: 0o777,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
        }
    }

    pub fn contents(path: &[u8], data: Vec<u8>, mode: u32) -> Entry {
        Entry { path: path.to_vec(), kind: EntryKind::Contents(data), mode, uid: 0, gid: 0, uname: String::new(), gname: String::new() }
    }

    fn data_len(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            EntryKind::Contents(data) => data.len() as u64,
            _ => 0,
        }
    }

    /// PAX records this entry needs, or an empty buffer.
    fn pax_records(&self) -> Vec<u8> {
        let mut records = Vec::new();
        if self.path.len() > 100 {
            pax_record(&mut records, "path", &self.path);
        }
        if let EntryKind::Symlink { target } | EntryKind::HardLink { target } = &self.kind {
            if target.len() > 100 {
                pax_record(&mut records, "linkpath", target);
            }
        }
        if self.data_len() > USTAR_MAX_SIZE {
            pax_record(&mut records, "size", self.data_len().to_string().as_bytes());
        }
        for (key, id) in [("uid", self.uid), ("gid", self.gid)] {
            if id > USTAR_MAX_ID {
                pax_record(&mut records, key, id.to_string().as_bytes());
            }
        }
        records
    }

    /// Bytes this entry takes in the tar: optional PAX header, header, padded data.
    fn tar_len(&self) -> u64 {
        let pax = self.pax_records();
        let pax_len = if pax.is_empty() { 0 } else { BLOCK + padded(pax.len() as u64) };
        pax_len + BLOCK + padded(self.data_len())
    }
}

/// Appends one `"<len> <key>=<value>\n"` record, whose length counts its own digits.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

impl From<LayerError> for TarError {
    fn from(e: LayerError) -> TarError {
        match e {
            LayerError::Write(e) => TarError::Write(e),
            other => TarError::Source(Box::new(other)),
        }
    }
}

impl LayerTar for LayerRecipe {
    fn tar_len(&self) -> u64 {
        LayerRecipe::tar_len(self)
    }

    fn pieces(&self) -> Box<dyn TarPieces + '_> {
        Box::new(self.reader())
    }

    fn write_tar_direct<W: Write>(&self, out: &mut W) -> Result<(), TarError> {
        Ok(LayerRecipe::write_tar_direct(self, out)?)
    }

    fn fingerprint(&self) -> Digest {
        LayerRecipe::fingerprint(self)
    }

    fn comment(&self) -> &str {
        &self.comment
    }

    fn created_by(&self) -> &str {
        self.created_by.as_deref().unwrap_or("strata")
    }

    fn author(&self) -> Option<&str> {
        self.author.as_deref()
    }
}

/// The entries that link `trees` from `/`, as nixpkgs' `symlinkJoin` (lndir) joins them, in
/// order: every directory of a tree made (mode 0755), every other entry a symlink to its
/// path in the store; on a clash, the earlier tree's entry stays. dockerTools' `contents`.
pub fn link_trees(trees: &[crate::store::StorePath]) -> Result<Vec<Entry>, LayerError> {
    let mut by_path: std::collections::BTreeMap<Vec<u8>, Entry> = std::collections::BTreeMap::new();
    fn walk(dir: &Path, rel: &[u8], by_path: &mut std::collections::BTreeMap<Vec<u8>, Entry>) -> Result<(), LayerError> {
        let read_err = |source| LayerError::Read { path: dir.to_owned(), source };
        let mut children: Vec<std::fs::DirEntry> = std::fs::read_dir(dir).map_err(read_err)?.collect::<Result<_, _>>().map_err(read_err)?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child.file_name();
            let path = if rel.is_empty() { name.as_bytes().to_vec() } else { [rel, b"/", name.as_bytes()].concat() };
            let is_dir = child.file_type().map_err(|source| LayerError::Read { path: child.path(), source })?.is_dir();
            match (is_dir, by_path.get(&path).map(|e| e.kind == EntryKind::Directory)) {
                (true, None) => {
                    by_path.insert(path.clone(), Entry::directory(&path, 0o755));
                    walk(&child.path(), &path, by_path)?;
                }
                (true, Some(true)) => walk(&child.path(), &path, by_path)?,
                (false, None) => {
                    by_path.insert(path.clone(), Entry::symlink(&path, child.path().as_os_str().as_bytes()));
                }
                // The earlier tree's entry stays.
                (_, Some(_)) => {}
            }
        }
        Ok(())
    }
    for tree in trees {
        let root = Path::new(tree.as_str());
        let read_err = |source| LayerError::Read { path: root.to_owned(), source };
        // A store path that is a link to a directory in the store is joined through it, as
        // lndir does (its entries link through the link); a link anywhere else is not followed.
        let resolved = std::fs::canonicalize(root).map_err(read_err)?;
        let store = root.parent().unwrap_or(root);
        if !std::fs::metadata(&resolved).map_err(read_err)?.is_dir() || !resolved.starts_with(store) {
            return Err(LayerError::NotADirectory { path: root.to_owned() });
        }
        walk(root, b"", &mut by_path)?;
    }
    Ok(by_path.into_values().collect())
}

/// Lays `tree` over `below` as `rsync --keep-dirlinks` does (dockerTools' buildImage with
/// `keepContentsDirlinks`): where `below` has a symlink to one of its own directories (`lib ->
/// usr/lib`), the tree's entries under that name go into the directory it points to, and the
/// link stays. Links that leave `below` (into the store, say) are laid over as any entry is.
pub fn through_dirlinks(below: &[Entry], tree: Vec<Entry>) -> Vec<Entry> {
    let by_path: HashMap<&[u8], &Entry> = below.iter().map(|e| (e.path.as_slice(), e)).collect();
    // The directory of `below` that the link at `path` points to, if it is one.
    let dir_of_link = |path: &[u8]| -> Option<Vec<u8>> {
        let mut at = path.to_vec();
        for _ in 0..8 {
            let EntryKind::Symlink { target } = &by_path.get(at.as_slice())?.kind else {
                return (by_path.get(at.as_slice())?.kind == EntryKind::Directory).then_some(at);
            };
            let parent: &[u8] = at.iter().rposition(|b| *b == b'/').map_or(b"", |i| &at[..i]);
            let start: &[u8] = if target.starts_with(b"/") { b"" } else { parent };
            let mut parts: Vec<&[u8]> = start.split(|b| *b == b'/').filter(|p| !p.is_empty()).collect();
            for part in target.split(|b| *b == b'/') {
                match part {
                    b"" | b"." => {}
                    b".." => {
                        parts.pop()?;
                    }
                    _ => parts.push(part),
                }
            }
            at = parts.join(&b'/');
        }
        None
    };
    tree.into_iter()
        .filter_map(|mut entry| {
            let parts: Vec<Vec<u8>> = entry.path.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
            let mut path: Vec<u8> = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let candidate = if path.is_empty() { part.clone() } else { [&path[..], b"/", part].concat() };
                let is_link = matches!(by_path.get(candidate.as_slice()), Some(e) if matches!(e.kind, EntryKind::Symlink { .. }));
                match (is_link.then(|| dir_of_link(&candidate)).flatten(), i + 1 == parts.len()) {
                    // The link to a directory stays; what the tree has there goes into it.
                    (Some(_), true) if entry.kind == EntryKind::Directory => return None,
                    (Some(dir), false) => path = dir,
                    _ => path = candidate,
                }
            }
            entry.path = path;
            Some(entry)
        })
        .collect()
}

/// Depth-first order with siblings sorted bytewise: compare component by component.
#[cfg(test)]
fn tar_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// A key whose bytewise order is [`tar_order`]: the path with each `/` made the lowest byte,
/// 0, which no name holds (component by component, a shorter component sorts first exactly
/// as when the separator sorts below every byte).
fn tar_order_key(path: &[u8]) -> Vec<u8> {
    path.iter().map(|&c| if c == b'/' { 0 } else { c }).collect()
}

/// The entries of a file tree, named below `prefix` (`nix/store/<hash>-name` for a store
/// path; empty for a tree laid over `/`, whose root itself is then not an entry).
/// Returns the entries and the total size of the regular files.
pub fn scan_tree(source: &Path, prefix: &[u8]) -> Result<(Vec<Entry>, u64), LayerError> {
    let read_err = |path: &Path, source: io::Error| LayerError::Read { path: path.to_owned(), source };
    if prefix.is_empty() {
        let meta = std::fs::symlink_metadata(source).map_err(|e| read_err(source, e))?;
        if meta.is_symlink() {
            let target = std::fs::read_link(source).map_err(|e| read_err(source, e))?;
            return Err(LayerError::RootIsSymlink { path: source.to_owned(), target });
        }
        if !meta.is_dir() {
            return Err(LayerError::NotADirectory { path: source.to_owned() });
        }
    }
    let mut entries = Vec::new();
    let mut total = 0;
    let walk =
        walkdir::WalkDir::new(source).follow_links(false).follow_root_links(false).sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for item in walk {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(source).to_owned();
            LayerError::Read { path, source: e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop")) }
        })?;
        let rel = item.path().strip_prefix(source).expect("walkdir yields paths below its root");
        let mut name = prefix.to_vec();
        if !rel.as_os_str().is_empty() {
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(rel.as_os_str().as_bytes());
        }
        if name.is_empty() {
            continue; // the root of a tree laid over `/`
        }
        let meta = item.metadata().map_err(|e| read_err(item.path(), e.into()))?;
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            EntryKind::Directory
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(|e| read_err(item.path(), e))?;
            EntryKind::Symlink { target: target.as_os_str().as_bytes().to_vec() }
        } else if file_type.is_file() {
            total += meta.len();
            EntryKind::File { source: item.path().to_owned(), size: meta.len(), stamp: FileStamp::of(&meta) }
        } else {
            tracing::warn!("skipping {}: fifos, sockets and devices are not put in images", item.path().display());
            continue;
        };
        entries.push(Entry { path: name, kind, mode: meta.mode() & 0o7777, uid: 0, gid: 0, uname: String::new(), gname: String::new() });
    }
    Ok((entries, total))
}

/// A layer's recipe: its entries in tar order, and the mtime they all get.
#[derive(Debug, Clone)]
pub struct LayerRecipe {
    /// In tar order; fixed once made (`tar_len` is computed from them then).
    entries: Vec<Entry>,
    tar_len: u64,
    pub mtime: u64,
    /// What the layer holds, for the image history.
    pub comment: String,
    /// The store paths whose trees the layer lays over `/` (not in its tar's `nix/store`): what
    /// a bill of materials lists with the layer's store paths.
    pub root_trees: Vec<StorePath>,
    /// The history's `created_by` (strata's when `None`) and author: an explicit layer's
    /// metadata (nix2container's buildLayer `metadata`).
    pub created_by: Option<String>,
    pub author: Option<String>,
    /// The spec's explicit layer (its index in `layers`) this layer is, or a part of.
    pub explicit: Option<usize>,
}

impl LayerRecipe {
    /// Puts `store_trees` (already named `nix/store/…`) and `root_trees` (laid over `/`; a
    /// later tree wins over an earlier one) into tar order, adds the `nix` and `nix/store`
    /// directories, applies the perm rules (a later rule wins), and turns files identical to
    /// an earlier one into hard links to it (reading the files that could be).
    pub fn new(store_trees: Vec<Entry>, root_trees: Vec<Entry>, perms: &[PermRule], mtime: u64, comment: String) -> Result<Self, LayerError> {
        let mut by_path: HashMap<Vec<u8>, Entry> = HashMap::new();
        if !store_trees.is_empty() {
            for dir in [&b"nix"[..], b"nix/store"] {
                by_path.insert(dir.to_vec(), Entry::directory(dir, 0o755));
            }
        }
        for entry in store_trees.into_iter().chain(root_trees) {
            by_path.insert(entry.path.clone(), entry);
        }
        let mut entries: Vec<Entry> = by_path.into_values().collect();
        entries.sort_by_cached_key(|e| tar_order_key(&e.path));
        if !perms.is_empty() {
            for entry in &mut entries {
                let image_path = format!("/{}", String::from_utf8_lossy(&entry.path));
                for rule in perms.iter().filter(|r| r.matcher.matches(&image_path)) {
                    rule.apply(entry);
                }
            }
        }
        link_identical_files(&mut entries)?;
        let tar_len = entries.iter().map(Entry::tar_len).sum::<u64>() + 2 * BLOCK;
        Ok(LayerRecipe { entries, tar_len, mtime, comment, root_trees: vec![], created_by: None, author: None, explicit: None })
    }

    /// A digest of everything the tar's bytes depend on, without reading file contents:
    /// entries, modes, owners, the mtime, and where each file's bytes come from. Files come
    /// from Nix store paths, which never change once built; and each file's [`FileStamp`] is
    /// in it too, so that a store path deleted and built again (with other bytes, if its build
    /// is not reproducible), or a file changed by hand, gives another fingerprint. So equal
    /// fingerprints mean equal tars, and the layer cache keys what it remembers on this.
    pub fn fingerprint(&self) -> Digest {
        self.digest_of_entries(true)
    }

    /// The fingerprint without the files' stamps: the same on every machine that has these
    /// store paths, so a layer's own Nix build can record its digests under this key, and an
    /// image built elsewhere (its store paths substituted from a binary cache) find them. It
    /// relies on what Nix relies on: a store path's contents are the same wherever it is.
    pub fn content_key(&self) -> Digest {
        self.digest_of_entries(false)
    }

    fn digest_of_entries(&self, stamps: bool) -> Digest {
        let mut h = HashingWriter::new(io::sink());
        let mut put = |bytes: &[u8]| {
            h.write_all(&(bytes.len() as u64).to_le_bytes()).and_then(|()| h.write_all(bytes)).expect("a sink takes everything");
        };
        // The version of the tar format: change it with anything that changes a tar's bytes.
        put(if stamps { b"strata layer v3" } else { b"strata layer content v3" });
        put(&self.mtime.to_le_bytes());
        for e in &self.entries {
            put(&e.path);
            put(&[e.mode.to_le_bytes(), e.uid.to_le_bytes(), e.gid.to_le_bytes()].concat());
            if !e.uname.is_empty() || !e.gname.is_empty() {
                put(b"names");
                put(e.uname.as_bytes());
                put(e.gname.as_bytes());
            }
            match &e.kind {
                EntryKind::Directory => put(b"d"),
                EntryKind::File { source, size, stamp } => {
                    put(b"f");
                    put(source.as_os_str().as_bytes());
                    put(&size.to_le_bytes());
                    if stamps {
                        put(&[stamp.device.to_le_bytes(), stamp.inode.to_le_bytes()].concat());
                        put(&[stamp.ctime.to_le_bytes(), stamp.ctime_nsec.to_le_bytes()].concat());
                    }
                }
                EntryKind::Symlink { target } => {
                    put(b"l");
                    put(target);
                }
                EntryKind::Contents(data) => {
                    put(b"c");
                    put(data);
                }
                EntryKind::HardLink { target } => {
                    put(b"h");
                    put(target);
                }
            }
        }
        h.finish().0
    }

    /// The exact length of the layer's tar.
    pub fn tar_len(&self) -> u64 {
        self.tar_len
    }

    /// The layer's tar, read piece by piece: see [`TarReader`].
    pub fn reader(&self) -> TarReader<'_> {
        TarReader { recipe: self, next: 0, scratch: Vec::new(), at: 0, file: None, spare: Vec::new(), ended: false }
    }

    /// Writes the tar for bytes nobody needs to see on the way: file
    /// contents go through `std::io::copy`, which lets the kernel move them (splice,
    /// sendfile, copy_file_range) when `out` is a file, a pipe or standard output.
    pub fn write_tar_direct<W: Write>(&self, out: &mut W) -> Result<(), LayerError> {
        let mut head = Vec::new();
        for entry in &self.entries {
            head.clear();
            entry.head(self.mtime, &mut head);
            out.write_all(&head).map_err(LayerError::Write)?;
            if let EntryKind::File { source, size, .. } = &entry.kind {
                copy_directly(source, *size, out)?;
                out.write_all(&[0u8; BLOCK as usize][..padding(*size)]).map_err(LayerError::Write)?;
            }
        }
        out.write_all(&TRAILER).map_err(LayerError::Write)
    }
}

/// The two zero blocks that end a tar.
const TRAILER: [u8; 2 * BLOCK as usize] = [0; 2 * BLOCK as usize];

impl Entry {
    /// Appends what comes before the contents of a file, or is all of any other entry: its
    /// PAX header if it needs one, its header, and the padded bytes of a [`EntryKind::Contents`].
    fn head(&self, mtime: u64, out: &mut Vec<u8>) {
        let pax = self.pax_records();
        if !pax.is_empty() {
            out.extend_from_slice(header(b"././@PaxHeader", EntryType::XHeader, 0o644, 0, 0, pax.len() as u64, mtime, b"").as_bytes());
            out.extend_from_slice(&pax);
            out.resize(out.len() + padding(pax.len() as u64), 0);
        }
        let (entry_type, link): (EntryType, &[u8]) = match &self.kind {
            EntryKind::Directory => (EntryType::Directory, b""),
            EntryKind::File { .. } | EntryKind::Contents(_) => (EntryType::Regular, b""),
            EntryKind::Symlink { target } => (EntryType::Symlink, target),
            EntryKind::HardLink { target } => (EntryType::Link, target),
        };
        let mut header = header(&self.path, entry_type, self.mode, self.uid, self.gid, self.data_len(), mtime, link);
        if !self.uname.is_empty() || !self.gname.is_empty() {
            // Names that do not fit ustar's 32 bytes are refused when the perms are read.
            let _ = header.set_username(&self.uname);
            let _ = header.set_groupname(&self.gname);
            header.set_cksum();
        }
        out.extend_from_slice(header.as_bytes());
        if let EntryKind::Contents(data) = &self.kind {
            out.extend_from_slice(data);
            out.resize(out.len() + padding(data.len() as u64), 0);
        }
    }
}

/// A layer's tar read piece by piece, as [`io::BufRead`] reads: [`fill`](Self::fill) lends
/// the next bytes, [`consume`](Self::consume) takes them. A file's bytes are lent from where
/// [`FileContents`] has them, mapped where it can: a hash reads them where the kernel keeps
/// them, never copied, and two readers can feed one two-stream hash
/// ([`Sha256::update_pair`](strata_oci::sha256::Sha256::update_pair)).
pub struct TarReader<'r> {
    recipe: &'r LayerRecipe,
    /// The next entry to begin.
    next: usize,
    /// Headers and padding: lent as `scratch[at..]` before anything else.
    scratch: Vec<u8>,
    at: usize,
    /// The file whose contents come once `scratch` is taken.
    file: Option<FileContents<'r>>,
    /// The read buffer of the file before, for the next one.
    spare: Vec<u8>,
    /// The trailer is in `scratch`, or taken.
    ended: bool,
}

impl TarReader<'_> {
    /// The next bytes of the tar; empty at its end. Fails if a file is gone or has changed
    /// size since the recipe was made, rather than lend a tar whose length differs from
    /// [`tar_len`](LayerRecipe::tar_len).
    pub fn fill(&mut self) -> Result<&[u8], LayerError> {
        while self.at == self.scratch.len() {
            self.scratch.clear();
            self.at = 0;
            if let Some(file) = &mut self.file {
                if file.fill()? {
                    return Ok(self.file.as_ref().map_or(&[], |f| f.piece()));
                }
                self.scratch.resize(padding(file.size), 0);
                self.spare = std::mem::take(&mut file.buf);
                self.file = None;
            } else if let Some(entry) = self.recipe.entries.get(self.next) {
                self.next += 1;
                entry.head(self.recipe.mtime, &mut self.scratch);
                if let EntryKind::File { source, size, .. } = &entry.kind {
                    self.file = Some(FileContents::open(source, *size, std::mem::take(&mut self.spare))?);
                }
            } else if !self.ended {
                self.scratch.extend_from_slice(&TRAILER);
                self.ended = true;
            } else {
                return Ok(&[]);
            }
        }
        Ok(&self.scratch[self.at..])
    }

    /// Takes the first `n` bytes of what [`fill`](Self::fill) lent.
    pub fn consume(&mut self, n: usize) {
        match &mut self.file {
            Some(file) if self.at == self.scratch.len() => file.consume(n),
            _ => self.at += n,
        }
    }
}

impl TarPieces for TarReader<'_> {
    fn fill(&mut self) -> Result<&[u8], TarError> {
        Ok(TarReader::fill(self)?)
    }

    fn consume(&mut self, n: usize) {
        TarReader::consume(self, n)
    }
}

/// Files of at least this many bytes are mapped into memory rather than read (see
/// [`FileContents`]); smaller ones cost less to read than to map.
const MIN_MAPPED_SIZE: u64 = COPY_BUFFER as u64;
/// How much of a file is mapped at once: enough that mapping is rare, little enough that the
/// pages mapped (which count as the process's memory) stay few.
const MAP_WINDOW: u64 = 2 << 20;

/// The contents of one file of a layer, lent piece by piece, exactly as many bytes as the
/// recipe says (a file grown or shrunk since is [`LayerError::Changed`]).
///
/// A file of [`MIN_MAPPED_SIZE`] or more is mapped, a window at a time, and its pages lent as
/// they are: no copy into a buffer, which cost a sixth of a cold stream's time. Others are
/// read into a buffer, as is a file the file system cannot map. A file that shrinks while a
/// window of it is mapped cannot crash strata ([`crate::mapped`]): the window says so, and
/// the file is reported as changed.
struct FileContents<'p> {
    path: &'p Path,
    file: File,
    size: u64,
    /// Bytes of the file before the current piece.
    offset: u64,
    /// The current piece: a window of the file, or the first `read` bytes of `buf` (a buffer
    /// handed from file to file, zeroed only when it grows); `at` of it taken.
    window: Option<Window>,
    buf: Vec<u8>,
    read: usize,
    at: usize,
    mapped: bool,
}

impl<'p> FileContents<'p> {
    fn open(path: &'p Path, size: u64, buf: Vec<u8>) -> Result<FileContents<'p>, LayerError> {
        let file = open_store_file(path).map_err(|source| LayerError::Read { path: path.to_owned(), source })?;
        let meta = file.metadata().map_err(|source| LayerError::Read { path: path.to_owned(), source })?;
        let mapped = size >= MIN_MAPPED_SIZE && meta.len() == size;
        Ok(FileContents { path, file, size, offset: 0, window: None, buf, read: 0, at: 0, mapped })
    }

    fn piece(&self) -> &[u8] {
        match &self.window {
            Some(window) => &window.bytes()[self.at..],
            None => &self.buf[self.at..self.read],
        }
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
    }

    /// Makes the next piece ready, if the current one is taken; false once the whole file
    /// is, and checked to hold no more.
    fn fill(&mut self) -> Result<bool, LayerError> {
        if !self.piece().is_empty() {
            return Ok(true);
        }
        let read_err = |source| LayerError::Read { path: self.path.to_owned(), source };
        let changed = || LayerError::Changed { path: self.path.to_owned(), expected: self.size };
        match self.window.take() {
            Some(window) => {
                // A file cut short may read as zeros where it was cut rather than fault (a large
                // page of the page cache cut in its middle is zeroed, not dropped): so its size
                // is asked too, once the window is read.
                let end = self.offset + window.bytes().len() as u64;
                if window.shrank() || self.file.metadata().map_err(read_err)?.len() < end {
                    return Err(changed());
                }
                self.offset = end;
            }
            None => self.offset += self.read as u64,
        }
        self.read = 0;
        self.at = 0;
        let left = self.size - self.offset;
        if left == 0 {
            return match self.file.read_at(&mut [0], self.size) {
                Ok(0) => Ok(false),
                Ok(_) => Err(changed()),
                Err(e) => Err(read_err(e)),
            };
        }
        if self.mapped {
            match Window::map(&self.file, self.offset, left.min(MAP_WINDOW) as usize) {
                Ok(window) => {
                    self.window = Some(window);
                    return Ok(true);
                }
                Err(_) => self.mapped = false, // a file system that cannot map: read instead
            }
        }
        let want = left.min(COPY_BUFFER as u64) as usize;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        loop {
            match self.file.read_at(&mut self.buf[..want], self.offset) {
                Ok(0) => return Err(changed()),
                Ok(n) => {
                    self.read = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
    }
}

/// Files smaller than this are always written whole: a link would spare less than finding
/// it costs.
const MIN_LINKED_SIZE: u64 = 4096;

/// Turns each regular file whose bytes and header equal those of an earlier file (in tar
/// order) into a hard link to that earlier one. Equality is of contents: files that are one
/// inode are equal unread; files that could be equal (same size and header) but are other
/// inodes are hashed. So the result depends on the files' bytes only, not on which of them
/// the store happens to have hard-linked.
fn link_identical_files(entries: &mut [Entry]) -> Result<(), LayerError> {
    type HeaderKey<'a> = (u64, u32, u32, u32, &'a str, &'a str);
    let mut candidates: HashMap<HeaderKey, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let EntryKind::File { size, .. } = e.kind {
            if size >= MIN_LINKED_SIZE {
                candidates.entry((size, e.mode, e.uid, e.gid, &e.uname, &e.gname)).or_default().push(i);
            }
        }
    }
    let mut links: Vec<(usize, usize)> = Vec::new();
    let mut buf = Vec::new(); // grown for the first file read, if any
    for group in candidates.into_values().filter(|g| g.len() > 1) {
        let file = |i: usize| match &entries[i].kind {
            EntryKind::File { source, size, stamp } => (source, *size, (stamp.device, stamp.inode)),
            _ => unreachable!("candidates are files"),
        };
        let inodes: std::collections::HashSet<(u64, u64)> = group.iter().map(|&i| file(i).2).collect();
        // The first entry (in tar order) of each inode, and of each contents.
        let mut first_of_inode: HashMap<(u64, u64), usize> = HashMap::new();
        let mut first_of_contents: HashMap<Digest, usize> = HashMap::new();
        for &i in &group {
            let (source, size, inode) = file(i);
            if let Some(&first) = first_of_inode.get(&inode) {
                links.push((i, first));
                continue;
            }
            let first = if inodes.len() > 1 { *first_of_contents.entry(digest_of_file(source, size, &mut buf)?).or_insert(i) } else { i };
            first_of_inode.insert(inode, first);
            if first != i {
                links.push((i, first));
            }
        }
    }
    for (i, first) in links {
        entries[i].kind = EntryKind::HardLink { target: entries[first].path.clone() };
    }
    Ok(())
}

/// The SHA-256 of the `size` bytes of the file at `source`, read (if it is not mapped)
/// through `buf`.
fn digest_of_file(source: &Path, size: u64, buf: &mut Vec<u8>) -> Result<Digest, LayerError> {
    let mut contents = FileContents::open(source, size, std::mem::take(buf))?;
    let mut hash = Sha256::new();
    while contents.fill()? {
        hash.update(contents.piece());
        contents.consume(contents.piece().len());
    }
    *buf = contents.buf;
    Ok(hash.finish())
}

/// Zeros from the end of `len` bytes of data to the next block boundary.
fn padding(len: u64) -> usize {
    (padded(len) - len) as usize
}

/// Copies exactly `size` bytes of `source` to `out` through `std::io::copy`; a file that is
/// shorter or longer now than when it was scanned is an error.
fn copy_directly<W: Write>(source: &Path, size: u64, out: &mut W) -> Result<(), LayerError> {
    let read_err = |e| LayerError::Read { path: source.to_owned(), source: e };
    let changed = || LayerError::Changed { path: source.to_owned(), expected: size };
    let mut file = open_store_file(source).map_err(read_err)?;
    // io::copy cannot tell a read error from a write error; reads from a store file that
    // opened fine are not expected to fail, so errors here are reported as writes.
    let copied = io::copy(&mut (&mut file).take(size), out).map_err(LayerError::Write)?;
    if copied != size {
        return Err(changed());
    }
    match file.read(&mut [0]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(changed()),
        Err(e) => Err(read_err(e)),
    }
}

/// Opens a file of the store for reading: never through a link (one put in place of the
/// file is refused, not followed), never blocking on a fifo, only a regular file.
pub(crate) fn open_store_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rsync -K: a later tree's `lib/x` goes through an earlier `lib -> usr/lib` (also `..`
    /// and absolute links, chains of them); its own `lib` directory is dropped, the link
    /// stays; links out of the trees, and files replacing a link, are laid over as usual.
    #[test]
    fn trees_go_through_links_to_directories() {
        let below = vec![
            Entry::directory(b"usr", 0o755),
            Entry::directory(b"usr/lib", 0o755),
            Entry::symlink(b"lib", b"usr/lib"),
            Entry::symlink(b"lib64", b"/lib"),
            Entry::directory(b"usr/share", 0o755),
            Entry::symlink(b"usr/share/l", b"../lib"),
            Entry::symlink(b"store", b"/nix/store/x"),
            Entry::symlink(b"file-link", b"usr/lib"),
        ];
        let tree = vec![
            Entry::directory(b"lib", 0o700),
            Entry::symlink(b"lib/a", b"a"),
            Entry::directory(b"lib64", 0o755),
            Entry::symlink(b"lib64/b", b"b"),
            Entry::symlink(b"usr/share/l/c", b"c"),
            Entry::directory(b"store", 0o755),
            Entry::symlink(b"store/d", b"d"),
            Entry::symlink(b"file-link", b"elsewhere"),
        ];
        let paths: Vec<String> = through_dirlinks(&below, tree).iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect();
        assert_eq!(paths, ["usr/lib/a", "usr/lib/b", "usr/lib/c", "store", "store/d", "file-link"]);
    }
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn pax_record_length_counts_itself() {
        for len in [1usize, 5, 90, 95, 96, 1000] {
            let mut rec = Vec::new();
            pax_record(&mut rec, "path", &vec![b'a'; len]);
            let digits: String = rec.iter().take_while(|c| c.is_ascii_digit()).map(|c| *c as char).collect();
            assert_eq!(digits.parse::<usize>().unwrap(), rec.len());
        }
    }

    #[test]
    fn order_key_sorts_as_tar_order() {
        let names: [&[u8]; 9] = [b"a", b"a/b", b"a-b/c", b"a.c", b"a/b/c", b"ab", b"a\xff", b"nix", b"nix/store"];
        for x in names {
            for y in names {
                assert_eq!(tar_order_key(x).cmp(&tar_order_key(y)), tar_order(x, y), "{x:?} {y:?}");
            }
        }
    }

    #[test]
    fn order_is_depth_first() {
        let mut v = vec![&b"a.c"[..], b"a/b", b"a", b"a-b/c", b"nix/store", b"nix"];
        v.sort_by(|a, b| tar_order(a, b));
        assert_eq!(v, [&b"a"[..], b"a/b", b"a-b/c", b"a.c", b"nix", b"nix/store"]);
    }

    /// The tar we write is read back by the `tar` crate with every name, mode, link and byte
    /// exact, and its length is the one predicted.
    #[test]
    fn written_tar_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let long = "d".repeat(120);
        std::fs::create_dir_all(root.join(&long)).unwrap();
        std::fs::write(root.join(&long).join("f"), b"long name").unwrap();
        std::fs::write(root.join("exe"), vec![7u8; 1000]).unwrap();
        std::fs::set_permissions(root.join("exe"), std::fs::Permissions::from_mode(0o555)).unwrap();
        symlink("/nowhere/".to_owned() + &"x".repeat(150), root.join("dangling")).unwrap();
        let weird = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::write(root.join(weird), b"").unwrap();

        let (entries, size) = scan_tree(&root, b"").unwrap();
        assert_eq!(size, 1009);
        let recipe = LayerRecipe::new(vec![], entries, &[], 1, String::new()).unwrap();
        let mut out = Vec::new();
        recipe.write_tar(&mut out).unwrap();
        assert_eq!(out.len() as u64, recipe.tar_len());

        let mut archive = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path_bytes().into_owned();
            assert_eq!(e.header().mtime().unwrap(), 1);
            assert_eq!(e.header().uid().unwrap(), 0);
            if path == b"exe" {
                assert_eq!(e.header().mode().unwrap(), 0o555);
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                assert_eq!(data, vec![7u8; 1000]);
            }
            if path == b"dangling" {
                assert_eq!(e.link_name_bytes().unwrap().len(), 159);
            }
            seen.push(path);
        }
        let long_file = format!("{long}/f").into_bytes();
        assert_eq!(seen, vec![b"caf\xe9".to_vec(), b"dangling".to_vec(), long.into_bytes(), long_file, b"exe".to_vec()]);
    }

    /// Files with the same bytes and header are one file in the layer: hard links to the first
    /// in tar order, decided on contents, so the tar is the same whether the store had them
    /// as copies or as one inode (optimised); GNU tar extracts them as one inode.
    #[test]
    fn identical_files_are_linked_whether_or_not_the_store_linked_them() {
        let first = format!("a{}/f", "x".repeat(110)); // a long name: the link needs PAX `linkpath`
        let layer = |store_linked: bool| {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            std::fs::create_dir_all(root.join(&first).parent().unwrap()).unwrap();
            std::fs::write(root.join(&first), vec![1u8; 5000]).unwrap();
            if store_linked {
                std::fs::hard_link(root.join(&first), root.join("b")).unwrap();
            } else {
                std::fs::write(root.join("b"), vec![1u8; 5000]).unwrap();
            }
            std::fs::write(root.join("c"), vec![2u8; 5000]).unwrap(); // same size, other bytes
            std::fs::write(root.join("d"), vec![1u8; 5000]).unwrap();
            std::fs::write(root.join("e"), vec![1u8; 5000]).unwrap();
            std::fs::set_permissions(root.join("e"), std::fs::Permissions::from_mode(0o555)).unwrap(); // another header
            std::fs::write(root.join("s1"), vec![1u8; 100]).unwrap(); // too small to link
            std::fs::write(root.join("s2"), vec![1u8; 100]).unwrap();
            let (entries, _) = scan_tree(root, b"").unwrap();
            let recipe = LayerRecipe::new(vec![], entries, &[], 1, String::new()).unwrap();
            let mut out = Vec::new();
            recipe.write_tar(&mut out).unwrap();
            assert_eq!(out.len() as u64, recipe.tar_len());
            out
        };
        let tar = layer(false);
        assert_eq!(tar, layer(true), "the store's hard links change nothing");

        let mut links = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            if e.header().entry_type() == EntryType::Link {
                links.push((name, String::from_utf8(e.link_name_bytes().unwrap().into_owned()).unwrap()));
            }
        }
        assert_eq!(links, [("b".to_owned(), first.clone()), ("d".to_owned(), first.clone())]);

        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("tar").args(["-xf", "-", "-C"]).arg(dir.path()).stdin(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        assert!(child.wait().unwrap().success(), "GNU tar extracts the layer");
        for name in [&first[..], "b", "d"] {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            assert_eq!((meta.nlink(), std::fs::read(dir.path().join(name)).unwrap()), (3, vec![1u8; 5000]), "{name}");
        }
        for name in ["c", "e", "s1", "s2"] {
            assert_eq!(std::fs::metadata(dir.path().join(name)).unwrap().nlink(), 1, "{name} is a file of its own");
        }
    }

    /// A tree that is a link is a link in the layer, never what it points to; as a tree laid
    /// over `/` it is an error that names it.
    #[test]
    fn links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("host");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("passwd"), b"root:x:0:0").unwrap();
        let link = dir.path().join("store-path");
        symlink(&secret, &link).unwrap();
        let (entries, size) = scan_tree(&link, b"nix/store/x").unwrap();
        assert_eq!(size, 0);
        assert_eq!(entries, [Entry::symlink(b"nix/store/x", secret.as_os_str().as_bytes())]);
        let err = scan_tree(&link, b"").unwrap_err();
        assert!(matches!(err, LayerError::RootIsSymlink { .. }), "{err}");
        assert!(err.to_string().contains(&link.display().to_string()));
        // A file swapped for a link after the scan is refused, not followed.
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("f"), b"0123456789").unwrap();
        let (entries, _) = scan_tree(&tree, b"t").unwrap();
        std::fs::remove_file(tree.join("f")).unwrap();
        symlink(secret.join("passwd"), tree.join("f")).unwrap();
        let recipe = LayerRecipe::new(entries, vec![], &[], 1, String::new()).unwrap();
        assert!(matches!(read_tar(&recipe), Err(LayerError::Read { .. })));
    }

    #[test]
    fn fifos_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let status = std::process::Command::new("mkfifo").arg(dir.path().join("pipe")).status().unwrap();
        assert!(status.success());
        let (entries, _) = scan_tree(dir.path(), b"").unwrap();
        let names: Vec<&[u8]> = entries.iter().map(|e| &e.path[..]).collect();
        assert_eq!(names, [&b"file"[..]]);
    }

    #[test]
    fn a_file_that_changes_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"1234").unwrap();
        let (entries, _) = scan_tree(dir.path(), b"x").unwrap();
        let recipe = LayerRecipe::new(entries, vec![], &[], 1, String::new()).unwrap();
        std::fs::write(dir.path().join("f"), b"12345").unwrap();
        assert!(matches!(read_tar(&recipe), Err(LayerError::Changed { .. })));
        std::fs::write(dir.path().join("f"), b"123").unwrap();
        assert!(matches!(read_tar(&recipe), Err(LayerError::Changed { .. })));
        std::fs::remove_file(dir.path().join("f")).unwrap();
        assert!(matches!(read_tar(&recipe), Err(LayerError::Read { .. })));
    }

    /// A mapped file truncated while it is read is an error naming it, not a crash: pages of
    /// the window lent, or all of it, or of the next, are gone (read as zeros where the kernel
    /// faults, `crate::mapped`, or where it zeroes them; either way the file is changed).
    #[test]
    fn a_mapped_file_that_shrinks_while_it_is_read_is_an_error() {
        // Pieces taken before the file shrinks (the header, then windows), and what is left.
        for (taken, keep) in [(1usize, 0), (1, MAP_WINDOW / 2), (2, 3 * MAP_WINDOW / 2), (2, MAP_WINDOW + 4096), (2, MAP_WINDOW), (3, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("big");
            std::fs::write(&path, vec![9u8; 3 * MAP_WINDOW as usize]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
            let (entries, _) = scan_tree(dir.path(), b"").unwrap();
            let recipe = LayerRecipe::new(vec![], entries, &[], 1, String::new()).unwrap();
            let mut reader = recipe.reader();
            for _ in 0..taken {
                let n = reader.fill().unwrap().len();
                reader.consume(n);
            }
            reader.fill().unwrap(); // the next window is mapped, lent, not taken
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(keep).unwrap();
            let err = loop {
                match reader.fill() {
                    Ok([]) => panic!("{taken} pieces taken, {keep} bytes kept: a tar of a file that shrank"),
                    Ok(piece) => {
                        let n = piece.len();
                        reader.consume(n);
                    }
                    Err(e) => break e,
                }
            };
            assert!(matches!(err, LayerError::Changed { .. }), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Taken in bites of any size (as a hash in a pair takes them), the pieces are the
        /// tar the kernel's copies write, whatever the files' sizes around a window's edges.
        #[test]
        fn pieces_taken_in_any_bites_are_the_tar(
            sizes in proptest::collection::vec(proptest::prop_oneof![0u64..2048, MIN_MAPPED_SIZE - 600..MIN_MAPPED_SIZE + 600, MAP_WINDOW - 600..MAP_WINDOW + 600], 1..5),
            bites in proptest::collection::vec(1usize..(3 << 20), 1..16),
        ) {
            let dir = tempfile::tempdir().unwrap();
            for (i, size) in sizes.iter().enumerate() {
                std::fs::write(dir.path().join(format!("f{i}")), vec![i as u8 + 1; *size as usize]).unwrap();
            }
            let (entries, _) = scan_tree(dir.path(), b"").unwrap();
            let recipe = LayerRecipe::new(vec![], entries, &[], 1, String::new()).unwrap();
            let mut direct = Vec::new();
            recipe.write_tar_direct(&mut direct).unwrap();
            let mut reader = recipe.reader();
            let mut pieces = Vec::new();
            for bite in bites.iter().cycle() {
                let piece = reader.fill().unwrap();
                if piece.is_empty() {
                    break;
                }
                let n = piece.len().min(*bite);
                pieces.extend_from_slice(&piece[..n]);
                reader.consume(n);
            }
            proptest::prop_assert_eq!(pieces.len() as u64, recipe.tar_len());
            proptest::prop_assert!(pieces == direct, "the pieces are not the tar");
        }
    }

    /// The layer's tar through [`TarReader`], or why it could not be read.
    fn read_tar(recipe: &LayerRecipe) -> Result<Vec<u8>, LayerError> {
        let mut reader = recipe.reader();
        let mut tar = Vec::new();
        loop {
            let piece = reader.fill()?;
            if piece.is_empty() {
                return Ok(tar);
            }
            tar.extend_from_slice(piece);
            let n = piece.len();
            reader.consume(n);
        }
    }

    /// Big files are mapped, a window at a time, small ones read: the tar is the same either
    /// way, whatever the files' modes, piece by piece, written whole, or through the kernel's
    /// copies.
    #[test]
    fn mapped_and_read_files_make_the_same_tar() {
        let contents = |seed: u8, len: usize| (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect::<Vec<u8>>();
        let files = [
            ("big", contents(1, MAP_WINDOW as usize * 2 + 1000)),
            ("edge", contents(2, MIN_MAPPED_SIZE as usize)),
            ("small", contents(3, MIN_MAPPED_SIZE as usize - 1)),
            ("empty", Vec::new()),
        ];
        let tar = |mode: u32| {
            let dir = tempfile::tempdir().unwrap();
            for (name, data) in &files {
                std::fs::write(dir.path().join(name), data).unwrap();
                std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let (entries, _) = scan_tree(dir.path(), b"").unwrap();
            let recipe = LayerRecipe::new(vec![], entries, &[], 1, String::new()).unwrap();
            let mapped =
                |name: &str| FileContents::open(&dir.path().join(name), files.iter().find(|f| f.0 == name).unwrap().1.len() as u64, Vec::new()).unwrap().mapped;
            assert_eq!([mapped("big"), mapped("edge"), mapped("small")], [true, true, false]);
            let pieces = read_tar(&recipe).unwrap();
            let (mut whole, mut direct) = (Vec::new(), Vec::new());
            LayerTar::write_tar(&recipe, &mut whole).unwrap();
            recipe.write_tar_direct(&mut direct).unwrap();
            assert_eq!(pieces.len() as u64, recipe.tar_len());
            assert_eq!([Digest::of(&whole), Digest::of(&direct)], [Digest::of(&pieces); 2]);
            let mut seen = Vec::new();
            for e in tar::Archive::new(&pieces[..]).entries().unwrap() {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                seen.push((String::from_utf8(e.path_bytes().into_owned()).unwrap(), Digest::of(&data)));
            }
            seen
        };
        let mut expected: Vec<(String, Digest)> = files.iter().map(|(n, d)| (n.to_string(), Digest::of(d))).collect();
        expected.sort();
        assert_eq!(tar(0o444), expected);
        assert_eq!(tar(0o644), expected);
    }
}
