//! Descriptions and stream scripts: what the Nix library builds in place of image bytes. A
//! stream script is `#!<strata> stream` followed by JSON; a description (nix2container's
//! style) is the JSON alone, plus the digests the image had when it was built:
//!
//! ```text
//! {"spec": {…the spec…}, "closure": "<closure graph>", "digests": {"config": …, "manifest": …, "diff_ids": […]}}
//! ```
//!
//! `digests` also holds, per codec the description was asked for (gzip by default), every
//! layer's blob and the manifest they give (see [`RecordedDigests`]).
//!
//! An index description (the library's `buildImageIndex`) is `{"strata_index": {"name": …,
//! "tag": …, "images": [<store paths of images the library built>]}}`: one image for several
//! platforms, its tag by default the first 32 characters of the description's store path hash.
//!
//! A layer record is what a layer's own Nix build (the library's `buildLayer`) writes: the
//! layer's roots, and for each layer it is made of (one, or the parts of a layer split by
//! `maxLayers`) its content key ([`crate::layer::LayerRecipe::content_key`]) and its blobs. A
//! description build takes the blobs of any of its layers with a recorded content key from
//! the record instead of compressing the layer again: an unchanged layer's digests are made
//! once, by one Nix build, substitutable from a binary cache like any store path.
//!
//! All of these arrive from files anyone may have written: everything is checked (the spec as
//! a spec file is, the graph as a graph file is, reads are bounded), and errors name the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::closure::{Closure, ClosureError};
use crate::spec::{KeyError, Spec, ValidSpec};
use strata_oci::digest::Digest;
use strata_oci::image::{RecordedBlobs, RecordedDigests};

#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    #[error("{}: not a strata stream script or description: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("{}: not a strata layer record: {why}", path.display())]
    Record { path: PathBuf, why: String },
    #[error("{}: spec", path.display())]
    Spec { path: PathBuf, source: KeyError },
    #[error(transparent)]
    Closure(#[from] ClosureError),
}

/// A description read and checked.
#[derive(Debug)]
pub struct Description {
    pub spec: ValidSpec,
    pub closure: Closure,
    /// The digests recorded at build time (descriptions only).
    pub recorded: Option<RecordedDigests>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    spec: serde_json::Value,
    closure: String,
    digests: Option<RecordedDigests>,
}

impl Description {
    /// Parses the text of a stream script or description read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Description, DescriptionError> {
        let invalid = |why: String| DescriptionError::Invalid { path: path.to_owned(), why };
        // Stream scripts start with their interpreter line; descriptions are plain JSON.
        let json = if text.starts_with("#!") { text.split_once('\n').map_or("", |(_, rest)| rest) } else { text };
        let body: Body = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        let spec_err = |source| DescriptionError::Spec { path: path.to_owned(), source };
        let spec = Spec::from_json(&body.spec.to_string()).and_then(Spec::validate).map_err(spec_err)?;
        let closure = Closure::from_graph_text(&body.closure, path)?;
        Ok(Description { spec, closure, recorded: body.digests })
    }
}

/// What a layer's own Nix build records (see the module doc).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    /// The layer's roots and the trees it lays over `/`: the record refers to them, so Nix
    /// keeps the layer's store paths with it.
    pub roots: Vec<String>,
    /// The layers it is made of, in order: one, or the parts of a layer split by `maxLayers`.
    pub parts: Vec<RecordedLayer>,
}

/// One layer of a [`LayerRecord`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedLayer {
    pub content_key: Digest,
    pub blobs: RecordedBlobs,
}

/// Layer records are small: a few hundred bytes, and a line per store path.
const MAX_RECORD_BYTES: u64 = 16 << 20;

impl LayerRecord {
    pub fn read(path: &Path) -> Result<LayerRecord, DescriptionError> {
        let invalid = |why: String| DescriptionError::Record { path: path.to_owned(), why };
        let file = std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_RECORD_BYTES + 1), &mut text).map_err(|e| invalid(e.to_string()))?;
        if text.len() as u64 > MAX_RECORD_BYTES {
            return Err(invalid(format!("more than {MAX_RECORD_BYTES} bytes")));
        }
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))
    }
}

/// An index description, read and checked (see the module doc).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDescription {
    pub name: String,
    pub tag: Option<String>,
    /// The images' files: descriptions, stream scripts or docker-archives in the store.
    pub images: Vec<PathBuf>,
}

impl IndexDescription {
    /// The index description in the file `path`, if it is one.
    pub fn read(path: &Path) -> Result<Option<IndexDescription>, DescriptionError> {
        let invalid = |why: String| DescriptionError::Invalid { path: path.to_owned(), why };
        let file = std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_RECORD_BYTES + 1), &mut text).map_err(|e| invalid(e.to_string()))?;
        #[derive(Deserialize)]
        struct Body {
            strata_index: Option<serde_json::Value>,
        }
        let Ok(Body { strata_index: Some(index) }) = serde_json::from_str::<Body>(&text) else { return Ok(None) };
        let index: IndexDescription = serde_json::from_value(index).map_err(|e| invalid(format!("strata_index: {e}")))?;
        if index.images.is_empty() {
            return Err(invalid("strata_index.images: an index of no images".to_owned()));
        }
        if let Some(bad) = index.images.iter().find(|p| crate::store::StorePath::containing(&p.to_string_lossy()).is_err()) {
            return Err(invalid(format!("strata_index.images: {} is not in the Nix store", bad.display())));
        }
        Ok(Some(index))
    }

    /// The index's tag: its own, else the first 32 characters of its file's store hash.
    pub fn tag_of(&self, path: &Path) -> String {
        self.tag.clone().unwrap_or_else(|| path.file_name().map(|n| n.to_string_lossy().chars().take(32).collect()).unwrap_or_default())
    }
}
