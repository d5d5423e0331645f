//! The image: a config and its layers, bottom first, as go-containerregistry's `v1.Image` is.
//!
//! A layer is one of two things:
//! - **built**: a producer of its deterministic tar ([`LayerTar`]), whose size is known before
//!   a byte is written (strata-build's layer recipes); sinks hash and compress it on the way;
//! - **a blob** of an image read back ([`SourceImage`]), with one [`LayerBlob`] record, copied
//!   as it is (every byte verified) or re-encoded into another codec ([`Recode`]).
//!
//! The config is either a copy's, byte for byte (so its image ID stays), or one to complete
//! with the diff IDs of the layers as a sink writes them ([`ConfigRecipe`]). An image may carry
//! the digests it must have ([`RecordedDigests`]): every sink checks them before it commits.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use oci_spec::image::{History, ImageConfiguration, MediaType, RootFs};

use crate::canonical::canonical_json;
use crate::compress::Compression;
use crate::digest::{Digest, VerifiedReader};
use crate::manifest::{manifest_blob, LayerBlob};
use crate::platform::Platform;
use crate::reference::{check_tag, ImageName};

/// Why a built layer's tar could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The output failed.
    #[error("cannot write the layer")]
    Write(#[source] io::Error),
    /// What goes into the tar could not be read (a store file gone, changed, unreadable).
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
}

/// A layer that is built: a producer of its tar, the same bytes every time.
pub trait LayerTar: Clone + Send + Sync + 'static {
    /// The exact length of the tar.
    fn tar_len(&self) -> u64;
    /// The tar, read piece by piece.
    fn pieces(&self) -> Box<dyn TarPieces + '_>;
    /// Writes the tar to `out`, in large pieces (`out` may hash or compress them).
    fn write_tar<W: Write>(&self, out: &mut W) -> Result<(), TarError> {
        let mut pieces = self.pieces();
        loop {
            let piece = pieces.fill()?;
            if piece.is_empty() {
                return Ok(());
            }
            let n = piece.len();
            out.write_all(piece).map_err(TarError::Write)?;
            pieces.consume(n);
        }
    }
    /// Writes the tar for bytes nobody needs to see on the way (the kernel may move them).
    fn write_tar_direct<W: Write>(&self, out: &mut W) -> Result<(), TarError> {
        self.write_tar(out)
    }
    /// A digest of everything the tar's bytes depend on, computed without writing it: equal
    /// fingerprints mean equal tars (a digest cache keys on it).
    fn fingerprint(&self) -> Digest;
    /// What the layer holds, for the image's history.
    fn comment(&self) -> &str;
    /// Who made the layer, for the image's history.
    fn created_by(&self) -> &str {
        "strata"
    }
    /// The history's author of the layer, if it has one.
    fn author(&self) -> Option<&str> {
        None
    }
}

/// A tar read piece by piece, as [`io::BufRead`] reads, but each piece lent from where the
/// producer has it (a header it made, a window of a mapped file): so bytes reach a hash
/// uncopied, and two tars can feed one two-stream hash ([`crate::sha256::Sha256::update_pair`]).
pub trait TarPieces {
    /// The next bytes of the tar; empty at its end. Called again before
    /// [`consume`](Self::consume), the same bytes. After an error, the tar is read no further.
    fn fill(&mut self) -> Result<&[u8], TarError>;
    /// Takes the first `n` bytes of what [`fill`](Self::fill) lent.
    fn consume(&mut self, n: usize);
}

/// Where the blobs of an image read back come from (a directory, an archive, a registry).
pub trait BlobSource: Send + Sync {
    /// Opens blob `digest` of `size` bytes; the path names it in messages.
    fn open(&self, digest: &Digest, size: u64) -> io::Result<(PathBuf, Box<dyn Read + Send>)>;
}

/// An image read back from a source: its config byte for byte and its layers as blobs.
#[derive(Clone)]
pub struct SourceImage {
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    /// The manifest as the source holds it (OCI layouts, registries); docker-archives have none.
    pub manifest_bytes: Option<Vec<u8>>,
    pub layers: Vec<LayerBlob>,
    /// `name:tag` if the source says (docker-archive `RepoTags`, a registry reference), or a
    /// tag alone (OCI).
    pub reference: Option<String>,
    /// `HOST/REPOSITORY` for an image from a registry: its blobs can be mounted from there.
    pub origin: Option<String>,
    pub blobs: Arc<dyn BlobSource>,
}

