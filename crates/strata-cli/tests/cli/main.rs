//! strata's end-to-end tests, one binary (as ripgrep's are): strata itself, against real Nix,
//! podman, the Docker engine, containerd, buildah, a CNCF registry, skopeo and umoci. Every
//! tool is required: a missing one fails the test (run `scripts/setup`), none is skipped.
//! Shared helpers are in `common`; fixtures (Nix expressions, builtins only) in `../fixtures`.

mod cache;
mod common;
mod containerize;
mod dir;
mod drop_in;
mod engines;
mod errors;
mod export;
mod flake;
mod help;
mod inspect;
mod layers;
mod nixlib;
mod oci;
mod platforms;
mod registry;
mod sbom;
mod signing;
mod sources;
mod trust;
