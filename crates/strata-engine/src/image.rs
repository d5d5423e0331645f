//! The image stage: from a validated spec to layer recipes plus the OCI config that
//! describes them. Nothing here writes bytes; sinks do, through [`Image`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::image::{Arch, History, ImageConfiguration, Os, RootFs};

use strata_oci::canonical::canonical_json;
use strata_oci::manifest::{manifest_blob, LayerBlob};
use strata_oci::platform::Platform;

use crate::closure::{Closure, ClosureError};
use crate::compress::Compression;
use crate::digest::Digest;
use crate::layer::{scan_tree, LayerError, LayerRecipe};
use crate::plan::{plan_layers, NoRoomForStorePaths, PlanInput};
use crate::reference::{check_tag, ImageName};
use crate::registry::RegistryOptions;
use crate::source::SourceImage;
use crate::spec::{ImageConfigSpec, ValidSpec};
use crate::store::StorePath;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Closure(#[from] ClosureError),
    #[error(transparent)]
    Plan(#[from] NoRoomForStorePaths),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("initialize_nix_database")]
    NixDb(#[from] crate::nixdb::NixDbError),
    #[error("from_image")]
    Base(#[from] crate::source::SourceError),
    #[error("max_layers = {max_layers} is too small for the base image's {base} layers and the explicit ones")]
    BaseTooBig { max_layers: usize, base: usize },
}

/// Where the closure comes from.
#[derive(Debug, Clone)]
pub enum ClosureSource {
    /// Ask the Nix installation.
    Nix,
    /// A closure graph file (`exportReferencesGraph`, `closureInfo`, `nix path-info --json`).
    GraphFile(PathBuf),
    /// Such a graph already read (from a stream script, say).
    Graph(Closure),
}

/// A planned image: layer recipes and the config that will describe them.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub tag: Option<String>,
    pub created: String,
    /// `created` in seconds since the epoch: the mtime of every file, in layers and archives.
    pub mtime: u64,
    pub architecture: String,
    pub config: ImageConfigSpec,
    /// Layers of a base image (`from_image`, or the image being copied), below `layers`.
    pub base: Option<SourceImage>,
    /// Built layers, on top of the base's.
    pub layers: Vec<LayerRecipe>,
    /// Write the base's config byte for byte (a copy keeps its image ID).
    pub verbatim_config: bool,
    /// Which base layers are re-encoded, and into what; `None` copies them as they are.
    pub recode: Option<Recode>,
    /// The digests the image must have, recorded when it was described in a Nix build: a
    /// sink checks them before it commits anything (see [`Image::config_checked`]).
    pub recorded: Option<Described>,
}

/// Base layers stored in `from` (in any codec, for `None`) are re-encoded into `to`:
/// `strata copy --compress` (any into its codec), a copy to a registry (uncompressed into
/// gzip, as skopeo does), Docker before 23 (zstd into uncompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recode {
    pub from: Option<Compression>,
    pub to: Compression,
}

/// An image whose digests differ from those recorded when it was described.
#[derive(Debug, thiserror::Error)]
#[error("the image's {what} is {actual}, but {recorded} was recorded when the image was built: its store paths changed since; nothing was written")]
pub struct NotAsRecorded {
    pub what: &'static str,
    pub recorded: Digest,
    pub actual: Digest,
}

/// Digests recorded when an image is described (see [`Image::uncompressed_digests`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Described {
    pub config: Digest,
    pub manifest: Digest,
    pub diff_ids: Vec<Digest>,
}

/// Where one of an image's layers comes from.
#[derive(Clone, Copy)]
pub enum LayerSource<'a> {
    Built(&'a LayerRecipe),
    /// Layer `.1` of a base image, copied as it is.
    Base(&'a SourceImage, usize),
}

impl LayerSource<'_> {
    /// The codec a base layer is stored in (`None` for built layers, made per sink).
    pub fn compression(&self) -> Option<Compression> {
        match self {
            LayerSource::Built(_) => None,
            LayerSource::Base(base, j) => Compression::of_media_type(&base.layers[*j].media_type),
        }
    }
}