impl std::fmt::Debug for SourceImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceImage").field("layers", &self.layers).field("reference", &self.reference).finish()
    }
}

impl SourceImage {
    /// A reader of layer `index`'s blob, bounded by its size, that fails at the end (or in
    /// [`VerifiedReader::finish`]) unless the bytes have the layer's size and digest.
    pub fn open_layer(&self, index: usize) -> io::Result<VerifiedReader<Box<dyn Read + Send>>> {
        let layer = &self.layers[index];
        let (path, reader) = self.blobs.open(&layer.digest, layer.size)?;
        Ok(VerifiedReader::new(reader, layer.digest, layer.size, path))
    }
}

/// What the config blob is made from.
#[derive(Debug, Clone)]
pub enum ConfigRecipe {
    /// The base image's config, byte for byte: a copy keeps its image ID.
    Verbatim,
    /// Everything but `rootfs`, which the layers' diff IDs complete, and the history of the
    /// built layers, one entry each (`created_by` strata, their comment), after the base's;
    /// with the Docker keys beyond OCI's (`Healthcheck`, `Shell`, …) its `config` holds.
    Built(Box<ImageConfiguration>, DockerKeys),
}

/// Keys of a config's `config` object beyond the OCI set (Docker's `Healthcheck`, `OnBuild`,
/// `Shell`, …), which oci-spec's types do not hold: kept as JSON, written as they are.
pub type DockerKeys = std::collections::BTreeMap<String, serde_json::Value>;

/// Base layers stored in `from` (in any codec, for `None`) are re-encoded into `to`:
/// `strata copy --compress` (any into its codec), a copy to a registry (uncompressed into
/// gzip, as skopeo does), Docker before 23 (zstd into uncompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recode {
    pub from: Option<Compression>,
    pub to: Compression,
}

/// The digests an image has, recorded when the Nix library describes it and checked whenever
/// it is written: with uncompressed layers (`manifest`, `diff_ids`), and in each codec the
/// description was asked for (`compressed`), where they also name blobs before anything is
/// read (a registry or layout that has them needs nothing else).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedDigests {
    pub config: Digest,
    pub manifest: Digest,
    pub diff_ids: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compressed: Vec<RecordedCodec>,
}

/// An image's layers as blobs of one codec, and the manifest they give.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedCodec {
    /// [`Compression::id`]: the exact bytes the codec makes (a record of another strata
    /// version's codec is never matched).
    pub codec: String,
    pub manifest: Digest,
    /// Every layer, bottom first (base layers as they are stored).
    pub layers: Vec<LayerBlob>,
}

impl RecordedDigests {
    /// The codec the image was described in, the one it is written in where the destination
    /// compresses layers; uncompressed if it recorded none this strata knows.
    pub fn codec(&self) -> Compression {
        self.compressed.iter().find_map(|c| Compression::from_id(&c.codec)).unwrap_or(Compression::None)
    }

    fn in_codec(&self, compression: Compression) -> Option<&RecordedCodec> {
        self.compressed.iter().find(|c| c.codec == compression.id())
    }
}

/// A built layer's blobs as a Nix build recorded them: its tar (codec `tar`) and the codecs
/// asked for, by [`Compression::id`].
pub type RecordedBlobs = std::collections::BTreeMap<String, LayerBlob>;

/// An image whose digests differ from those recorded when it was described.
#[derive(Debug, thiserror::Error)]
#[error("the image's {what} is {actual}, but {recorded} was recorded when the image was built: its store paths changed since; nothing was written")]
pub struct NotAsRecorded {
    pub what: &'static str,
    pub recorded: Digest,
    pub actual: Digest,
}

/// An image to write: a base image's layers (if any), then built layers of type `L`.
#[derive(Debug, Clone)]
pub struct Image<L> {
    pub name: String,
    /// Default: derived from the config digest.
    pub tag: Option<String>,
    /// The mtime of every entry of the archives that hold the image.
    pub mtime: u64,
    pub config: ConfigRecipe,
    /// Layers of a base image (`from_image`, or the image being copied), below `layers`.
    pub base: Option<SourceImage>,
    /// Built layers, on top of the base's.
    pub layers: Vec<L>,
    /// Which base layers are re-encoded, and into what; `None` copies them as they are.
    pub recode: Option<Recode>,
    /// The digests the image must have (see [`Image::config_checked`]).
    pub recorded: Option<RecordedDigests>,
    /// An earlier release of the image (`strata build --previous`): a push, or a layout,
    /// takes a built layer's blob from it where it holds the layer's tar in the codec written,
    /// rather than compressing the layer again.
    pub previous: Option<Previous>,
}

