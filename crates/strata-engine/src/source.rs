//! Sources: images read back, for `strata copy` and `from_image`. References as for sinks:
//! `docker-archive:PATH`, `oci:DIR[:TAG]`, `oci-archive:PATH[:TAG]`.
//!
//! A source gives the image's config (its bytes exactly, so a copy keeps the image ID) and
//! its layers as blobs. Archives are indexed once (name -> offset and size in the tar) and
//! blobs are read in place, never extracted. Every blob read is checked against its digest:
//! a mismatch is an error, not a corrupt image downstream. An archive compressed whole
//! (`docker-archive.tar.gz`, as dockerTools and strata's Nix library write them) is first
//! decompressed into a temporary file, since a compressed tar cannot be read in place.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType, ANNOTATION_REF_NAME};

use crate::compress::Compression;
use crate::digest::{Digest, HashingWriter};
use crate::registry::{RegistryBlobs, RegistryError, RegistryOptions, RegistryRef};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid image reference {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{path}: blob {expected} has digest {actual}: the image is corrupt")]
    DigestMismatch { path: PathBuf, expected: Digest, actual: Digest },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Where an image is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    DockerArchive(PathBuf),
    OciDir { dir: PathBuf, tag: Option<String> },
    OciArchive { path: PathBuf, tag: Option<String> },
    Registry(RegistryRef),
}

impl std::str::FromStr for SourceRef {
    type Err = SourceError;
    fn from_str(reference: &str) -> Result<SourceRef, SourceError> {
        let bad = |why: &str| SourceError::BadReference { reference: reference.to_owned(), why: why.to_owned() };
        let (transport, rest) =
            reference.split_once(':').ok_or_else(|| bad("expected docker-archive:PATH, oci:DIR[:TAG], oci-archive:PATH[:TAG] or docker://HOST/REPO:TAG"))?;
        if transport == "docker" {
            return Ok(SourceRef::Registry(rest.parse()?));
        }
        if rest.is_empty() {
            return Err(bad("the path is empty"));
        }
        match transport {
            "docker-archive" => Ok(SourceRef::DockerArchive(PathBuf::from(rest))),
            "oci" => {
                let (dir, tag) = split_tag(rest);
                Ok(SourceRef::OciDir { dir, tag })
            }
            "oci-archive" => {
                let (path, tag) = split_tag(rest);
                Ok(SourceRef::OciArchive { path, tag })
            }
            _ => Err(bad("unknown transport (expected docker-archive, oci, oci-archive or docker)")),
        }
    }
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let with_tag = |tag: &Option<String>| tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default();
        match self {
            SourceRef::DockerArchive(path) => write!(f, "docker-archive:{}", path.display()),
            SourceRef::OciDir { dir, tag } => write!(f, "oci:{}{}", dir.display(), with_tag(tag)),
            SourceRef::OciArchive { path, tag } => write!(f, "oci-archive:{}{}", path.display(), with_tag(tag)),
            SourceRef::Registry(r) => write!(f, "{r}"),
        }
    }
}

/// `PATH[:TAG]` as skopeo reads it: a last `:` followed by something without `/` is a tag.
pub(crate) fn split_tag(rest: &str) -> (PathBuf, Option<String>) {
    match rest.rsplit_once(':') {
        Some((path, tag)) if !path.is_empty() && !tag.contains('/') => (PathBuf::from(path), Some(tag.to_owned())),
        _ => (PathBuf::from(rest), None),
    }
}

/// One layer of a source image.
#[derive(Debug, Clone)]
pub struct SourceLayer {
    /// Digest of the blob as stored (compressed or not).
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: MediaType,
}

/// An image read from a source.
#[derive(Clone)]
pub struct SourceImage {
    /// The config blob, byte for byte.
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    pub layers: Vec<SourceLayer>,
    /// `name:tag` if the source says (docker-archive `RepoTags`), or a tag alone (OCI).
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
    Archive { path: PathBuf, files: BTreeMap<String, (u64, u64)>, by_digest: BTreeMap<Digest, String>, _decompressed: Option<tempfile::TempPath> },
}

