//! Sources: images read back, for `strata copy`, `strata run` and `from_image`: a
//! docker-archive, an OCI layout or archive, or a registry (see [`crate::reference`]).
//!
//! A source gives the image's config (its bytes exactly, so a copy keeps the image ID) and
//! its layers as blobs. Archives are indexed once (name -> offset and size in the tar) and
//! blobs are read in place, never extracted. An archive compressed whole
//! (`docker-archive.tar.gz`, as dockerTools and strata's Nix library write them) is first
//! decompressed into a scratch file, since a compressed tar cannot be read in place.
//!
//! Every source is hostile until checked:
//! - every blob is read through a [`VerifiedReader`], which reads no more than the blob's
//!   declared size and fails unless both its size and its digest are the declared ones;
//! - manifests, indexes and configs are read only up to 4 MiB (as containers/image does);
//! - a docker-archive names layers by path, so each layer is hashed when the archive is
//!   opened and checked against the config's `diff_ids` (decompressed first if it is
//!   compressed): a corrupt archive fails before anything is written anywhere;
//! - in an OCI layout, a blob that is a fifo, a device or a directory is refused, and so is
//!   a link that leaves the layout: nothing outside it is ever read (or hashed, or named in
//!   an error).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, ANNOTATION_REF_NAME};

use crate::compress::Compression;
use crate::digest::{Digest, HashingWriter};
use crate::manifest::LayerBlob;
use crate::platform::Platform;
use crate::reference::{ImageRef, OciRef, RegistryRef};
use crate::registry::{RegistryBlobs, RegistryError, RegistryOptions};
use crate::scratch::ScratchFile;

/// The largest manifest, index or config read.
pub const MAX_METADATA_SIZE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    BadReference(#[from] crate::reference::BadReference),
    #[error("{0}: images cannot be read from there (only written)")]
    NotASource(String),
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{path}: blob {expected} has digest {actual}: the image is corrupt")]
    DigestMismatch { path: PathBuf, expected: Digest, actual: Digest },
    #[error("{path}: the tar of layer {index} has diff ID {actual}, but the config says {expected}: the image is corrupt")]
    DiffIdMismatch { path: PathBuf, index: usize, expected: Digest, actual: Digest },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// An image read from a source.
#[derive(Clone)]
pub struct SourceImage {
    /// The config blob, byte for byte.
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    pub layers: Vec<LayerBlob>,
    /// `name:tag` if the source says (docker-archive `RepoTags`, a registry reference), or
    /// a tag alone (OCI).
    pub reference: Option<String>,
    /// `HOST/REPOSITORY` for an image from a registry: its blobs can be mounted from there.
    pub origin: Option<String>,
    blobs: Arc<BlobStore>,
}

impl std::fmt::Debug for SourceImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceImage").field("layers", &self.layers).field("reference", &self.reference).finish()
    }
}

/// Where a source's blobs are: files in a directory, byte ranges of an archive, a registry.
enum BlobStore {
    Dir(PathBuf),
    Registry(RegistryBlobs, String),
    Archive { path: PathBuf, files: BTreeMap<String, (u64, u64)>, by_digest: BTreeMap<Digest, String>, _decompressed: Option<ScratchFile> },
}

impl SourceImage {
    /// Reads the image at `reference`; where that is an index of images (a registry's, an
    /// OCI layout's), the image for `platform`.
    pub fn open(reference: &ImageRef, platform: &Platform, registry: &RegistryOptions) -> Result<SourceImage, SourceError> {
        let tag = |r: &Option<OciRef>| r.as_ref().map(OciRef::ref_name);
        match reference {
            ImageRef::Registry(r) => open_registry(r, platform, registry),
            ImageRef::DockerArchive(Some(path)) => open_docker_archive(path),
            ImageRef::Oci { dir, reference } => open_oci(BlobStore::Dir(dir.clone()), dir, tag(reference).as_deref(), platform),
            ImageRef::OciArchive { path, reference } => open_oci(BlobStore::archive(path)?, path, tag(reference).as_deref(), platform),
            ImageRef::DockerArchive(None) | ImageRef::Engine { .. } => Err(SourceError::NotASource(reference.to_string())),
        }
    }