/// An earlier release of an image, whose blobs a new release may take ([`Image::previous`]).
#[derive(Debug, Clone)]
pub struct Previous {
    pub release: SourceImage,
    /// Whether a signature made with a key the user trusts vouches for the release (read by
    /// the digest that was verified): what its config says its blobs hold is then believed,
    /// and a blob is taken for a layer of the same diff ID without being read. Otherwise each
    /// blob is decoded and compared with the layer's tar byte for byte before it is taken.
    pub signed: bool,
}

/// Where one of an image's layers comes from.
pub enum LayerSource<'a, L> {
    Built(&'a L),
    /// Layer `.1` of a base image.
    Base(&'a SourceImage, usize),
}

impl<L> Clone for LayerSource<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L> Copy for LayerSource<'_, L> {}

impl<L> LayerSource<'_, L> {
    /// The codec a base layer is stored in (`None` for built layers, made per sink).
    pub fn compression(&self) -> Option<Compression> {
        match self {
            LayerSource::Built(_) => None,
            LayerSource::Base(base, j) => Compression::of_media_type(&base.layers[*j].media_type),
        }
    }
}

impl<L: LayerTar> Image<L> {
    /// The image `source` as it is, named `name:tag` (else as the source names it).
    pub fn copy_of(source: SourceImage, name: Option<&ImageName>) -> Image<L> {
        let unnamed = |tag: &str| ("image".to_owned(), tag.to_owned());
        // A reference by digest names the repository; the copy is tagged `latest`.
        let by_name = source.reference.as_deref().map(|r| r.split_once('@').map_or(r.to_owned(), |(name, _)| format!("{name}:latest")));
        let (name, tag) = match (name, by_name.as_deref()) {
            (Some(n), _) => (n.name.clone(), n.tag.clone()),
            (None, None) => unnamed("latest"),
            (None, Some(r)) => match ImageName::parse(r) {
                Ok(n) if r.contains([':', '/']) => (n.name, n.tag),
                // An OCI reference name is often a tag alone.
                _ if check_tag(r).is_ok() => unnamed(r),
                _ => {
                    tracing::warn!("the source names its image {r:?}, which is not a valid image name; the copy is named image:latest");
                    unnamed("latest")
                }
            },
        };
        let mtime = source.config.created().as_deref().and_then(|c| crate::time::parse_rfc3339(c).ok()).map_or(0, |(_, secs)| secs);
        Image { name, tag: Some(tag), mtime, config: ConfigRecipe::Verbatim, base: Some(source), layers: vec![], recode: None, recorded: None, previous: None }
    }

