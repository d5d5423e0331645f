//! strata's build pipeline: what a user declared, to a [`strata_oci::image::Image`] whose
//! layers are recipes of deterministic tars. It runs one way, a module a stage:
//!
//! ```text
//! spec  ->  closure  ->  plan  ->  layer  ->  assemble
//! ```
//!
//! - [`spec`]: what the user declared (TOML or JSON), validated.
//! - [`closure`]: the store paths the image needs and their reference graph, from Nix or
//!   from a closure graph file ([`store`]: store paths themselves).
//! - [`plan`]: which store paths go in which layer, stable across rebuilds.
//! - [`layer`]: a layer as a recipe of tar entries whose deterministic tar can be written on
//!   demand, its size known in advance (its files mapped into memory: `mapped`).
//! - [`assemble`]: all of it together, over an already opened base image.
//!
//! Second front ends: [`containerize`] (an environment manifest made into a spec plus a
//! layer holding the merged profile) and [`description`] (the stream scripts and
//! descriptions the Nix library builds). [`nixdb`] makes the Nix database layer; [`sbom`] the
//! bill of materials of an image's store paths; [`nix`] starts every `nix` process.
//!
//! This crate reads the Nix store and runs `nix`; it writes no image anywhere (that is
//! strata-transport's work) and depends on no strata crate but strata-oci and
//! strata-scratch.

pub mod assemble;
pub mod closure;
pub mod containerize;
pub mod description;
pub mod layer;
mod mapped;
pub mod nix;
pub mod nixdb;
pub mod plan;
pub mod sbom;
pub mod spec;
pub mod store;
