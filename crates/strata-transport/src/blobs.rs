//! Reading images: where a source's blobs are (`BlobStore`: files in a directory, byte
//! ranges of an archive, a registry), and the checks every reader shares.
//!
//! Every source is hostile until checked:
//! - every blob is read through a [`VerifiedReader`], which reads no more than the blob's
//!   declared size and fails unless both its size and its digest are the declared ones;
//! - manifests, indexes and configs are read only up to 4 MiB (as containers/image does);
//! - in an OCI layout, a blob that is a fifo, a device or a directory is refused, and so is
//!   a link that leaves the layout: nothing outside it is ever read (or hashed, or named in
//!   an error).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest, MediaType};

use strata_oci::compress::Compression;
use strata_oci::digest::{Digest, VerifiedReader};
use strata_oci::image::BlobSource;
use strata_oci::manifest::LayerBlob;
use strata_scratch::ScratchFile;

use crate::registry::RegistryBlobs;
use crate::SourceError;

/// The largest manifest, index or config read.
pub const MAX_METADATA_SIZE: u64 = 4 << 20;

/// Where a source's blobs are: files in a directory, byte ranges of an archive, a registry.
pub(crate) enum BlobStore {
    /// An OCI layout: `blobs/sha256/<hex>`.
    Dir(PathBuf),
    /// A `dir:` image: `<hex>`.
    Flat(PathBuf),
    Registry(RegistryBlobs, String),
    Archive {
        path: PathBuf,
        files: BTreeMap<String, (u64, u64)>,
        by_digest: BTreeMap<Digest, String>,
        _decompressed: Option<ScratchFile>,
    },
}

impl BlobStore {
    /// An archive's store: the tar indexed where it is, or, when it is compressed whole, its
    /// decompressed copy in a scratch file (removed with the store).
    pub(crate) fn archive(path: &Path) -> Result<BlobStore, SourceError> {
        let read_err = |source| SourceError::Read { path: path.to_owned(), source };
        let mut file = io::BufReader::new(open_regular(path).map_err(read_err)?);
        let codec = Compression::sniff(io::BufRead::fill_buf(&mut file).map_err(read_err)?);
        let decompressed = match codec {
            Compression::None => None,
            codec => {
                let copy = ScratchFile::temporary().map_err(read_err)?;
                // A small archive can expand to anything: it may take nine tenths of the free
                // space of the temporary directory, and not the disk.
                let room = free_space(copy.path()).map_err(read_err)? / 10 * 9;
                let copied = io::copy(&mut codec.decoder(file).map_err(read_err)?.take(room + 1), &mut copy.as_file()).map_err(read_err)?;
                if copied > room {
                    let why = format!("decompressed, it is larger than the {room} bytes {} has free", std::env::temp_dir().display());
                    return Err(invalid(path, why));
                }
                Some(copy)
            }
        };
        let tar = decompressed.as_ref().map_or(path, ScratchFile::path);
        let files = index_tar(tar).map_err(read_err)?;
        Ok(BlobStore::Archive { path: tar.to_owned(), files, by_digest: BTreeMap::new(), _decompressed: decompressed })
    }

    fn open_raw(&self, digest: &Digest, size: u64) -> Result<(PathBuf, Box<dyn Read + Send>), SourceError> {
        Ok(match self {
            BlobStore::Dir(dir) => {
                let name = format!("blobs/sha256/{}", digest.hex());
                let path = dir.join(&name);
                let file = open_inside(dir, &name).map_err(|source| SourceError::Read { path: path.clone(), source })?;
                (path, Box::new(file))
            }
            BlobStore::Flat(dir) => {
                let name = digest.hex().to_owned();
                let path = dir.join(&name);
                let file = open_inside(dir, &name).map_err(|source| SourceError::Read { path: path.clone(), source })?;
                (path, Box::new(file))
            }
            BlobStore::Registry(blobs, name) => (PathBuf::from(format!("{name}@{digest}")), Box::new(blobs.fetch(digest, size)?)),
            BlobStore::Archive { path, files, by_digest, .. } => {
                let name = by_digest.get(digest).cloned().unwrap_or_else(|| format!("blobs/sha256/{}", digest.hex()));
                let file = archive_member(path, files, &name)?;
                (path.join(&name), Box::new(file))
            }
        })
    }

    /// A small blob (manifest, config) whole, verified.
    pub(crate) fn read(&self, descriptor: &Descriptor, what: &str, path: &Path) -> Result<Vec<u8>, SourceError> {
        let digest = Digest::try_from(descriptor.digest()).map_err(|e| invalid(path, format!("{what}: {e}")))?;
        if descriptor.size() > MAX_METADATA_SIZE {
            return Err(invalid(path, format!("{what} {digest} declares {} bytes, more than the {MAX_METADATA_SIZE} a {what} may have", descriptor.size())));
        }
        let (blob_path, reader) = self.open_raw(&digest, descriptor.size())?;
        let mut reader = VerifiedReader::new(reader, digest, descriptor.size(), blob_path);
        let mut bytes = Vec::new();
        let read_err = |source| SourceError::Read { path: path.to_owned(), source };
        reader.read_to_end(&mut bytes).map_err(read_err)?;
        reader.finish().map_err(read_err)?;
        Ok(bytes)
    }
}

