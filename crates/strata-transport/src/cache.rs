//! The layer cache: what strata learnt making a layer's blob, so that the next build does
//! not learn it again. One cache serves every sink.
//!
//! An entry maps a layer's *key* (the fingerprint of a built layer's recipe, see
//! `LayerTar::fingerprint`, or of a base layer re-encoded, plus the codec's
//! [`Compression::id`]) to the blob that key gives: the tar's diff ID, the blob's digest and
//! its size. With it,
//! - a rebuild into an OCI layout that already holds the blob neither reads nor hashes nor
//!   compresses the layer;
//! - a docker-archive stream writes the layer's tar without hashing it;
//! - a push asks the registry (HEAD) before making the blob, and mounts it from another
//!   repository strata pushed it to (the cache also remembers where blobs were pushed).
//!
//! **A lost, stale or corrupt entry costs time, never a wrong digest.** Lost: the blob is
//! made again. Stale: cannot be: the fingerprint covers every input of the tar's bytes (the
//! entries, modes, owners, mtime, and each file's path, size, inode and change time, which
//! the kernel moves on any change), and the codec's id names the exact encoder and its
//! settings; strata's tar and codec versions are in both, so a strata that writes other bytes
//! reads other keys. Corrupt: every entry carries a digest of its own key and contents, and
//! one that does not match (a torn or edited file, an entry copied under another name) is
//! removed and counts as a miss. Entries are written whole to a scratch file and renamed, so
//! two writers at once both succeed and a reader sees an entry or none.
//!
//! Where: `$STRATA_CACHE_DIR`, else `$XDG_CACHE_HOME/strata`, else `~/.cache/strata`. Each
//! entry is a small file under `layers-v1/`, so the cache's size is bounded by pruning the
//! least recently used entries (a hit refreshes an entry's time) once a command that added
//! some is done.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::manifest::LayerBlob;
use strata_scratch::ScratchFile;

/// The bound on the cache's size on disk, unless the caller gives another.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// An entry is a few hundred bytes; anything longer is not one.
const MAX_ENTRY: u64 = 4096;
/// Repositories remembered per blob (for mounts).
const MAX_REPOSITORIES: usize = 16;

/// The layer cache of one user; a disabled one remembers nothing.
#[derive(Debug)]
pub struct LayerCache {
    dir: Option<PathBuf>,
    max_bytes: u64,
    added: AtomicBool,
}

/// What the cache knows of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBlob {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
}

impl CachedBlob {
    pub fn of(blob: &LayerBlob) -> CachedBlob {
        CachedBlob { diff_id: blob.diff_id, digest: blob.digest, size: blob.size }
    }

    /// The blob's record, with `codec`'s media type.
    pub fn blob(&self, codec: Compression) -> LayerBlob {
        LayerBlob { diff_id: self.diff_id, digest: self.digest, size: self.size, media_type: codec.layer_media_type() }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    diff_id: Digest,
    digest: Digest,
    size: u64,
    /// The digest of the fields above: see [`Entry::check`].
    check: Digest,
}

impl Entry {
    fn check(key: &str, blob: &CachedBlob) -> Digest {
        Digest::of(format!("strata layer cache v1\n{key}\n{}\n{}\n{}", blob.diff_id, blob.digest, blob.size).as_bytes())
    }
}

/// What `strata cache` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStats {
    pub dir: PathBuf,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("layer cache {path}")]
pub struct CacheError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl LayerCache {
    /// The cache in `dir`, bounded to `max_bytes` on disk.
    pub fn new(dir: PathBuf, max_bytes: u64) -> LayerCache {
        LayerCache { dir: Some(dir), max_bytes, added: AtomicBool::new(false) }
    }

    /// The user's cache (see the module's text), or a disabled one when no directory is known.
    pub fn from_env() -> LayerCache {
        let dir = std::env::var_os("STRATA_CACHE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join("strata")))
            .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache/strata")));
        match dir {
            Some(dir) => LayerCache::new(dir, DEFAULT_MAX_BYTES),
            None => LayerCache::disabled(),
        }
    }

    /// A cache that remembers nothing (inside Nix builds, say).
    pub fn disabled() -> LayerCache {
        LayerCache { dir: None, max_bytes: 0, added: AtomicBool::new(false) }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn layers(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("layers-v1"))
    }

    fn key(fingerprint: &Digest, codec: Compression) -> String {
        format!("{}-{}", fingerprint.hex(), codec.id())
    }

    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        self.layers().map(|d| d.join(&key[..2]).join(key))
    }