impl SourceImage {
    /// Reads the image at `reference`; `architecture` picks from a registry's index.
    pub fn open(reference: &SourceRef, registry: &RegistryOptions) -> Result<SourceImage, SourceError> {
        match reference {
            SourceRef::Registry(r) => open_registry(r, registry),
            SourceRef::DockerArchive(path) => open_docker_archive(path),
            SourceRef::OciDir { dir, tag } => open_oci(BlobStore::Dir(dir.clone()), dir, tag.as_deref()),
            SourceRef::OciArchive { path, tag } => open_oci(BlobStore::archive(path)?, path, tag.as_deref()),
        }
    }

    /// A reader of layer `index`'s blob that fails at the end if the bytes do not match
    /// the layer's digest.
    pub fn open_layer(&self, index: usize) -> Result<VerifiedReader<Box<dyn Read + Send>>, SourceError> {
        let layer = &self.layers[index];
        let (path, reader) = self.blobs.open(&layer.digest)?;
        Ok(VerifiedReader { inner: HashingWriter::new(io::sink()), reader, expected: layer.digest, path })
    }
}

impl BlobStore {
    /// An archive's store: the tar indexed where it is, or, when it is compressed whole, its
    /// decompressed copy in a temporary file (removed with the store).
    fn archive(path: &Path) -> Result<BlobStore, SourceError> {
        let read_err = |source| SourceError::Read { path: path.to_owned(), source };
        let mut file = io::BufReader::new(File::open(path).map_err(read_err)?);
        let codec = Compression::sniff(io::BufRead::fill_buf(&mut file).map_err(read_err)?);
        let decompressed = match codec {
            Compression::None => None,
            codec => {
                let mut copy = tempfile::NamedTempFile::new().map_err(read_err)?;
                io::copy(&mut codec.decoder(file).map_err(read_err)?, &mut copy).map_err(read_err)?;
                Some(copy.into_temp_path())
            }
        };
        let tar = decompressed.as_deref().unwrap_or(path);
        let files = index_tar(tar).map_err(|e| match e {
            SourceError::Read { source, .. } => read_err(source),
            other => other,
        })?;
        Ok(BlobStore::Archive { path: tar.to_owned(), files, by_digest: BTreeMap::new(), _decompressed: decompressed })
    }

    fn open(&self, digest: &Digest) -> Result<(PathBuf, Box<dyn Read + Send>), SourceError> {
        match self {
            BlobStore::Dir(dir) => {
                let path = dir.join("blobs/sha256").join(digest.hex());
                let file = File::open(&path).map_err(|source| SourceError::Read { path: path.clone(), source })?;
                Ok((path, Box::new(file)))
            }
            BlobStore::Registry(blobs, name) => Ok((PathBuf::from(format!("{name}@{digest}")), Box::new(blobs.fetch(digest)?))),
            BlobStore::Archive { path, files, by_digest, .. } => {
                let name = by_digest.get(digest).cloned().unwrap_or_else(|| format!("blobs/sha256/{}", digest.hex()));
                let &(offset, size) = files
                    .get(&name)
                    .ok_or_else(|| SourceError::Invalid { path: path.clone(), why: format!("no blob {digest} ({name})") })?;
                let read_err = |source| SourceError::Read { path: path.clone(), source };
                let mut file = File::open(path).map_err(read_err)?;
                file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
                Ok((path.join(&name), Box::new(file.take(size))))
            }
        }
    }

    fn read(&self, digest: &Digest) -> Result<Vec<u8>, SourceError> {
        let (path, reader) = self.open(digest)?;
        let mut verified = VerifiedReader { inner: HashingWriter::new(io::sink()), reader, expected: *digest, path: path.clone() };
        let mut bytes = Vec::new();
        verified.read_to_end(&mut bytes).map_err(|source| SourceError::Read { path, source })?;
        Ok(bytes)
    }
}

