//! Descriptions and stream scripts: what the Nix library builds in place of image bytes. A
//! stream script is `#!<strata> stream` followed by JSON; a description (nix2container's
//! style) is the JSON alone, plus the digests the image had when it was built:
//!
//! ```text
//! {"spec": {…the spec…}, "closure": "<closure graph>", "digests": {"config": …, "manifest": …, "diff_ids": […]}}
//! ```
//!
//! Both arrive from files anyone may have written: everything is checked (the spec as a
//! spec file is, the graph as a graph file is), and errors name the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::closure::{Closure, ClosureError};
use crate::spec::{KeyError, Spec, ValidSpec};
use strata_oci::image::RecordedDigests;

#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    #[error("{}: not a strata stream script or description: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
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
