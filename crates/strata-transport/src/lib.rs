//! strata's transports: where images are read from and written to, one module a format,
//! reading and writing together (as go-containerregistry's `layout/`, `tarball/`,
//! `remote/`, `daemon/`):
//!
//! - [`docker_archive`]: `docker-archive:PATH` (`-`: stdout), the tar of `docker save`;
//! - [`oci_layout`]: `oci:DIR[:REF]` and `oci-archive:PATH[:REF]`;
//! - [`registry`]: `docker://HOST/REPO[:TAG|@DIGEST]`, the OCI distribution API;
//! - [`engine`]: `docker-daemon:` and `podman:`, a docker-archive streamed into `load`;
//! - [`dir`]: `dir:DIR`, skopeo's directory format.
//!
//! [`open_image`] reads any of them into a [`SourceImage`], every blob verified (see
//! [`blobs`]); [`write_image`] writes an [`Image`] to any of them. Nothing half-written is
//! ever left at a destination: everything is written as a scratch file (strata-scratch) and
//! renamed into place when complete. A sink checks the digests an image must have
//! ([`Image::config_checked`]) before it commits: before the config and manifest of a
//! docker-archive, an OCI layout's `index.json`, a registry's manifest. Base layers are
//! copied as they are, verified, or re-encoded when the image asks ([`Image::recode_into`]),
//! their diff IDs checked on the way.
//!
//! What a command's reads and writes share is its [`Transport`]: the registry settings (and
//! the one async runtime behind them), the [`cache::LayerCache`], which every sink asks
//! before it hashes or compresses a layer, and where [`progress`] is reported.
//!
//! This crate depends on strata-oci (and strata-scratch) only: it knows images, not Nix.

pub mod blobs;
pub mod cache;
pub mod credentials;
pub mod dir;
pub mod docker_archive;
pub mod engine;
pub mod flatten;
pub mod oci_layout;
pub mod progress;
pub mod registry;

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use strata_oci::compress::Compression;
use strata_oci::digest::{Digest, HashingWriter};
use strata_oci::image::{Image, LayerSource, LayerTar, NotAsRecorded, Previous, SourceImage, TarError};
use strata_oci::manifest::LayerBlob;
use strata_oci::platform::Platform;
use strata_oci::reference::{Engine, ImageRef, OciRef};
use strata_oci::ustar::header;
use strata_scratch::{OutputFile, ScratchFile};

use blobs::{BlobStore, KeepsError, TeeReader};
use cache::{CachedBlob, LayerCache};
pub use docker_archive::write_docker_archive;
use progress::{Counted, Progress, Silent, Stage};
use registry::{RegistryError, RegistryOptions};

/// What one command's reads and writes share.
pub struct Transport {
    pub registry: RegistryOptions,
    pub cache: LayerCache,
    pub progress: Arc<dyn Progress>,
}