impl Image {
    /// Computes the closure, plans the layers and scans the store for their entries.
    pub fn plan(spec: ValidSpec, source: &ClosureSource, registry: &RegistryOptions) -> Result<Image, ImageError> {
        // The base image for the spec's own platform, also from an index of several.
        let platform = Platform::linux(&spec.architecture);
        let base = spec.from_image.as_ref().map(|r| SourceImage::open(r, &platform, registry)).transpose()?;
        let base_layers = base.as_ref().map_or(0, |b| b.layers.len());
        if base_layers + spec.layers.len() + usize::from(!spec.copy_to_root.is_empty()) > spec.max_layers {
            return Err(ImageError::BaseTooBig { max_layers: spec.max_layers, base: base_layers });
        }
        let config_roots = spec.config_roots();
        let mut keyed_roots: Vec<(String, StorePath)> = spec.roots.iter().cloned().chain(config_roots.iter().cloned()).collect();
        keyed_roots.extend(spec.copy_to_root.iter().cloned());
        for (i, layer) in spec.layers.iter().enumerate() {
            let keyed =
                |key: &str, paths: &[StorePath]| paths.iter().enumerate().map(|(j, p)| (format!("layers[{i}].{key}[{j}]"), p.clone())).collect::<Vec<_>>();
            keyed_roots.extend(keyed("roots", &layer.roots));
            keyed_roots.extend(keyed("copy_to_root", &layer.copy_to_root));
        }
        let closure = match source {
            ClosureSource::Nix => Closure::from_nix(&keyed_roots)?,
            ClosureSource::GraphFile(_) | ClosureSource::Graph(_) => {
                let closure = match source {
                    ClosureSource::Graph(closure) => closure.clone(),
                    ClosureSource::GraphFile(file) => Closure::from_graph_file(file)?,
                    ClosureSource::Nix => unreachable!("handled above"),
                };
                for (key, path) in &keyed_roots {
                    closure.check_root(key, path)?;
                    if std::fs::symlink_metadata(path).is_err() {
                        return Err(ClosureError::Missing { key: key.clone(), path: path.clone() }.into());
                    }
                }
                closure
            }
        };

        let roots: Vec<StorePath> = spec.roots.iter().chain(&config_roots).map(|(_, p)| p.clone()).collect();
        let copy_to_root: Vec<StorePath> = spec.copy_to_root.iter().map(|(_, p)| p.clone()).collect();
        let max_layers = spec.max_layers.saturating_sub(base_layers + usize::from(spec.initialize_nix_database));
        let input = PlanInput { closure: &closure, explicit: &spec.layers, roots: roots.clone(), copy_to_root, max_layers };

        // Scan every store path once; the plan needs their sizes, the recipes their entries.
        let mut scanned = BTreeMap::new();
        let all_roots = roots.iter().chain(input.copy_to_root.iter().flat_map(|t| closure.references(t)));
        let explicit_roots = spec.layers.iter().flat_map(|l| l.roots.iter().chain(l.copy_to_root.iter().flat_map(|t| closure.references(t))));
        for path in closure.requisites(all_roots.chain(explicit_roots)) {
            let prefix = format!("nix/store/{}", path.base_name());
            scanned.insert(path.clone(), scan_tree(path.as_ref(), prefix.as_bytes())?);
        }
        let planned = plan_layers(&input, |p| scanned.get(p).map_or(0, |(_, size)| *size))?;
        let database = if spec.initialize_nix_database {
            let paths = planned.iter().flat_map(|l| l.store_paths.iter().cloned()).collect();
            Some(crate::nixdb::database_entries(&closure, &paths, spec.mtime)?)
        } else {
            None
        };

        let mut layers = Vec::with_capacity(planned.len());
        for layer in planned {
            let store_entries = layer.store_paths.iter().flat_map(|p| scanned[p].0.iter().cloned()).collect();
            let mut root_entries = Vec::new();
            for tree in &layer.root_trees {
                root_entries.extend(scan_tree(tree.as_ref(), b"")?.0);
            }
            let comment = describe(&layer.store_paths, &layer.root_trees);
            layers.push(LayerRecipe::new(store_entries, root_entries, &spec.perms, spec.mtime, comment));
        }
        if let Some(entries) = database {
            layers.push(LayerRecipe::new(vec![], entries, &[], spec.mtime, "Nix database: /nix/var/nix/db".to_owned()));
        }
        Ok(Image {
            name: spec.name,
            tag: spec.tag,
            created: spec.created,
            mtime: spec.mtime,
            architecture: spec.architecture,
            config: spec.config,
            base,
            layers,
            verbatim_config: false,
            recode: None,
            recorded: None,
        })
    }