    /// The blob that `fingerprint` gave in `codec`, if the cache knows it.
    pub fn get(&self, fingerprint: &Digest, codec: Compression) -> Option<CachedBlob> {
        let key = Self::key(fingerprint, codec);
        let path = self.entry_path(&key)?;
        let file = open_no_follow(&path).ok()?;
        let mut text = Vec::new();
        (&file).take(MAX_ENTRY).read_to_end(&mut text).ok()?;
        let entry = serde_json::from_slice::<Entry>(&text).ok().filter(|e| e.key == key);
        let blob = entry.as_ref().map(|e| CachedBlob { diff_id: e.diff_id, digest: e.digest, size: e.size });
        match (entry, blob) {
            (Some(entry), Some(blob)) if entry.check == Entry::check(&key, &blob) => {
                // Recently used: pruned last. (Best effort: a read-only cache still serves.)
                if let Ok(file) = OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
                    let _ = file.set_modified(std::time::SystemTime::now());
                }
                Some(blob)
            }
            _ => {
                tracing::warn!("layer cache: {} is corrupt; removed", path.display());
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Remembers that `fingerprint` gives `blob` in `codec`. A cache that cannot be written
    /// is only a warning: it costs the next build time, nothing else.
    pub fn put(&self, fingerprint: &Digest, codec: Compression, blob: &CachedBlob) {
        let key = Self::key(fingerprint, codec);
        let Some(path) = self.entry_path(&key) else { return };
        let entry = Entry { key: key.clone(), diff_id: blob.diff_id, digest: blob.digest, size: blob.size, check: Entry::check(&key, blob) };
        let text = serde_json::to_vec(&entry).expect("an entry serialises");
        if let Err(e) = write_whole(&path, &text) {
            tracing::warn!("cannot write the layer cache {}: {e}", path.display());
            return;
        }
        self.added.store(true, Ordering::Relaxed);
    }

    /// `HOST/REPOSITORY`s strata pushed the blob `digest` to (where it can be mounted from).
    pub fn pushed_to(&self, digest: &Digest) -> Vec<String> {
        let Some(path) = self.dir.as_ref().map(|d| d.join("pushed-v1").join(digest.hex())) else { return Vec::new() };
        let mut text = String::new();
        let read = open_no_follow(&path).and_then(|f| (&f).take(MAX_ENTRY * 4).read_to_string(&mut text));
        if read.is_err() {
            return Vec::new();
        }
        text.lines().filter(|l| !l.is_empty()).take(MAX_REPOSITORIES).map(str::to_owned).collect()
    }

    /// Remembers that the blobs `digests` are in `repository` (`HOST/REPOSITORY`).
    pub fn remember_pushed<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>, repository: &str) {
        let Some(dir) = self.dir.as_ref().map(|d| d.join("pushed-v1")) else { return };
        for digest in digests {
            let mut repos = self.pushed_to(digest);
            if repos.iter().any(|r| r == repository) {
                continue;
            }
            repos.insert(0, repository.to_owned());
            repos.truncate(MAX_REPOSITORIES);
            let path = dir.join(digest.hex());
            if let Err(e) = write_whole(&path, (repos.join("\n") + "\n").as_bytes()) {
                tracing::warn!("cannot write the layer cache {}: {e}", path.display());
                return;
            }
            self.added.store(true, Ordering::Relaxed);
        }
    }

    /// Every entry file, with its time of last use and its size on disk.
    fn files(&self) -> Vec<(std::time::SystemTime, u64, PathBuf)> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let mut files = Vec::new();
        for area in ["layers-v1", "pushed-v1"] {
            for entry in walk(&dir.join(area)) {
                if let Ok(meta) = std::fs::symlink_metadata(&entry) {
                    files.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.blocks() * 512, entry));
                }
            }
        }
        files
    }

    /// What is in the cache.
    pub fn stats(&self) -> Option<CacheStats> {
        let dir = self.dir.clone()?;
        let files = self.files();
        Some(CacheStats { dir, entries: files.len() as u64, bytes: files.iter().map(|f| f.1).sum(), max_bytes: self.max_bytes })
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> Result<u64, CacheError> {
        let files = self.files();
        for (_, _, path) in &files {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(CacheError { path: path.clone(), source: e }),
                _ => {}
            }
        }
        Ok(files.len() as u64)
    }

    /// If entries were added since this cache was opened and it is over its bound, removes the
    /// least recently used entries until it is at three quarters of it.
    pub fn prune(&self) {
        if !self.added.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut files = self.files();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total <= self.max_bytes {
            return;
        }
        files.sort();
        for (_, size, path) in files {
            if total <= self.max_bytes / 4 * 3 {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
            }
        }
    }
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Writes `bytes` to `path` through a scratch file beside it (creating its directory).
fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("an entry is in a directory");
    std::fs::create_dir_all(dir)?;
    ScratchFile::write_whole(dir, "entry", path, bytes)
}