impl Transport {
    /// Default registry settings, no layer cache, no progress: for work that must not touch
    /// anything but its output (a Nix build) and for tests.
    pub fn isolated() -> Transport {
        Transport { registry: RegistryOptions::default(), cache: LayerCache::disabled(), progress: Arc::new(Silent) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} changed while it was being written (it was {expected} bytes)")]
    Changed { path: PathBuf, expected: u64 },
    #[error("{0} exists and is not an OCI layout (no oci-layout file) nor an empty directory")]
    NotOciLayout(PathBuf),
    #[error("{0} exists and is not a dir: image (no version file) nor an empty directory")]
    NotDirImage(PathBuf),
    #[error("cannot read OCI layout {path}: {why}")]
    BadOciLayout { path: PathBuf, why: String },
    #[error("cannot copy layer {digest} of the base image")]
    CopyBaseLayer { digest: Digest, source: io::Error },
    #[error("layer {digest} of the base image holds a tar with diff ID {actual}, but its config says {expected}: the image is corrupt")]
    BaseDiffId { digest: Digest, expected: Digest, actual: Digest },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    NotAsRecorded(#[from] NotAsRecorded),
    #[error("cannot run `{engine} load`; is {engine} installed?")]
    EngineMissing { engine: Engine, source: io::Error },
    #[error("`{engine} load` failed: {stderr}")]
    EngineLoad { engine: Engine, stderr: String },
    #[error(
        "Docker {version} cannot read zstd layers (Docker 23 and later can): use --compress gzip or none for docker-daemon:, or podman:, which reads them"
    )]
    DockerZstd { version: String },
    #[error("{dest} holds one image, not an index: choose the platform to write there ({available})")]
    OnePlatformOnly { dest: String, available: String },
    #[error("no image for {platform} among {available}")]
    NoSuchPlatform { platform: Platform, available: String },
    #[error("two images for {0}: an index has one image a platform")]
    SamePlatformTwice(Platform),
    #[error("the images of one index must have one name, not {0} and {1}")]
    NamesDiffer(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    BadReference(#[from] strata_oci::reference::BadReference),
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

/// Reads the image at `reference`; where that is an index of images (a registry's, an OCI
/// layout's), the image for `platform`.
pub fn open_image(reference: &ImageRef, platform: &Platform, registry: &RegistryOptions) -> Result<SourceImage, SourceError> {
    let tag = |r: &Option<OciRef>| r.as_ref().map(OciRef::ref_name);
    match reference {
        ImageRef::Registry(r) => registry::open_registry(r, platform, registry),
        ImageRef::DockerArchive(Some(path)) => docker_archive::open_docker_archive(path),
        ImageRef::Oci { dir, reference } => oci_layout::open_oci(BlobStore::Dir(dir.clone()), dir, tag(reference).as_deref(), platform),
        ImageRef::OciArchive { path, reference } => oci_layout::open_oci(BlobStore::archive(path)?, path, tag(reference).as_deref(), platform),
        ImageRef::Dir(dir) => dir::open_dir(dir),
        ImageRef::DockerArchive(None) | ImageRef::Engine { .. } => Err(SourceError::NotASource(reference.to_string())),
    }
}

/// An image index read from a source: its bytes (verified), and the platforms it lists with
/// their manifests' digests.
#[derive(Debug, Clone)]
pub struct SourceIndex {
    pub bytes: Vec<u8>,
    pub platforms: Vec<(Platform, Digest)>,
}

/// The image index `reference` names, if it names one (an OCI layout's or archive's entry, a
/// registry's manifest list); `None` for a single image. Entries without a platform (such
/// as attestations) are not listed.
pub fn open_index(reference: &ImageRef, registry: &RegistryOptions) -> Result<Option<SourceIndex>, SourceError> {
    let tag = |r: &Option<OciRef>| r.as_ref().map(OciRef::ref_name);
    let (bytes, path) = match reference {
        ImageRef::Registry(r) => (registry::index_of(r, registry)?, PathBuf::from(r.to_string())),
        ImageRef::Oci { dir, reference } => (oci_layout::oci_index(BlobStore::Dir(dir.clone()), dir, tag(reference).as_deref())?, dir.clone()),
        ImageRef::OciArchive { path, reference } => (oci_layout::oci_index(BlobStore::archive(path)?, path, tag(reference).as_deref())?, path.clone()),
        ImageRef::DockerArchive(Some(_)) | ImageRef::Dir(_) => (None, PathBuf::new()),
        ImageRef::DockerArchive(None) | ImageRef::Engine { .. } => return Err(SourceError::NotASource(reference.to_string())),
    };
    let Some(bytes) = bytes else { return Ok(None) };
    let index: oci_spec::image::ImageIndex = blobs::parse_json(&bytes, &path, "index")?;
    let mut platforms = Vec::new();
    for entry in index.manifests() {
        if let Some(p) = entry.platform() {
            let digest = Digest::try_from(entry.digest()).map_err(|e| blobs::invalid(&path, format!("index: {e}")))?;
            platforms.push((Platform::from_oci(p), digest));
        }
    }
    Ok(Some(SourceIndex { bytes, platforms }))
}

/// docker-archive layers default to uncompressed (fast `docker load`), and `dir:` too (as
/// skopeo leaves them), the rest to gzip.
pub fn default_compression(dest: &ImageRef) -> Compression {
    match dest {
        ImageRef::DockerArchive(_) | ImageRef::Engine { .. } | ImageRef::Dir(_) => Compression::None,
        _ => Compression::Gzip,
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// `name:tag` as the image is known at the destination.
    pub reference: String,
    pub config_digest: Digest,
    /// The manifest's digest, for OCI destinations.
    pub manifest_digest: Option<Digest>,
    /// The layer blobs as written there, in order.
    pub layers: Vec<LayerBlob>,
}

/// What was written as a multi-platform image: the index's reference and digest, and each
/// platform's image.
#[derive(Debug, Clone)]
pub struct WrittenIndex {
    pub reference: String,
    pub index_digest: Digest,
    pub images: Vec<(Platform, Written)>,
}

/// The platforms of `images`, as an error lists them.
pub fn platforms_of<L: LayerTar>(images: &[Image<L>]) -> String {
    images.iter().map(|i| i.platform().to_string()).collect::<Vec<_>>().join(", ")
}

/// Writes `images` (one a platform, one name) as one multi-platform image: an OCI image
/// index listing each platform's manifest, at an OCI layout or archive, or a registry (the
/// manifests pushed by digest, the index to the tag). Destinations that hold one image
/// (docker-archive, engines) are refused: write the platform's image there with
/// [`write_image`] ([`choose_platform`]).
///
/// `keep` is an index to write as it is (a copy of every platform of a source keeps its
/// index digest): it is, when it lists exactly the manifests written, in order; else a new
/// index is made, with a warning.
pub fn write_index<L: LayerTar>(
    images: &[Image<L>],
    dest: &ImageRef,
    compression: Compression,
    keep: Option<&[u8]>,
    cx: &Transport,
) -> Result<WrittenIndex, SinkError> {
    for (i, image) in images.iter().enumerate() {
        if image.name != images[0].name {
            return Err(SinkError::NamesDiffer(images[0].name.clone(), image.name.clone()));
        }
        if images[..i].iter().any(|earlier| earlier.platform().same_as(&image.platform())) {
            return Err(SinkError::SamePlatformTwice(image.platform()));
        }
    }
    let written = match dest {
        ImageRef::Oci { dir, reference } => oci_layout::write_index_layout(images, dir, reference.as_ref(), compression, keep, cx),
        ImageRef::OciArchive { path, reference } => oci_layout::write_index_archive(images, path, reference.as_ref(), compression, keep, cx),
        ImageRef::Registry(r) => registry::push_index(images, r, compression, keep, cx).map_err(SinkError::from),
        ImageRef::DockerArchive(_) | ImageRef::Engine { .. } | ImageRef::Dir(_) => {
            Err(SinkError::OnePlatformOnly { dest: dest.to_string(), available: platforms_of(images) })
        }
    };
    cx.progress.done();
    cx.cache.prune();
    written
}

/// The index listing `manifests` (each platform's bytes): `keep` where it lists exactly
/// those (see [`write_index`]), else a new one.
pub(crate) fn index_bytes(manifests: &[(Platform, &[u8])], keep: Option<&[u8]>) -> Vec<u8> {
    if let Some(keep) = keep {
        let listed =
            serde_json::from_slice::<oci_spec::image::ImageIndex>(keep).map(|i| i.manifests().iter().map(|d| d.digest().to_string()).collect::<Vec<_>>());
        let written: Vec<String> = manifests.iter().map(|(_, bytes)| Digest::of(bytes).to_string()).collect();
        if listed.is_ok_and(|listed| listed == written) {
            return keep.to_vec();
        }
        tracing::warn!(
            "the source's index lists other manifests than those copied (entries without a platform, or images changed on the way): a new index is made"
        );
    }
    strata_oci::manifest::index_blob(manifests)
}

/// The image of `images` for `platform`.
pub fn choose_platform<'a, L: LayerTar>(images: &'a [Image<L>], platform: &Platform) -> Result<&'a Image<L>, SinkError> {
    images
        .iter()
        .find(|i| i.platform().same_as(platform))
        .ok_or_else(|| SinkError::NoSuchPlatform { platform: platform.clone(), available: platforms_of(images) })
}

/// Writes `image` to `dest`; then keeps the layer cache within its bound.
pub fn write_image<L: LayerTar>(image: &Image<L>, dest: &ImageRef, compression: Compression, cx: &Transport) -> Result<Written, SinkError> {
    let written = write_image_to(image, dest, compression, cx);
    cx.progress.done();
    cx.cache.prune();
    written
}

fn write_image_to<L: LayerTar>(image: &Image<L>, dest: &ImageRef, compression: Compression, cx: &Transport) -> Result<Written, SinkError> {
    match dest {
        ImageRef::Registry(r) => {
            let pushed = crate::registry::push(image, r, compression, cx)?;
            let (uploaded, mounted, present, made) = (pushed.uploaded, pushed.mounted, pushed.present, pushed.made);
            tracing::info!("{uploaded} layers uploaded, {mounted} mounted, {present} already there; {made} layers read");
            Ok(Written { reference: r.image_name(), config_digest: pushed.config_digest, manifest_digest: Some(pushed.manifest_digest), layers: pushed.layers })
        }
        ImageRef::DockerArchive(None) => {
            let stdout = io::stdout().lock();
            // Small enough that file chunks (mostly larger) go straight through, uncopied.
            let mut out = BufWriter::with_capacity(64 << 10, stdout);
            let written = write_docker_archive(image, &mut out, compression, None, cx)?;
            out.flush().map_err(|source| SinkError::Write { path: "standard output".into(), source })?;
            Ok(written)
        }
        ImageRef::DockerArchive(Some(path)) => write_file_atomically(path, |out| write_docker_archive(image, out, compression, None, cx)),
        ImageRef::Engine { engine, name } => engine::load_into(*engine, image, compression, name.as_ref().map(ToString::to_string).as_deref(), cx),
        ImageRef::Oci { dir, reference } => oci_layout::write_layout(image, dir, reference.as_ref(), compression, cx),
        ImageRef::OciArchive { path, reference } => oci_layout::write_archive(image, path, reference.as_ref(), compression, cx),
        ImageRef::Dir(dir) => dir::write_dir(image, dir, compression, cx),
    }
}

/// Writes `path` whole or not at all, through an [`OutputFile`]: `write` fills it; on
/// failure `path` is untouched.
pub(crate) fn write_file_atomically<T>(path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> Result<T, SinkError>) -> Result<T, SinkError> {
    let output = OutputFile::create(path).map_err(|source| SinkError::Write { path: path.to_owned(), source })?;
    write_output(output, path, write)
}

/// Fills `output` (opened for `path`) with `write` and commits it.
pub(crate) fn write_output<T>(output: OutputFile, path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> Result<T, SinkError>) -> Result<T, SinkError> {
    let write_err = |source| SinkError::Write { path: path.to_owned(), source };
    let result = {
        let mut out = BufWriter::with_capacity(1 << 20, output.as_file());
        let result = write(&mut out)?;
        out.flush().map_err(write_err)?;
        result
    };
    output.commit().map_err(write_err)?;
    Ok(result)
}

/// Whether `error`, or one of its causes, is a write to a pipe whose reader went away.
pub fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Runs `work` on every index in `0..n` on all cores, biggest `weight` first (so the longest
/// jobs start early and the cores finish together), and returns the results in index order.
/// The first error stops the remaining work and is returned.
///
/// Written here rather than with rayon: rayon's splitting does not start jobs in a chosen
/// order, and this scheduling is what keeps two cores busy to the end.
pub(crate) fn for_each_biggest_first<T: Send, E: Send>(
    n: usize,
    weight: impl Fn(usize) -> u64,
    work: impl Fn(usize) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| std::cmp::Reverse(weight(*i)));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(n.max(1));
    let mut results: Vec<(usize, Result<T, E>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let result = work(i);
                        failed.fetch_or(result.is_err(), Ordering::Relaxed);
                        done.push((i, result));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker panicked")).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The layer cache's key for `layer` written with `compression`, and the codec its blob will
/// be in: a built layer's fingerprint; a base layer re-encoded, its digest; `None` for a
/// base layer copied as it is (its blob is known already).
pub(crate) fn cache_key<L: LayerTar>(image: &Image<L>, layer: LayerSource<L>, compression: Compression) -> Option<(Digest, Compression)> {
    match (layer, image.recode_into(&layer)) {
        (LayerSource::Built(recipe), _) => Some((recipe.fingerprint(), compression)),
        (LayerSource::Base(base, j), Some(codec)) => Some((Digest::of(format!("recode {}", base.layers[j].digest).as_bytes()), codec)),
        (LayerSource::Base(..), None) => None,
    }
}

/// The blob a built or re-encoded layer will have, known before it is made: from the layer
/// cache (`key`, see [`cache_key`]), else from the digests recorded when the image was
/// described in Nix. Only ever used to find a blob that is there already (in a layout, in a
/// registry); a blob that is made is hashed as it is made.
pub(crate) fn known_blob<L: LayerTar>(
    image: &Image<L>,
    index: usize,
    compression: Compression,
    key: Option<(Digest, Compression)>,
    cache: &LayerCache,
) -> Option<LayerBlob> {
    key.and_then(|(fingerprint, codec)| Some(cache.get(&fingerprint, codec)?.blob(codec))).or_else(|| image.recorded_blob(index, compression))
}

/// The diff ID of built layer `layer`, and whether its tar was read for it: what the layer
/// cache knows of the layer (in any codec), else its tar hashed (and the cache told).
fn diff_id_of<L: LayerTar>(recipe: &L, cache: &LayerCache, layer: usize, progress: &dyn Progress) -> Result<(Digest, bool), SinkError> {
    let fingerprint = recipe.fingerprint();
    if let Some(hit) = Compression::ALL.into_iter().find_map(|codec| cache.get(&fingerprint, codec)) {
        return Ok((hit.diff_id, false));
    }
    progress.start(layer, Stage::Hashing, recipe.tar_len());
    let mut tar = HashingWriter::new(Counted { inner: io::sink(), layer, progress });
    let written = recipe.write_tar(&mut tar);
    progress.finish(layer);
    written?;
    let (diff_id, size, _) = tar.finish();
    cache.put(&fingerprint, Compression::None, &CachedBlob { diff_id, digest: diff_id, size });
    Ok((diff_id, true))
}

/// A built layer's blob found in the previous release ([`held_by_previous`]).
#[derive(Clone)]
pub(crate) struct Taken {
    /// Its place among the previous release's layers.
    pub index: usize,
    /// The blob, named with the OCI media type of its codec (the previous release's may be
    /// Docker's).
    pub blob: LayerBlob,
    /// Whether the layer's tar was read to know.
    pub read: bool,
    /// Whether the blob was written whole to the `keep` of [`held_by_previous`] on the way.
    pub kept: bool,
}

/// The layer of the previous release (`Image::previous`, `--previous`) that holds layer `i`'s
/// tar in `compression`; `None` if layer `i` is not built or the previous release does not
/// hold it. A blob `known` already (the layer cache's, Nix's record: [`known_blob`], which
/// the caller has looked up) is held if the previous release has a blob of its digest and
/// size: that blob is taken unread, being what the digest names (every copy checks it on the
/// way), with the known diff ID, whatever the release's config says. Otherwise the layer's diff ID is the layer cache's, else its tar
/// hashed. The previous release's layer of that diff ID (as its config says) is then taken
/// as it is if a trusted signature vouches for the release ([`Previous::signed`]); otherwise
/// it is decoded and compared with the tar byte for byte first ([`holds_tar`]): what an
/// unsigned release says of its blobs is not taken on trust (podman 4 runs an image whose
/// layer is not its config's diff ID). The blob read for that is also written to `keep` (a
/// file at the path given), if any, so that a sink that needs a copy reads it once; `keep`
/// then holds bytes even if the blob is not taken.
pub(crate) fn held_by_previous<L: LayerTar>(
    image: &Image<L>,
    i: usize,
    compression: Compression,
    known: Option<&LayerBlob>,
    cache: &LayerCache,
    progress: &dyn Progress,
    keep: Option<(&mut (dyn Write + Send), &Path)>,
) -> Result<Option<Taken>, SinkError> {
    let layer = image.layer_sources()[i];
    let (Some(Previous { release: previous, signed }), LayerSource::Built(recipe)) = (&image.previous, layer) else { return Ok(None) };
    let held = |l: &LayerBlob| Compression::of_media_type(&l.media_type) == Some(compression);
    if !previous.layers.iter().any(held) {
        return Ok(None);
    }
    if let Some(known) = known {
        let same = previous.layers.iter().position(|l| held(l) && l.digest == known.digest && l.size == known.size);
        return Ok(same.map(|index| Taken {
            index,
            blob: LayerBlob { media_type: compression.layer_media_type(), ..known.clone() },
            read: false,
            kept: false,
        }));
    }
    let (diff_id, read) = diff_id_of(recipe, cache, i, progress)?;
    let taken = |index: usize, kept: bool| Taken {
        index,
        blob: LayerBlob { media_type: compression.layer_media_type(), ..previous.layers[index].clone() },
        read,
        kept,
    };
    if compression == Compression::None {
        // An uncompressed blob is named by the digest of its tar: its name is the proof.
        return Ok(previous.layers.iter().position(|l| held(l) && l.digest == diff_id).map(|j| taken(j, false)));
    }
    let Some(j) = previous.layers.iter().position(|l| held(l) && l.diff_id == diff_id) else { return Ok(None) };
    if *signed {
        return Ok(Some(taken(j, false)));
    }
    progress.start(i, Stage::Checking, recipe.tar_len());
    let kept = keep.is_some();
    let holds = holds_tar(previous, j, recipe, &|n| progress.advance(i, n), keep);
    progress.finish(i);
    Ok(holds?.then(|| taken(j, kept)))
}

/// Whether layer `j` of `previous`, decoded, is byte for byte the tar of `recipe`: its blob
/// read (its size and digest checked at the end; all of it written to `keep`, if any) and
/// decoded while the tar is made and compared with it, `compared` told of each stretch that
/// matched. A blob that cannot be read or decoded does not hold the tar (the log says why);
/// a tar that cannot be made, or a copy that cannot be written, is an error.
fn holds_tar<L: LayerTar>(
    previous: &SourceImage,
    j: usize,
    recipe: &L,
    compared: &dyn Fn(u64),
    keep: Option<(&mut (dyn Write + Send), &Path)>,
) -> Result<bool, SinkError> {
    let Some(codec) = Compression::of_media_type(&previous.layers[j].media_type) else { return Ok(false) };
    read_previous_blob(previous, j, keep, |blob| compare_decoded(codec, blob, recipe, compared))
}

/// Copies layer `j` of `previous` whole to `copy` (a file at `path`), its size and digest
/// checked; `false` (the log says why) if the blob cannot be read or is not what its
/// descriptor says, when `copy` may hold part of it.
fn copied_whole(previous: &SourceImage, j: usize, copy: &mut (dyn Write + Send), path: &Path) -> Result<bool, SinkError> {
    read_previous_blob(previous, j, Some((copy, path)), |blob| io::copy(blob, &mut io::sink()).map(|_| true).map_err(Unheld::Unreadable))
}

/// Layer `j` of `previous` read by `consume`, every byte read also written to `keep` (a file
/// at the path given), if any: `true` if `consume` says so and the blob, then read whole,
/// has its size and digest; `false` (the log says why) if it cannot be read or is not what
/// its descriptor says. A failed write to `keep`, or `consume`'s [`Unheld::Tar`], is an error.
fn read_previous_blob(
    previous: &SourceImage,
    j: usize,
    keep: Option<(&mut (dyn Write + Send), &Path)>,
    consume: impl FnOnce(&mut (dyn Read + Send)) -> Result<bool, Unheld>,
) -> Result<bool, SinkError> {
    let blob = &previous.layers[j];
    let mut nowhere = io::sink();
    let (copy, copy_path): (&mut (dyn Write + Send), _) = match keep {
        Some((copy, path)) => (copy, Some(path)),
        None => (&mut nowhere, None),
    };
    let mut verified = match previous.open_layer(j) {
        Ok(reader) => TeeReader { inner: reader, copy: KeepsError { inner: copy, error: None } },
        Err(e) => return unreadable(blob, e),
    };
    let consumed = consume(&mut verified);
    if let (Some(source), Some(path)) = (verified.copy.error, copy_path) {
        return Err(SinkError::Write { path: path.to_owned(), source });
    }
    match consumed {
        Ok(true) => verified.inner.finish().map_or_else(|e| unreadable(blob, e), |()| Ok(true)),
        Ok(false) => Ok(false),
        Err(Unheld::Unreadable(e)) => unreadable(blob, e),
        Err(Unheld::Tar(e)) => Err(e),
    }
}

fn unreadable(blob: &LayerBlob, e: io::Error) -> Result<bool, SinkError> {
    tracing::warn!("the previous release's layer {} cannot be read ({e}): the layer is compressed again", blob.digest);
    Ok(false)
}

/// Why [`compare_decoded`] could not tell.
enum Unheld {
    Unreadable(io::Error),
    Tar(SinkError),
}

/// Whether `blob`, decoded from `codec`, is byte for byte the tar of `recipe`; on `true`, the
/// whole blob has been read (what follows the end of its encoded stream too).
fn compare_decoded<L: LayerTar>(codec: Compression, blob: &mut (dyn Read + Send), recipe: &L, compared: &dyn Fn(u64)) -> Result<bool, Unheld> {
    let mut decoder = codec.decoder(io::BufReader::with_capacity(1 << 20, &mut *blob)).map_err(Unheld::Unreadable)?;
    let mut tar = recipe.pieces();
    let tar_err = |e: TarError| Unheld::Tar(e.into());
    let mut buf = vec![0; 1 << 20];
    loop {
        let mut decoded = match decoder.read(&mut buf).map_err(Unheld::Unreadable)? {
            0 => break,
            n => &buf[..n],
        };
        while !decoded.is_empty() {
            let piece = tar.fill().map_err(tar_err)?;
            let n = piece.len().min(decoded.len());
            if n == 0 || piece[..n] != decoded[..n] {
                return Ok(false); // longer than the tar, or other bytes
            }
            tar.consume(n);
            compared(n as u64);
            decoded = &decoded[n..];
        }
    }
    if !tar.fill().map_err(tar_err)?.is_empty() {
        return Ok(false); // shorter than the tar
    }
    drop(decoder);
    io::copy(blob, &mut io::sink()).map_err(Unheld::Unreadable)?;
    Ok(true)
}

/// Whether blobs must survive a power cut once they have their names (an OCI layout's, a
/// `dir:` image's: each is flushed to disk first), or are staged in a scratch directory for
/// an archive or a stream that is itself flushed or read (a power cut loses the scratch
/// directory whole: flushing them would only cost time, a second write of every byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    Flushed,
    Staged,
}

impl Durability {
    /// Names the scratch file `temp` `dest`, unless `dest` is there already (a blob of the
    /// same digest).
    pub(crate) fn name_blob(self, temp: ScratchFile, dest: &Path) -> std::io::Result<()> {
        match self {
            Durability::Flushed => temp.persist_new(dest),
            Durability::Staged => temp.persist_new_staged(dest),
        }
    }

    /// A writer of a blob into `file`. One to be flushed asks the kernel to start writing it
    /// to disk as it grows ([`WriteBehind`]).
    pub(crate) fn writer(self, file: &File) -> WriteBehind<'_> {
        WriteBehind { file, written: 0, started: 0, enabled: self == Durability::Flushed }
    }
}

/// Writes to a file, asking the kernel every [`WriteBehind::EVERY`] bytes to start writing
/// them to disk (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait).
///
/// A blob of a layout is flushed (fsync) before it is named. Left to itself, the kernel
/// writes nothing back in the seconds a build takes, so the flush writes the whole blob and
/// commits the file system's journal while it does, and on ext4 the other blobs' writers wait
/// for that commit: measured on the benchmark's closure, both cores idle for about 0.1 s when
/// its biggest layer is flushed. Written behind, the flush finds little left to write;
/// measured, a cold zstd layout in 0.99x the time. The hint may fail or be ignored: the
/// flush is what makes the blob durable.
pub(crate) struct WriteBehind<'a> {
    file: &'a File,
    written: u64,
    /// Where the bytes not yet handed to the kernel start.
    started: u64,
    enabled: bool,
}

impl WriteBehind<'_> {
    const EVERY: u64 = 32 << 20;
}