    /// The image `source` as it is, named `name:tag` (else as the source names it).
    pub fn copy_of(source: SourceImage, name: Option<&ImageName>) -> Image {
        let unnamed = |tag: &str| ("image".to_owned(), tag.to_owned());
        let (name, tag) = match (name, source.reference.as_deref()) {
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
        let created = source.config.created().clone().unwrap_or_else(|| crate::spec::DEFAULT_CREATED.to_owned());
        let mtime = crate::spec::parse_time(&created).map_or(0, |(_, secs)| secs);
        Image {
            name,
            tag: Some(tag),
            created,
            mtime,
            architecture: source.config.architecture().to_string(),
            config: ImageConfigSpec::default(),
            base: Some(source),
            layers: vec![],
            verbatim_config: true,
            recode: None,
            recorded: None,
        }
    }

    /// Every layer, bottom first: the base's, then the built ones.
    pub fn layer_sources(&self) -> Vec<LayerSource<'_>> {
        let base = self.base.iter().flat_map(|b| (0..b.layers.len()).map(move |i| LayerSource::Base(b, i)));
        base.chain(self.layers.iter().map(LayerSource::Built)).collect()
    }

    /// The config blob for layers with these diff IDs (base layers first): canonical JSON
    /// (keys sorted, no whitespace), so equal images have equal config digests. On a base
    /// image, the spec's config is merged into the base's: `Env` by variable (the spec's
    /// wins), `Labels` merged, `ExposedPorts` and `Volumes` united, the other keys kept
    /// unless the spec sets them; the base's history comes first.
    pub fn config_blob(&self, diff_ids: &[Digest]) -> Vec<u8> {
        if let (true, Some(base)) = (self.verbatim_config, &self.base) {
            return base.config_bytes.clone();
        }
        let c = &self.config;
        let mut config = self.base.as_ref().and_then(|b| b.config.config().clone()).unwrap_or_default();
        config.set_entrypoint(c.entrypoint.clone().or_else(|| config.entrypoint().clone()));
        config.set_cmd(c.cmd.clone().or_else(|| config.cmd().clone()));
        config.set_working_dir(c.working_dir.clone().or_else(|| config.working_dir().clone()));
        config.set_user(c.user.clone().or_else(|| config.user().clone()));
        config.set_stop_signal(c.stop_signal.clone().or_else(|| config.stop_signal().clone()));
        config.set_env(merge_lists(config.env().clone(), c.env.clone(), |v: &String| v.split('=').next().unwrap_or_default().to_owned()));
        config.set_exposed_ports(merge_lists(config.exposed_ports().clone(), c.exposed_ports.as_ref().map(|p| p.keys()), String::clone));
        config.set_volumes(merge_lists(config.volumes().clone(), c.volumes.as_ref().map(|v| v.keys()), String::clone));
        let mut labels: BTreeMap<String, String> = config.labels().clone().unwrap_or_default().into_iter().collect();
        labels.extend(c.labels.clone().unwrap_or_default());
        config.set_labels((!labels.is_empty()).then(|| labels.into_iter().collect()));

        let mut rootfs = RootFs::default();
        rootfs.set_typ("layers".to_owned());
        rootfs.set_diff_ids(diff_ids.iter().map(Digest::to_string).collect());
        let mut history = self.base.as_ref().and_then(|b| b.config.history().clone()).unwrap_or_default();
        history.extend(self.layers.iter().map(|l| {
            let mut h = History::default();
            h.set_created(Some(self.created.clone()));
            h.set_created_by(Some("strata".to_owned()));
            h.set_comment(Some(l.comment.clone()));
            h
        }));

        let mut image = ImageConfiguration::default();
        image.set_created(Some(self.created.clone()));
        image.set_architecture(Arch::from(self.architecture.as_str()));
        image.set_os(Os::Linux);
        image.set_config(Some(config));
        image.set_rootfs(rootfs);
        image.set_history(Some(history));
        canonical_json(&image)
    }

