//! strata's engine: Nix closures to layered, reproducible OCI and Docker images.
//!
//! The pipeline runs one way, a module a stage:
//!
//! ```text
//! spec  ->  closure  ->  plan  ->  layer  ->  image  ->  sink
//! ```
//!
//! - [`spec`]: what the user declared (TOML or JSON), validated.
//! - [`closure`]: the store paths the image needs and their reference graph, from Nix or
//!   from a closure graph file.
//! - [`plan`]: which store paths go in which layer, stable across rebuilds.
//! - [`layer`]: a layer as a recipe of tar entries whose deterministic tar can be written on
//!   demand, its size known in advance.
//! - [`image`]: the planned image: layer recipes plus the OCI config they end up in.
//! - [`sink`]: where images go: a docker-archive stream, an OCI layout, an OCI archive, an
//!   engine, a registry.
//!
//! Beside the pipeline:
//! - [`reference`](crate::reference): the one grammar of image references (`oci:DIR:REF`, `docker://…`, …),
//!   names and tags checked before any work;
//! - [`source`]: images read back (copies, base images), every blob verified;
//! - [`registry`]: the distribution API, for sources and sinks;
//! - [`scratch`]: every file written before it is complete: removed on failure and on
//!   signals, swept after a `kill -9`;
//! - [`description`]: the stream scripts and descriptions the Nix library builds.
//!
//! [`digest`] and [`compress`] serve the last stages: everything is hashed as it is written.
//! [`containerize`] is a second front end: an environment manifest (packages, variables, a
//! start hook) made into a spec plus a layer holding the merged profile.

// The model lives in strata-oci; these are its modules, under the paths the engine has
// always used for them.
pub use strata_oci::{canonical, compress, digest, manifest, platform, reference};

pub mod closure;
pub mod containerize;
pub mod description;
pub mod image;
pub mod layer;
pub mod nixdb;
pub mod plan;
pub mod registry;
pub mod scratch;
pub mod sink;
pub mod source;
pub mod spec;
pub mod store;