impl Write for WriteBehind<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.written += n as u64;
        if self.enabled && self.written - self.started >= Self::EVERY {
            // Linux alone has the call; elsewhere the flush does all the writing.
            #[cfg(target_os = "linux")]
            // SAFETY: a plain system call on an open file descriptor; its result is a hint's.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), self.started as i64, (self.written - self.started) as i64, libc::SYNC_FILE_RANGE_WRITE)
            };
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every layer of `image` as a blob file named by its digest into `blobs`, through
/// scratch files in `scratch`: built layers compressed and hashed, base layers copied as
/// they are or re-encoded (and verified either way), in parallel. A layer whose blob is known
/// ([`known_blob`]) and which `blobs` holds already (of the size known) is not made again.
/// Blobs are named behind their writers ([`NamedBehind`]); all are named on return.
pub(crate) fn write_layer_blobs<L: LayerTar>(
    image: &Image<L>,
    compression: Compression,
    scratch: &Path,
    blobs: &Path,
    durability: Durability,
    cx: &Transport,
) -> Result<Vec<LayerBlob>, SinkError> {
    let cache = &cx.cache;
    let write_err = |source| SinkError::Write { path: blobs.to_owned(), source };
    let layers = image.layer_sources();
    let weight = |i: usize| match layers[i] {
        LayerSource::Built(recipe) => recipe.tar_len(),
        LayerSource::Base(base, j) => base.layers[j].size,
    };
    let (reused, taken) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let written = std::thread::scope(|scope| {
        let naming = NamedBehind::new(scope, durability == Durability::Flushed);
        let written = for_each_biggest_first(layers.len(), weight, |i| -> Result<LayerBlob, SinkError> {
            let key = cache_key(image, layers[i], compression);
            let known = known_blob(image, i, compression, key, cache);
            if let Some(hit) = &known {
                let there = std::fs::symlink_metadata(blobs.join(hit.digest.hex()));
                if there.is_ok_and(|m| m.is_file() && m.len() == hit.size) {
                    reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(hit.clone());
                }
            }
            let mut temp = ScratchFile::new_in(scratch, "strata-blob").map_err(write_err)?;
            if let Some(Previous { release: previous, .. }) = &image.previous {
                let mut out = BufWriter::with_capacity(1 << 20, durability.writer(temp.as_file()));
                let held = held_by_previous(image, i, compression, known.as_ref(), cache, &*cx.progress, Some((&mut out, temp.path())))?;
                // The previous release's blob, as it was read to be checked, or copied now (its
                // digest checked on the way; one that is not what it is named is made anew).
                // Not remembered by the layer cache, which knows the blobs strata makes.
                if let Some(Taken { index, blob, kept, .. }) = held {
                    if kept || copied_whole(previous, index, &mut out, temp.path())? {
                        out.flush().map_err(write_err)?;
                        drop(out);
                        let dest = blobs.join(blob.digest.hex());
                        naming.run(move || durability.name_blob(temp, &dest).map_err(write_err))?;
                        taken.fetch_add(1, Ordering::Relaxed);
                        return Ok(blob);
                    }
                }
                // What was read of a blob not taken goes with its scratch file.
                drop(out);
                temp = ScratchFile::new_in(scratch, "strata-blob").map_err(write_err)?;
            }
            let out = BufWriter::with_capacity(1 << 20, durability.writer(temp.as_file()));
            let (blob, mut file) = write_layer_blob(image, i, compression, out, temp.path(), &*cx.progress)?;
            file.flush().map_err(write_err)?;
            drop(file);
            let (dest, cached) = (blobs.join(blob.digest.hex()), CachedBlob::of(&blob));
            naming.run(move || {
                durability.name_blob(temp, &dest).map_err(write_err)?;
                if let Some((fingerprint, codec)) = key {
                    cache.put(&fingerprint, codec, &cached);
                }
                Ok(())
            })?;
            Ok(blob)
        });
        let named = naming.wait();
        let written = written?;
        named.map(|()| written)
    })?;
    tracing::info!(
        "{} of {} layer blobs were there already (known to the layer cache), {} taken from the previous release: not made again",
        reused.into_inner(),
        layers.len(),
        taken.into_inner()
    );
    Ok(written)
}