/// Reads through, hashing; at the end, an error if the digest is not the expected one.
pub struct VerifiedReader<R> {
    inner: HashingWriter<io::Sink>,
    reader: R,
    expected: Digest,
    path: PathBuf,
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        if n == 0 {
            let done = std::mem::replace(&mut self.inner, HashingWriter::new(io::sink()));
            let (actual, _, _) = done.finish();
            if actual != self.expected {
                let err = SourceError::DigestMismatch { path: self.path.clone(), expected: self.expected, actual };
                return Err(io::Error::new(io::ErrorKind::InvalidData, err.to_string()));
            }
            return Ok(0);
        }
        io::Write::write_all(&mut self.inner, &buf[..n])?;
        Ok(n)
    }
}

/// Name -> (offset of the data, size) of every regular file in a tar.
fn index_tar(path: &Path) -> Result<BTreeMap<String, (u64, u64)>, SourceError> {
    let read_err = |source| SourceError::Read { path: path.to_owned(), source };
    let mut archive = tar::Archive::new(File::open(path).map_err(read_err)?);
    let mut files = BTreeMap::new();
    for entry in archive.entries_with_seek().map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.header().entry_type().is_file() {
            let name = entry.path().map_err(read_err)?.to_string_lossy().trim_start_matches("./").to_owned();
            files.insert(name, (entry.raw_file_position(), entry.size()));
        }
    }
    Ok(files)
}

fn invalid(path: &Path, why: impl Into<String>) -> SourceError {
    SourceError::Invalid { path: path.to_owned(), why: why.into() }
}

fn open_oci(store: BlobStore, path: &Path, tag: Option<&str>) -> Result<SourceImage, SourceError> {
    let index_bytes = match &store {
        BlobStore::Dir(dir) => std::fs::read(dir.join("index.json")).map_err(|source| SourceError::Read { path: dir.join("index.json"), source })?,
        BlobStore::Archive { .. } | BlobStore::Registry(..) => read_archive_file(&store, "index.json", path)?,
    };
    let index: ImageIndex = serde_json::from_slice(&index_bytes).map_err(|e| invalid(path, format!("index.json: {e}")))?;
    let ref_name = |d: &oci_spec::image::Descriptor| d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME)).cloned();
    let descriptor = match tag {
        Some(tag) => index.manifests().iter().find(|d| ref_name(d).as_deref() == Some(tag)).ok_or_else(|| invalid(path, format!("no image tagged {tag:?}")))?,
        None if index.manifests().len() == 1 => &index.manifests()[0],
        None => return Err(invalid(path, "holds several images: name one with :TAG")),
    };
    let manifest_digest: Digest = descriptor.digest().to_string().parse().map_err(|e| invalid(path, format!("{e}")))?;
    let manifest: ImageManifest = serde_json::from_slice(&store.read(&manifest_digest)?).map_err(|e| invalid(path, format!("manifest: {e}")))?;
    let config_digest: Digest = manifest.config().digest().to_string().parse().map_err(|e| invalid(path, format!("{e}")))?;
    let config_bytes = store.read(&config_digest)?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| invalid(path, format!("config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(path, "the config's diff_ids and the manifest's layers differ in number"));
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        layers.push(SourceLayer {
            digest: layer.digest().to_string().parse().map_err(|e| invalid(path, format!("{e}")))?,
            diff_id: diff_id.parse().map_err(|e| invalid(path, format!("{e}")))?,
            size: layer.size(),
            media_type: layer.media_type().clone(),
        });
    }
    Ok(SourceImage { config_bytes, config, layers, reference: ref_name(descriptor), origin: None, blobs: Arc::new(store) })
}