    /// Every layer, bottom first: the base's, then the built ones.
    pub fn layer_sources(&self) -> Vec<LayerSource<'_, L>> {
        let base = self.base.iter().flat_map(|b| (0..b.layers.len()).map(move |i| LayerSource::Base(b, i)));
        base.chain(self.layers.iter().map(LayerSource::Built)).collect()
    }

    /// The codec a base layer is re-encoded into, if it is (see [`Image::recode`]).
    pub fn recode_into(&self, layer: &LayerSource<L>) -> Option<Compression> {
        let stored = layer.compression()?;
        let Recode { from, to } = self.recode?;
        (matches!(layer, LayerSource::Base(..)) && from.is_none_or(|from| from == stored) && to != stored).then_some(to)
    }

    /// The config blob for layers with these diff IDs (base layers first): canonical JSON,
    /// so equal images have equal config digests.
    pub fn config_blob(&self, diff_ids: &[Digest]) -> Vec<u8> {
        match (&self.config, &self.base) {
            (ConfigRecipe::Verbatim, Some(base)) => base.config_bytes.clone(),
            (ConfigRecipe::Verbatim, None) => unreachable!("a verbatim config is a base image's"),
            (ConfigRecipe::Built(config, docker), _) => {
                let mut rootfs = RootFs::default();
                rootfs.set_typ("layers".to_owned());
                rootfs.set_diff_ids(diff_ids.iter().map(Digest::to_string).collect());
                let mut config = config.clone();
                config.set_rootfs(rootfs);
                let mut history = config.history().clone().unwrap_or_default();
                history.extend(self.layers.iter().map(|l| {
                    let mut h = History::default();
                    h.set_created(config.created().clone());
                    h.set_created_by(Some(l.created_by().to_owned()));
                    h.set_author(l.author().map(str::to_owned));
                    h.set_comment(Some(l.comment().to_owned()));
                    h
                }));
                config.set_history(Some(history));
                if docker.is_empty() {
                    return canonical_json(&config);
                }
                let mut value = serde_json::to_value(&config).expect("a config serialises");
                if let Some(run) = value.get_mut("config").and_then(|c| c.as_object_mut()) {
                    run.extend(docker.iter().map(|(k, v)| (k.clone(), v.clone())));
                } else {
                    value["config"] = serde_json::Value::Object(docker.clone().into_iter().collect());
                }
                canonical_json(&value)
            }
        }
    }

    /// [`config_blob`](Self::config_blob), checked against the recorded config digest.
    pub fn config_checked(&self, diff_ids: &[Digest]) -> Result<Vec<u8>, NotAsRecorded> {
        let config = self.config_blob(diff_ids);
        if let Some(recorded) = &self.recorded {
            let actual = Digest::of(&config);
            if actual != recorded.config {
                return Err(NotAsRecorded { what: "config digest", recorded: recorded.config, actual });
            }
        }
        Ok(config)
    }

    /// The platform the image is for, as its config says.
    pub fn platform(&self) -> Platform {
        match (&self.config, &self.base) {
            (ConfigRecipe::Built(config, _), _) => Platform::of_config(config),
            (ConfigRecipe::Verbatim, Some(base)) => Platform::of_config(&base.config),
            (ConfigRecipe::Verbatim, None) => unreachable!("a verbatim config is a base image's"),
        }
    }

    /// When the image was created, as its config says.
    pub fn created(&self) -> Option<String> {
        match (&self.config, &self.base) {
            (ConfigRecipe::Built(config, _), _) => config.created().clone(),
            (ConfigRecipe::Verbatim, Some(base)) => base.config.created().clone(),
            (ConfigRecipe::Verbatim, None) => None,
        }
    }

    /// The manifest of a copy whose config and blobs are the source's, byte for byte: the
    /// source's own manifest (an OCI one), so the copy keeps its manifest digest (and an index
    /// listing it, its own).
    fn verbatim_manifest(&self, config: &[u8], layers: &[LayerBlob]) -> Option<Vec<u8>> {
        let base = self.base.as_ref().filter(|_| matches!(self.config, ConfigRecipe::Verbatim) && self.layers.is_empty())?;
        let bytes = base.manifest_bytes.as_ref().filter(|_| config == base.config_bytes.as_slice() && layers == base.layers.as_slice())?;
        let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(bytes).ok()?;
        (manifest.media_type().as_ref() == Some(&MediaType::ImageManifest)).then(|| bytes.clone())
    }

    /// [`manifest_blob`], checked against the manifest digest recorded for the codec the
    /// built layers are in (uncompressed, or one the description recorded), base layers
    /// stored as they are.
    pub fn manifest_checked(&self, config: &[u8], layers: &[LayerBlob]) -> Result<Vec<u8>, NotAsRecorded> {
        if let Some(manifest) = self.verbatim_manifest(config, layers) {
            return Ok(manifest);
        }
        let manifest = manifest_blob(config, layers);
        let Some(recorded) = &self.recorded else { return Ok(manifest) };
        let built: Vec<&LayerBlob> = layers.iter().zip(self.layer_sources()).filter(|(_, s)| matches!(s, LayerSource::Built(_))).map(|(b, _)| b).collect();
        let codec = if built.iter().all(|b| b.digest == b.diff_id) {
            Some(Compression::None)
        } else {
            built.first().and_then(|b| Compression::of_media_type(&b.media_type)).filter(|c| built.iter().all(|b| b.media_type == c.layer_media_type()))
        };
        let expected = match codec {
            Some(Compression::None) => Some(recorded.manifest),
            Some(codec) => recorded.in_codec(codec).map(|c| c.manifest),
            None => None,
        };
        if let (Some(expected), None) = (expected, self.recode) {
            let actual = Digest::of(&manifest);
            if actual != expected {
                return Err(NotAsRecorded { what: "manifest digest", recorded: expected, actual });
            }
        }
        Ok(manifest)
    }

    /// The blob of layer `index` in `compression` as recorded when the image was described,
    /// known without reading the layer: what names it in a registry or layout that may have it.
    pub fn recorded_blob(&self, index: usize, compression: Compression) -> Option<LayerBlob> {
        let recorded = self.recorded.as_ref()?;
        let LayerSource::Built(recipe) = *self.layer_sources().get(index)? else { return None };
        match compression {
            Compression::None => {
                let diff_id = *recorded.diff_ids.get(index)?;
                Some(LayerBlob { diff_id, digest: diff_id, size: recipe.tar_len(), media_type: compression.layer_media_type() })
            }
            codec => recorded.in_codec(codec)?.layers.get(index).cloned(),
        }
    }

    /// The image's tag, or else the first 32 hex digits of the config digest (which covers
    /// every layer's content and the config).
    pub fn tag(&self, config_digest: &Digest) -> String {
        self.tag.clone().unwrap_or_else(|| config_digest.hex()[..32].to_owned())
    }

    /// `name:tag`.
    pub fn reference(&self, config_digest: &Digest) -> String {
        format!("{}:{}", self.name, self.tag(config_digest))
    }

    /// The digests this image has uncompressed and in each of `codecs` (base layers as they
    /// are): what the Nix library records at build time, and what later copies reproduce.
    /// A built layer's blobs come from `known` where it has them all (a layer's own Nix
    /// build recorded them), else from writing its tar once per codec.
    pub fn record(&self, codecs: &[Compression], known: impl Fn(&L) -> Option<RecordedBlobs>) -> Result<RecordedDigests, TarError> {
        let ids: Vec<&str> = std::iter::once(Compression::None).chain(codecs.iter().copied()).map(Compression::id).collect();
        let mut per_layer: Vec<RecordedBlobs> = Vec::new();
        for layer in self.layer_sources() {
            per_layer.push(match layer {
                LayerSource::Built(built) => match known(built).filter(|k| ids.iter().all(|id| k.contains_key(*id))) {
                    Some(blobs) => blobs,
                    None => record_blobs(built, codecs)?,
                },
                LayerSource::Base(base, j) => ids.iter().map(|id| (id.to_string(), base.layers[j].clone())).collect(),
            });
        }
        let in_codec = |id: &str| -> Vec<LayerBlob> { per_layer.iter().map(|blobs| blobs[id].clone()).collect() };
        let tars = in_codec(Compression::None.id());
        let diff_ids: Vec<Digest> = tars.iter().map(|l| l.diff_id).collect();
        let config = self.config_blob(&diff_ids);
        let compressed = codecs
            .iter()
            .map(|codec| {
                let layers = in_codec(codec.id());
                RecordedCodec { codec: codec.id().to_owned(), manifest: Digest::of(&manifest_blob(&config, &layers)), layers }
            })
            .collect();
        Ok(RecordedDigests { config: Digest::of(&config), manifest: Digest::of(&manifest_blob(&config, &tars)), diff_ids, compressed })
    }
}

/// A built layer's blobs: its tar, and the tar in each of `codecs` (one pass each, hashing
/// the tar and the compressed bytes together).
pub fn record_blobs<L: LayerTar>(layer: &L, codecs: &[Compression]) -> Result<RecordedBlobs, TarError> {
    let mut blobs = RecordedBlobs::new();
    let mut put = |codec: Compression| -> Result<(), TarError> {
        let mut tar = codec.layer_encoder(io::sink()).map_err(TarError::Write)?;
        layer.write_tar(&mut tar)?;
        blobs.insert(codec.id().to_owned(), tar.finish().map_err(TarError::Write)?.0);
        Ok(())
    };
    if codecs.is_empty() {
        put(Compression::None)?;
    }
    for codec in codecs {
        put(*codec)?;
    }
    if let Some(first) = codecs.first().and_then(|c| blobs.get(c.id())).cloned() {
        blobs.entry(Compression::None.id().to_owned()).or_insert(LayerBlob {
            digest: first.diff_id,
            size: layer.tar_len(),
            media_type: MediaType::ImageLayer,
            ..first
        });
    }
    Ok(blobs)
}