/// Blobs named (flushed to disk, then renamed: [`Durability::name_blob`]) on threads of
/// their own, so that the thread that wrote a layer goes on to the next while the last is
/// flushed. A flush waits on the disk (on the benchmark's machine, its cache flush takes
/// 10 to 20 ms), and a writer waiting there feeds the compression threads nothing. Measured
/// on a cold zstd layout: 0.98x the time named behind, where no flush at all would take
/// 0.95x. At most [`NamedBehind::AT_ONCE`] threads; past them, a blob is named by its writer,
/// as a staged blob always is (a rename does not wait).
struct NamedBehind<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    behind: bool,
    running: Arc<AtomicUsize>,
    threads: std::sync::Mutex<Vec<std::thread::ScopedJoinHandle<'scope, Result<(), SinkError>>>>,
}

impl<'scope, 'env> NamedBehind<'scope, 'env> {
    const AT_ONCE: usize = 8;

    fn new(scope: &'scope std::thread::Scope<'scope, 'env>, behind: bool) -> Self {
        NamedBehind { scope, behind, running: Arc::default(), threads: Default::default() }
    }

    /// Runs `name` on a thread of its own, or here if [`Self::AT_ONCE`] are running (or
    /// nothing is named behind); the error of one run here is returned now, that of one on a
    /// thread by [`Self::wait`].
    fn run(&self, name: impl FnOnce() -> Result<(), SinkError> + Send + 'scope) -> Result<(), SinkError> {
        if !self.behind {
            return name();
        }
        if self.running.fetch_add(1, Ordering::SeqCst) >= Self::AT_ONCE {
            self.running.fetch_sub(1, Ordering::SeqCst);
            return name();
        }
        let running = self.running.clone();
        let thread = self.scope.spawn(move || {
            let named = name();
            running.fetch_sub(1, Ordering::SeqCst);
            named
        });
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).push(thread);
        Ok(())
    }

    /// Waits until every blob is named; the first error, if any.
    fn wait(self) -> Result<(), SinkError> {
        let threads = self.threads.into_inner().unwrap_or_else(|e| e.into_inner());
        let results: Vec<Result<(), SinkError>> = threads.into_iter().map(|t| t.join().expect("naming a blob panicked")).collect();
        results.into_iter().collect()
    }
}