    /// A reader of layer `index`'s blob, bounded by its size, that fails at the end (or in
    /// [`VerifiedReader::finish`]) unless the bytes have the layer's size and digest.
    pub fn open_layer(&self, index: usize) -> Result<VerifiedReader<Box<dyn Read + Send>>, SourceError> {
        let layer = &self.layers[index];
        self.blobs.open(&layer.digest, layer.size)
    }
}

impl BlobStore {
    /// An archive's store: the tar indexed where it is, or, when it is compressed whole, its
    /// decompressed copy in a scratch file (removed with the store).
    fn archive(path: &Path) -> Result<BlobStore, SourceError> {
        let read_err = |source| SourceError::Read { path: path.to_owned(), source };
        let mut file = io::BufReader::new(open_regular(path).map_err(read_err)?);
        let codec = Compression::sniff(io::BufRead::fill_buf(&mut file).map_err(read_err)?);
        let decompressed = match codec {
            Compression::None => None,
            codec => {
                let copy = ScratchFile::temporary().map_err(read_err)?;
                io::copy(&mut codec.decoder(file).map_err(read_err)?, &mut copy.as_file()).map_err(read_err)?;
                Some(copy)
            }
        };
        let tar = decompressed.as_ref().map_or(path, ScratchFile::path);
        let files = index_tar(tar).map_err(read_err)?;
        Ok(BlobStore::Archive { path: tar.to_owned(), files, by_digest: BTreeMap::new(), _decompressed: decompressed })
    }

    fn open(&self, digest: &Digest, size: u64) -> Result<VerifiedReader<Box<dyn Read + Send>>, SourceError> {
        let (path, reader): (PathBuf, Box<dyn Read + Send>) = match self {
            BlobStore::Dir(dir) => {
                let name = format!("blobs/sha256/{}", digest.hex());
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
        };
        Ok(VerifiedReader::new(reader, *digest, size, path))
    }

    /// A small blob (manifest, config) whole, verified.
    fn read(&self, descriptor: &Descriptor, what: &str, path: &Path) -> Result<Vec<u8>, SourceError> {
        let digest = Digest::try_from(descriptor.digest()).map_err(|e| invalid(path, format!("{what}: {e}")))?;
        if descriptor.size() > MAX_METADATA_SIZE {
            return Err(invalid(path, format!("{what} {digest} declares {} bytes, more than the {MAX_METADATA_SIZE} a {what} may have", descriptor.size())));
        }
        let mut reader = self.open(&digest, descriptor.size())?;
        let mut bytes = Vec::new();
        let read_err = |source| SourceError::Read { path: path.to_owned(), source };
        reader.read_to_end(&mut bytes).map_err(read_err)?;
        reader.finish().map_err(read_err)?;
        Ok(bytes)
    }
}

/// Reads through, hashing, never past `size` bytes; at the end, an error unless exactly
/// `size` bytes with digest `expected` went by.
pub struct VerifiedReader<R> {
    reader: R,
    hasher: HashingWriter<io::Sink>,
    expected: Digest,
    size: u64,
    path: PathBuf,
    /// The outcome of the check, once made: every later read repeats it.
    checked: Option<Result<(), String>>,
}

impl<R: Read> VerifiedReader<R> {
    pub fn new(reader: R, expected: Digest, size: u64, path: PathBuf) -> VerifiedReader<R> {
        VerifiedReader { reader, hasher: HashingWriter::new(io::sink()), expected, size, path, checked: None }
    }

    /// Reads what is left (for readers that stop before the end, such as decoders) and
    /// checks size and digest.
    pub fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(())
    }

    fn check(&mut self) -> io::Result<()> {
        let outcome = self.checked.get_or_insert_with(|| {
            let hasher = std::mem::replace(&mut self.hasher, HashingWriter::new(io::sink()));
            let (actual, len, _) = hasher.finish();
            if len != self.size {
                return Err(format!(
                    "{}: blob {} has {len} bytes where its descriptor says {}: the image is corrupt",
                    self.path.display(),
                    self.expected,
                    self.size
                ));
            }
            if actual != self.expected {
                return Err(SourceError::DigestMismatch { path: self.path.clone(), expected: self.expected, actual }.to_string());
            }
            Ok(())
        });
        outcome.clone().map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.checked.is_some() {
            return self.check().map(|()| 0);
        }
        // One byte past the size is asked for, to notice a blob that is longer.
        let room = (self.size - self.hasher_len()).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.reader.read(&mut buf[..want])?;
        if n == 0 {
            self.check()?;
            return Ok(0);
        }
        io::Write::write_all(&mut self.hasher, &buf[..n])?;
        if self.hasher_len() > self.size {
            return self.check().map(|()| unreachable!("a blob longer than its size fails the check"));
        }
        Ok(n)
    }
}

