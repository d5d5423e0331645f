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
//! A layer record is what a layer's own Nix build (the library's `buildLayer`) writes: the
//! layer's content key ([`crate::layer::LayerRecipe::content_key`]), its roots, and its
//! blobs. A description build takes the blobs of any of its layers with that content key from
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
    pub content_key: Digest,
    /// The layer's roots and the trees it lays over `/`: the record refers to them, so Nix
    /// keeps the layer's store paths with it.
    pub roots: Vec<String>,
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