/// Writes layer `index`'s blob to `out`: a built layer's tar through `compression`, hashed
/// on the way; a base layer copied as it is or re-encoded (see [`Image::recode_into`]),
/// verified either way; reported to `progress`. Returns the blob's record and `out`; `path`
/// names `out` in errors.
pub(crate) fn write_layer_blob<L: LayerTar, W: Write>(
    image: &Image<L>,
    index: usize,
    compression: Compression,
    out: W,
    path: &Path,
    progress: &dyn Progress,
) -> Result<(LayerBlob, W), SinkError> {
    let write_err = |source| SinkError::Write { path: path.to_owned(), source };
    let layer = image.layer_sources()[index];
    let (base, j) = match layer {
        LayerSource::Built(recipe) => {
            let stage = if compression == Compression::None { Stage::Hashing } else { Stage::Compressing };
            progress.start(index, stage, recipe.tar_len());
            let mut tar = Counted { inner: compression.layer_encoder(out).map_err(write_err)?, layer: index, progress };
            recipe.write_tar(&mut tar)?;
            let written = tar.inner.finish().map_err(write_err)?;
            progress.finish(index);
            return Ok(written);
        }
        LayerSource::Base(base, j) => (base, j),
    };
    let out = HashingWriter::new(out);
    let (media_type, out) = match image.recode_into(&layer) {
        Some(codec) => {
            // The tar's size is not known before it is decompressed.
            progress.start(index, Stage::Compressing, 0);
            let counted = Counted { inner: codec.encoder(out).map_err(write_err)?, layer: index, progress };
            let encoder = recode_base_layer(base, j, codec, counted)?;
            (codec.layer_media_type(), encoder.inner.finish().map_err(write_err)?)
        }
        None => {
            progress.start(index, Stage::Copying, base.layers[j].size);
            let mut counted = Counted { inner: out, layer: index, progress };
            copy_base_layer(base, j, &mut counted)?;
            (base.layers[j].media_type.clone(), counted.inner)
        }
    };
    progress.finish(index);
    let (digest, size, out) = out.finish();
    Ok((LayerBlob { diff_id: base.layers[j].diff_id, digest, size, media_type }, out))
}