impl BlobSource for BlobStore {
    fn open(&self, digest: &Digest, size: u64) -> io::Result<(PathBuf, Box<dyn Read + Send>)> {
        self.open_raw(digest, size).map_err(io::Error::other)
    }
}

/// The bytes free for an unprivileged writer on the file system of `path`.
fn free_space(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Opens `path` for reading if it is a regular file (never blocking on a fifo).
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// Opens `name` below `root`: links are followed only while they stay inside `root`, and
/// only a regular file is opened.
pub(crate) fn open_inside(root: &Path, name: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let root = root.canonicalize()?;
    let resolved = root.join(name).canonicalize()?;
    if !resolved.starts_with(&root) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "a link that leaves the image's directory"));
    }
    // Resolved, the path has no links left; one put there since is refused, not followed.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&resolved)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

pub use strata_oci::bounded::read_bounded;

/// Name -> (offset of the data, size) of every regular file in a tar.
pub(crate) fn index_tar(path: &Path) -> io::Result<BTreeMap<String, (u64, u64)>> {
    let mut archive = tar::Archive::new(open_regular(path)?);
    let mut files = BTreeMap::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        if entry.header().entry_type().is_file() {
            let name = entry.path()?.to_string_lossy().trim_start_matches("./").to_owned();
            files.insert(name, (entry.raw_file_position(), entry.size()));
        }
    }
    Ok(files)
}

/// The member `name` of the tar at `path` (indexed in `files`), as a bounded reader.
pub(crate) fn archive_member(path: &Path, files: &BTreeMap<String, (u64, u64)>, name: &str) -> Result<io::Take<File>, SourceError> {
    let &(offset, size) = files.get(name).ok_or_else(|| invalid(path, format!("has no {name}")))?;
    let read_err = |source| SourceError::Read { path: path.to_owned(), source };
    let mut file = open_regular(path).map_err(read_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    Ok(file.take(size))
}

pub(crate) fn invalid(path: &Path, why: impl Into<String>) -> SourceError {
    SourceError::Invalid { path: path.to_owned(), why: why.into() }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path, what: &str) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|e| invalid(path, format!("{what}: {e}")))
}

/// The layers a manifest and a config describe together, checked against each other.
pub(crate) fn layers_of(manifest: &ImageManifest, config: &ImageConfiguration, path: &Path) -> Result<Vec<LayerBlob>, SourceError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(path, "the config's diff_ids and the manifest's layers differ in number"));
    }
    let mut layers = Vec::new();
    for (i, (layer, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let blob = LayerBlob {
            digest: Digest::try_from(layer.digest()).map_err(|e| invalid(path, format!("layer {i}: {e}")))?,
            diff_id: diff_id.parse().map_err(|e| invalid(path, format!("diff_ids[{i}]: {e}")))?,
            size: layer.size(),
            media_type: docker_media_type_as_oci(layer.media_type()),
        };
        // An uncompressed layer's blob is its tar: the two digests are one.
        if Compression::of_media_type(&blob.media_type) == Some(Compression::None) && blob.digest != blob.diff_id {
            return Err(SourceError::DiffIdMismatch { path: path.to_owned(), index: i, expected: blob.diff_id, actual: blob.digest });
        }
        layers.push(blob);
    }
    Ok(layers)
}

/// Docker's layer media types, as their OCI equivalents.
fn docker_media_type_as_oci(media_type: &MediaType) -> MediaType {
    match Compression::of_media_type(media_type) {
        Some(codec) => codec.layer_media_type(),
        None => media_type.clone(),
    }
}

/// A writer that keeps the first error of `inner`, so that a copy through a reader (which
/// reports every failure as its own) can tell a failed write from a failed read.
pub(crate) struct KeepsError<W> {
    pub inner: W,
    pub error: Option<io::Error>,
}

impl<W: Write> Write for KeepsError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| {
            self.error.get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads from `inner`, writing what it reads to `copy`.
pub(crate) struct TeeReader<R, W> {
    pub inner: R,
    pub copy: W,
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_out_of_a_layout_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("layout/blobs")).unwrap();
        std::fs::write(dir.path().join("outside"), b"secret").unwrap();
        std::fs::write(dir.path().join("layout/blobs/inside"), b"ok").unwrap();
        std::os::unix::fs::symlink("../../outside", dir.path().join("layout/blobs/out")).unwrap();
        std::os::unix::fs::symlink("inside", dir.path().join("layout/blobs/in")).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(dir.path().join("layout/blobs/fifo")).status().unwrap().success());
        let layout = dir.path().join("layout");
        assert!(open_inside(&layout, "blobs/in").is_ok(), "a link inside is followed");
        assert_eq!(open_inside(&layout, "blobs/out").unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(open_inside(&layout, "blobs/fifo").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(open_inside(&layout, "blobs").is_err(), "a directory is no blob");
        assert!(open_regular(&dir.path().join("layout/blobs/fifo")).is_err());
    }
}