    /// The codec a base layer is re-encoded into, if it is (see [`Image::recode`]).
    pub fn recode_into(&self, layer: &LayerSource) -> Option<Compression> {
        let stored = layer.compression()?;
        let Recode { from, to } = self.recode?;
        (matches!(layer, LayerSource::Base(..)) && from.is_none_or(|from| from == stored) && to != stored).then_some(to)
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

    /// [`manifest_blob`], checked against the recorded manifest digest when the layers are
    /// stored as they were when it was recorded (built ones uncompressed, base ones as they are).
    pub fn manifest_checked(&self, config: &[u8], layers: &[LayerBlob]) -> Result<Vec<u8>, NotAsRecorded> {
        let manifest = manifest_blob(config, layers);
        let as_recorded = self.recode.is_none()
            && layers.iter().zip(self.layer_sources()).all(|(blob, source)| match source {
                LayerSource::Built(_) => blob.digest == blob.diff_id,
                LayerSource::Base(..) => true,
            });
        if let (Some(recorded), true) = (&self.recorded, as_recorded) {
            let actual = Digest::of(&manifest);
            if actual != recorded.manifest {
                return Err(NotAsRecorded { what: "manifest digest", recorded: recorded.manifest, actual });
            }
        }
        Ok(manifest)
    }

    /// The spec's tag, or else the first 32 hex digits of the config digest (which covers
    /// every layer's content and the config).
    pub fn tag(&self, config_digest: &Digest) -> String {
        self.tag.clone().unwrap_or_else(|| config_digest.hex()[..32].to_owned())
    }

    /// The digests this image has with uncompressed layers (base layers as they are), from
    /// hashing every built layer's tar: what the Nix library records at build time, and what
    /// any later copy with uncompressed layers must reproduce.
    pub fn uncompressed_digests(&self) -> Result<Described, LayerError> {
        let mut layers = Vec::new();
        for layer in self.layer_sources() {
            layers.push(match layer {
                LayerSource::Built(recipe) => {
                    let mut hashing = crate::digest::HashingWriter::new(std::io::sink());
                    recipe.write_tar(&mut hashing)?;
                    let (diff_id, size, _) = hashing.finish();
                    LayerBlob { diff_id, digest: diff_id, size, media_type: oci_spec::image::MediaType::ImageLayer }
                }
                LayerSource::Base(base, j) => {
                    let l = &base.layers[j];
                    l.clone()
                }
            });
        }
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
        let config = self.config_blob(&diff_ids);
        Ok(Described { config: Digest::of(&config), manifest: Digest::of(&manifest_blob(&config, &layers)), diff_ids })
    }

    /// `name:tag`.
    pub fn reference(&self, config_digest: &Digest) -> String {
        format!("{}:{}", self.name, self.tag(config_digest))
    }
}

/// `base` then `over`, where an item of `over` replaces the item of `base` with the same key
/// in place; `None` if both are.
fn merge_lists<T: Clone>(base: Option<Vec<T>>, over: Option<Vec<T>>, key: impl Fn(&T) -> String) -> Option<Vec<T>> {
    if base.is_none() && over.is_none() {
        return None;
    }
    let mut merged: Vec<T> = base.unwrap_or_default();
    for item in over.unwrap_or_default() {
        match merged.iter().position(|m| key(m) == key(&item)) {
            Some(i) => merged[i] = item,
            None => merged.push(item),
        }
    }
    Some(merged)
}

/// A history comment naming what a layer holds.
fn describe(store_paths: &[StorePath], root_trees: &[StorePath]) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = store_paths.iter().take(SHOWN).map(|p| p.name().to_owned()).collect();
    if store_paths.len() > SHOWN {
        parts.push(format!("and {} more", store_paths.len() - SHOWN));
    }
    let mut comment = if parts.is_empty() { String::new() } else { format!("store paths: {}", parts.join(", ")) };
    if !root_trees.is_empty() {
        let trees: Vec<&str> = root_trees.iter().map(StorePath::name).collect();
        if !comment.is_empty() {
            comment.push_str("; ");
        }
        comment.push_str(&format!("laid over /: {}", trees.join(", ")));
    }
    comment
}