/// Copies layer `index` of `base` to `out`, checking its digest and size.
pub(crate) fn copy_base_layer(base: &SourceImage, index: usize, out: &mut impl Write) -> Result<(), SinkError> {
    let digest = base.layers[index].digest;
    let mut reader = base.open_layer(index).map_err(|source| SinkError::CopyBaseLayer { digest, source })?;
    io::copy(&mut reader, out).map_err(|source| SinkError::CopyBaseLayer { digest, source })?;
    reader.finish().map_err(|source| SinkError::CopyBaseLayer { digest, source })
}

/// Decodes layer `index` of `base` into `out` (an encoder of another codec), checking the
/// blob's digest and size and the tar's diff ID; returns `out`.
pub(crate) fn recode_base_layer<W: Write>(base: &SourceImage, index: usize, codec: Compression, out: W) -> Result<W, SinkError> {
    let layer = &base.layers[index];
    let err = |source| SinkError::CopyBaseLayer { digest: layer.digest, source };
    let mut reader = base.open_layer(index).map_err(err)?;
    let stored = Compression::of_media_type(&layer.media_type).unwrap_or(Compression::None);
    debug_assert_ne!(stored, codec, "a layer is re-encoded only into another codec");
    let mut tar = HashingWriter::new(out);
    let mut decoder = stored.decoder(io::BufReader::new(&mut reader)).map_err(err)?;
    io::copy(&mut decoder, &mut tar).map_err(err)?;
    drop(decoder);
    reader.finish().map_err(err)?;
    let (actual, _, out) = tar.finish();
    if actual != layer.diff_id {
        return Err(SinkError::BaseDiffId { digest: layer.digest, expected: layer.diff_id, actual });
    }
    Ok(out)
}