impl<R> VerifiedReader<R> {
    fn hasher_len(&self) -> u64 {
        self.hasher.bytes_written()
    }
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
fn open_inside(root: &Path, name: &str) -> io::Result<File> {
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

/// Reads all of `reader`, failing past `limit` bytes.
pub(crate) fn read_bounded(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// Name -> (offset of the data, size) of every regular file in a tar.
fn index_tar(path: &Path) -> io::Result<BTreeMap<String, (u64, u64)>> {
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
fn archive_member(path: &Path, files: &BTreeMap<String, (u64, u64)>, name: &str) -> Result<io::Take<File>, SourceError> {
    let &(offset, size) = files.get(name).ok_or_else(|| invalid(path, format!("has no {name}")))?;
    let read_err = |source| SourceError::Read { path: path.to_owned(), source };
    let mut file = open_regular(path).map_err(read_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    Ok(file.take(size))
}

fn invalid(path: &Path, why: impl Into<String>) -> SourceError {
    SourceError::Invalid { path: path.to_owned(), why: why.into() }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path, what: &str) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|e| invalid(path, format!("{what}: {e}")))
}

/// The layers a manifest and a config describe together, checked against each other.
fn layers_of(manifest: &ImageManifest, config: &ImageConfiguration, path: &Path) -> Result<Vec<LayerBlob>, SourceError> {
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

fn open_oci(store: BlobStore, path: &Path, tag: Option<&str>, platform: &Platform) -> Result<SourceImage, SourceError> {
    let index_bytes = match &store {
        BlobStore::Dir(dir) => {
            let index_path = dir.join("index.json");
            let read_err = |source| SourceError::Read { path: index_path.clone(), source };
            read_bounded(open_inside(dir, "index.json").map_err(read_err)?, MAX_METADATA_SIZE).map_err(read_err)?
        }
        BlobStore::Archive { path: tar, files, .. } => {
            let read_err = |source| SourceError::Read { path: path.to_owned(), source };
            read_bounded(archive_member(tar, files, "index.json")?, MAX_METADATA_SIZE).map_err(read_err)?
        }
        BlobStore::Registry(..) => unreachable!("registries are opened by open_registry"),
    };
    let index: ImageIndex = parse_json(&index_bytes, path, "index.json")?;
    let ref_name = |d: &Descriptor| d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME)).cloned();
    let descriptor = match tag {
        Some(tag) => index.manifests().iter().find(|d| ref_name(d).as_deref() == Some(tag)).ok_or_else(|| invalid(path, format!("no image tagged {tag:?}")))?,
        None if index.manifests().len() == 1 => &index.manifests()[0],
        None => return Err(invalid(path, "holds several images: name one with :TAG")),
    };
    // An entry may be an index of images for several platforms: take `platform`'s.
    let reference = ref_name(descriptor);
    let mut descriptor = descriptor.clone();
    let mut manifest_bytes = store.read(&descriptor, "manifest", path)?;
    if descriptor.media_type() == &MediaType::ImageIndex {
        let nested: ImageIndex = parse_json(&manifest_bytes, path, "index")?;
        descriptor = nested
            .manifests()
            .iter()
            .find(|d| d.platform().as_ref().is_some_and(|p| platform.matches(p)))
            .cloned()
            .ok_or_else(|| invalid(path, format!("the index has no image for {platform}")))?;
        manifest_bytes = store.read(&descriptor, "manifest", path)?;
    }
    let manifest: ImageManifest = parse_json(&manifest_bytes, path, "manifest")?;
    let config_bytes = store.read(manifest.config(), "config", path)?;
    let config: ImageConfiguration = parse_json(&config_bytes, path, "config")?;
    let layers = layers_of(&manifest, &config, path)?;
    Ok(SourceImage { config_bytes, config, layers, reference, origin: None, blobs: Arc::new(store) })
}

fn open_registry(reference: &RegistryRef, platform: &Platform, options: &RegistryOptions) -> Result<SourceImage, SourceError> {
    let (config_bytes, manifest, blobs) = crate::registry::pull(reference, platform, options)?;
    let path = PathBuf::from(reference.to_string());
    let config: ImageConfiguration = parse_json(&config_bytes, &path, "config")?;
    let layers = layers_of(&manifest, &config, &path)?;
    let origin = format!("{}/{}", reference.host, reference.repository);
    Ok(SourceImage {
        config_bytes,
        config,
        layers,
        reference: Some(reference.image_name()),
        origin: Some(origin.clone()),
        blobs: Arc::new(BlobStore::Registry(blobs, origin)),
    })
}

/// Docker's layer media types, as their OCI equivalents.
fn docker_media_type_as_oci(media_type: &MediaType) -> MediaType {
    match Compression::of_media_type(media_type) {
        Some(codec) => codec.layer_media_type(),
        None => media_type.clone(),
    }
}

fn open_docker_archive(path: &Path) -> Result<SourceImage, SourceError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let mut store = BlobStore::archive(path)?;
    let BlobStore::Archive { path: tar, files, by_digest, .. } = &mut store else { unreachable!("an archive's store") };
    let read_err = |source| SourceError::Read { path: path.to_owned(), source };
    let member = |name: &str| archive_member(tar, files, name);
    let manifest: Vec<Entry> = parse_json(&read_bounded(member("manifest.json")?, MAX_METADATA_SIZE).map_err(read_err)?, path, "manifest.json")?;
    let [entry] = &manifest[..] else {
        return Err(invalid(path, "manifest.json must describe exactly one image"));
    };
    let config_bytes = read_bounded(member(&entry.config)?, MAX_METADATA_SIZE).map_err(read_err)?;
    let config: ImageConfiguration = parse_json(&config_bytes, path, "config")?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(path, "the config's diff_ids and the manifest's layers differ in number"));
    }
    // A docker-archive names layers by path, not digest: hash each one once, here, and check
    // its tar against the config's diff ID.
    let mut layers = Vec::new();
    for (i, (name, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let expected: Digest = diff_id.parse().map_err(|e| invalid(path, format!("diff_ids[{i}]: {e}")))?;
        let mut blob = HashingWriter::new(io::sink());
        let mut data = io::BufReader::new(TeeReader { inner: member(name)?, copy: &mut blob });
        let codec = Compression::sniff(io::BufRead::fill_buf(&mut data).map_err(read_err)?);
        let mut tar = HashingWriter::new(io::sink());
        io::copy(&mut codec.decoder(&mut data).map_err(read_err)?, &mut tar).map_err(read_err)?;
        io::copy(&mut data, &mut io::sink()).map_err(read_err)?; // what a decoder left
        drop(data);
        let ((digest, size, _), (actual, _, _)) = (blob.finish(), tar.finish());
        if actual != expected {
            return Err(SourceError::DiffIdMismatch { path: path.join(name), index: i, expected, actual });
        }
        by_digest.insert(digest, name.clone());
        layers.push(LayerBlob { digest, diff_id: expected, size, media_type: codec.layer_media_type() });
    }
    let reference = entry.repo_tags.as_ref().and_then(|t| t.first().cloned());
    Ok(SourceImage { config_bytes, config, layers, reference, origin: None, blobs: Arc::new(store) })
}

/// Reads from `inner`, writing what it reads to `copy`.
struct TeeReader<'a, R> {
    inner: R,
    copy: &'a mut HashingWriter<io::Sink>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        io::Write::write_all(self.copy, &buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_reads_stop_at_the_size_and_check_it() {
        let data = b"hello world";
        let digest = Digest::of(data);
        let read = |bytes: &[u8], size: u64| {
            let mut r = VerifiedReader::new(bytes, digest, size, PathBuf::from("blob"));
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        };
        assert_eq!(read(data, 11).unwrap(), data);
        assert!(read(data, 5).unwrap_err().to_string().contains("has 6 bytes where its descriptor says 5"));
        assert!(read(data, 20).unwrap_err().to_string().contains("has 11 bytes"));
        let mut longer = data.to_vec();
        longer.extend(std::iter::repeat_n(0u8, 1 << 20));
        assert!(read(&longer, 11).is_err(), "a longer blob is refused after one byte more");
        let mut flipped = data.to_vec();
        flipped[0] ^= 1;
        assert!(read(&flipped, 11).unwrap_err().to_string().contains("corrupt"));
    }

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