fn open_registry(reference: &RegistryRef, options: &RegistryOptions) -> Result<SourceImage, SourceError> {
    let (config_bytes, manifest, blobs) = crate::registry::pull(reference, &crate::spec::host_architecture(), options)?;
    let path = PathBuf::from(reference.to_string());
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| invalid(&path, format!("config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(&path, "the config's diff_ids and the manifest's layers differ in number"));
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        layers.push(SourceLayer {
            digest: layer.digest().to_string().parse().map_err(|e| invalid(&path, format!("{e}")))?,
            diff_id: diff_id.parse().map_err(|e| invalid(&path, format!("{e}")))?,
            size: layer.size(),
            media_type: docker_media_type_as_oci(layer.media_type()),
        });
    }
    let name = format!("{}/{}", reference.host, reference.repository);
    let reference = reference.tag.as_ref().map(|t| format!("{}:{t}", reference.repository));
    Ok(SourceImage { config_bytes, config, layers, reference, origin: Some(name.clone()), blobs: Arc::new(BlobStore::Registry(blobs, name)) })
}

/// Docker's layer media types, as their OCI equivalents.
fn docker_media_type_as_oci(media_type: &MediaType) -> MediaType {
    match media_type.to_string().as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MediaType::ImageLayerGzip,
        "application/vnd.docker.image.rootfs.diff.tar" => MediaType::ImageLayer,
        _ => media_type.clone(),
    }
}

fn read_archive_file(store: &BlobStore, name: &str, path: &Path) -> Result<Vec<u8>, SourceError> {
    let mut bytes = Vec::new();
    read_archive_file_stream(store, name, path)?.read_to_end(&mut bytes).map_err(|source| SourceError::Read { path: path.to_owned(), source })?;
    Ok(bytes)
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
    let manifest: Vec<Entry> = serde_json::from_slice(&read_archive_file(&store, "manifest.json", path)?).map_err(|e| invalid(path, format!("manifest.json: {e}")))?;
    let [entry] = &manifest[..] else { return Err(invalid(path, "manifest.json must describe exactly one image")) };
    let config_bytes = read_archive_file(&store, &entry.config, path)?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| invalid(path, format!("config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(path, "the config's diff_ids and the manifest's layers differ in number"));
    }
    // A docker-archive names layers by path, not digest: hash each one once, here.
    let mut layers = Vec::new();
    for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
        let mut data = read_archive_file_stream(&store, name, path)?;
        let mut magic = [0u8; 4];
        let mut hashing = HashingWriter::new(io::sink());
        let head = read_up_to(&mut data, &mut magic).map_err(|source| SourceError::Read { path: path.to_owned(), source })?;
        io::Write::write_all(&mut hashing, &magic[..head]).expect("a sink takes everything");
        io::copy(&mut data, &mut hashing).map_err(|source| SourceError::Read { path: path.to_owned(), source })?;
        let (digest, size, _) = hashing.finish();
        let media_type = Compression::sniff(&magic[..head]).layer_media_type();
        if let BlobStore::Archive { by_digest, .. } = &mut store {
            by_digest.insert(digest, name.clone());
        }
        layers.push(SourceLayer { digest, diff_id: diff_id.parse().map_err(|e| invalid(path, format!("{e}")))?, size, media_type });
    }
    let reference = entry.repo_tags.as_ref().and_then(|t| t.first().cloned());
    Ok(SourceImage { config_bytes, config, layers, reference, origin: None, blobs: Arc::new(store) })
}

fn read_archive_file_stream(store: &BlobStore, name: &str, path: &Path) -> Result<io::Take<File>, SourceError> {
    let BlobStore::Archive { path: tar, files, .. } = store else { unreachable!("only archives have named files") };
    let &(offset, size) = files.get(name).ok_or_else(|| invalid(path, format!("no {name}")))?;
    let read_err = |source| SourceError::Read { path: path.to_owned(), source };
    let mut file = File::open(tar).map_err(read_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    Ok(file.take(size))
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