/// A tar around whole files (the docker-archive and OCI archive containers): regular files
/// only, mode 0644, owned by root, with one fixed mtime.
pub(crate) struct OuterTar<W: Write> {
    out: W,
    mtime: u64,
    path: PathBuf,
}

impl<W: Write> OuterTar<W> {
    fn write_err(&self, source: io::Error) -> SinkError {
        SinkError::Write { path: self.path.clone(), source }
    }

    fn header(&mut self, name: &str, size: u64) -> Result<(), SinkError> {
        let h = header(name.as_bytes(), tar::EntryType::Regular, 0o644, 0, 0, size, self.mtime, b"");
        self.out.write_all(h.as_bytes()).map_err(|e| self.write_err(e))
    }

    fn pad(&mut self, size: u64) -> Result<(), SinkError> {
        let pad = (size.next_multiple_of(512) - size) as usize;
        self.out.write_all(&[0u8; 512][..pad]).map_err(|e| self.write_err(e))
    }

    fn bytes(&mut self, name: &str, data: &[u8]) -> Result<(), SinkError> {
        self.header(name, data.len() as u64)?;
        self.out.write_all(data).map_err(|e| self.write_err(e))?;
        self.pad(data.len() as u64)
    }

    fn file(&mut self, name: &str, source: &Path) -> Result<(), SinkError> {
        let read_err = |e| SinkError::Read { path: source.to_owned(), source: e };
        let mut file = File::open(source).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        self.header(name, size)?;
        let copied = io::copy(&mut (&mut file).take(size), &mut self.out).map_err(|e| self.write_err(e))?;
        if copied != size {
            return Err(SinkError::Changed { path: source.to_owned(), expected: size });
        }
        self.pad(size)
    }