/// The regular files below `dir` (two levels: `XX/KEY`, or one), links not followed.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(top) = std::fs::read_dir(dir) else { return out };
    for item in top.flatten() {
        let Ok(kind) = item.file_type() else { continue };
        if kind.is_file() {
            out.push(item.path());
        } else if kind.is_dir() {
            let Ok(inner) = std::fs::read_dir(item.path()) else { continue };
            out.extend(inner.flatten().filter(|i| i.file_type().is_ok_and(|k| k.is_file())).map(|i| i.path()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> CachedBlob {
        CachedBlob { diff_id: Digest::of(&[n]), digest: Digest::of(&[n, n]), size: 1000 + n as u64 }
    }

    #[test]
    fn hit_miss_and_corrupt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path().to_owned(), DEFAULT_MAX_BYTES);
        let fingerprint = Digest::of(b"a layer");
        assert_eq!(cache.get(&fingerprint, Compression::Gzip), None, "an empty cache misses");
        cache.put(&fingerprint, Compression::Gzip, &blob(1));
        assert_eq!(cache.get(&fingerprint, Compression::Gzip), Some(blob(1)));
        assert_eq!(cache.get(&fingerprint, Compression::Zstd), None, "another codec is another key");
        assert_eq!(cache.get(&Digest::of(b"another layer"), Compression::Gzip), None);

        // A changed size, a torn file, an entry under another key's name: misses, and removed.
        let key = LayerCache::key(&fingerprint, Compression::Gzip);
        let path = cache.entry_path(&key).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        for bad in [good.replace("1001", "1002"), good[..good.len() / 2].to_owned(), String::new()] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(cache.get(&fingerprint, Compression::Gzip), None);
            assert!(!path.exists(), "a corrupt entry stays");
        }
        let other = Digest::of(b"other");
        cache.put(&other, Compression::Gzip, &blob(2));
        std::fs::copy(cache.entry_path(&LayerCache::key(&other, Compression::Gzip)).unwrap(), &path).unwrap();
        assert_eq!(cache.get(&fingerprint, Compression::Gzip), None, "an entry copied under another key");

        // A link is not followed.
        cache.put(&fingerprint, Compression::Zstd, &blob(3));
        let zstd = cache.entry_path(&LayerCache::key(&fingerprint, Compression::Zstd)).unwrap();
        std::fs::remove_file(&zstd).unwrap();
        std::os::unix::fs::symlink(cache.entry_path(&LayerCache::key(&other, Compression::Gzip)).unwrap(), &zstd).unwrap();
        assert_eq!(cache.get(&fingerprint, Compression::Zstd), None);
    }

    #[test]
    fn pushed_repositories_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path().to_owned(), DEFAULT_MAX_BYTES);
        let d = Digest::of(b"blob");
        cache.remember_pushed([&d], "localhost:5000/a");
        cache.remember_pushed([&d], "localhost:5000/b");
        cache.remember_pushed([&d], "localhost:5000/a");
        assert_eq!(cache.pushed_to(&d), ["localhost:5000/b", "localhost:5000/a"]);
        cache.put(&d, Compression::None, &blob(1));
        assert_eq!(cache.stats().unwrap().entries, 2);
        assert_eq!(cache.clear().unwrap(), 2);
        assert_eq!(cache.stats().unwrap().entries, 0);
        assert!(cache.pushed_to(&d).is_empty());
    }

    #[test]
    fn pruning_keeps_the_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        // Each entry takes one 4 KiB block: room for 10.
        let cache = LayerCache::new(dir.path().to_owned(), 10 * 4096);
        let fingerprints: Vec<Digest> = (0..20u8).map(|i| Digest::of(&[i])).collect();
        for (i, f) in fingerprints.iter().enumerate() {
            cache.put(f, Compression::Gzip, &blob(i as u8));
            let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
            let path = cache.entry_path(&LayerCache::key(f, Compression::Gzip)).unwrap();
            File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
        }
        assert!(cache.get(&fingerprints[0], Compression::Gzip).is_some(), "the oldest, used now");
        cache.prune();
        let stats = cache.stats().unwrap();
        assert!(stats.bytes <= 10 * 4096, "{stats:?}");
        assert!(cache.get(&fingerprints[0], Compression::Gzip).is_some(), "the entry used last was pruned");
        assert!(cache.get(&fingerprints[19], Compression::Gzip).is_some(), "the newest entry was pruned");
        assert!(cache.get(&fingerprints[1], Compression::Gzip).is_none(), "the least recently used entry stayed");
    }
}