    /// Ends the archive and flushes the writer.
    fn finish(mut self) -> Result<W, SinkError> {
        self.out.write_all(&[0u8; 1024]).and_then(|()| self.out.flush()).map_err(|e| self.write_err(e))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_work_keeps_order_and_stops_on_error() {
        let out = for_each_biggest_first(50, |i| i as u64, |i| Ok::<_, ()>(i * 2)).unwrap();
        assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        let err = for_each_biggest_first(50, |_| 0, |i| if i == 7 { Err(i) } else { Ok(i) });
        assert_eq!(err, Err(7));
    }

    /// Named behind or not, every naming has run when `wait` returns, more of them than run
    /// at once; an error of any, behind or here, is returned.
    #[test]
    fn every_blob_is_named_before_the_wait_ends() {
        for behind in [true, false] {
            let ran = AtomicUsize::new(0);
            let failed = std::thread::scope(|scope| {
                let naming = NamedBehind::new(scope, behind);
                let mut now = Ok(());
                for i in 0..3 * NamedBehind::AT_ONCE {
                    let ran = &ran;
                    let run = naming.run(move || {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        ran.fetch_add(1, Ordering::SeqCst);
                        if i == 5 {
                            return Err(SinkError::Write { path: PathBuf::from(format!("blob {i}")), source: io::Error::other("disk full") });
                        }
                        Ok(())
                    });
                    now = now.and(run);
                }
                now.and(naming.wait())
            });
            assert_eq!(ran.into_inner(), 3 * NamedBehind::AT_ONCE, "behind: {behind}");
            assert!(failed.is_err_and(|e| e.to_string().contains("blob 5")), "behind: {behind}");
        }
    }

    /// Written behind or not, every byte reaches the file, in pieces of any size.
    #[test]
    fn blob_writers_write_every_byte() {
        let data: Vec<u8> = (0..(70u32 << 20) / 4).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
        for durability in [Durability::Flushed, Durability::Staged] {
            let file = tempfile::tempfile().unwrap();
            let mut out = BufWriter::with_capacity(1 << 20, durability.writer(&file));
            for piece in data.chunks(3_000_017) {
                out.write_all(piece).unwrap();
            }
            out.flush().unwrap();
            drop(out);
            let mut back = Vec::new();
            io::Seek::rewind(&mut &file).unwrap();
            (&file).read_to_end(&mut back).unwrap();
            assert!(back == data, "{durability:?}: {} bytes of {}", back.len(), data.len());
        }
    }
}
