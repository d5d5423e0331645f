//! `--flake DIR#NAME`: the image a flake output builds, as Kurtosis' NixBuildSpec asks for
//! (`flake_location_dir`, `image_name`). `nix build DIR#NAME` is tried first (Nix looks in
//! `packages.<system>` and `legacyPackages.<system>`), then the flake module's image of that
//! name, `DIR#strata.<system>.images.NAME.result`. The output is whatever the Nix library
//! builds: a docker-archive (compressed or not), a stream script or a description.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// The Nix system of this machine, as flakes key their outputs (`x86_64-linux`).
fn host_system() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

/// Builds `DIR#NAME` and returns the store path of its output.
pub fn build(reference: &str) -> Result<PathBuf> {
    let Some((dir, name)) = reference.split_once('#').filter(|(d, n)| !d.is_empty() && !n.is_empty()) else {
        bail!("--flake {reference:?}: expected DIR#NAME (e.g. .#hello-image)");
    };
    match nix_build(reference)? {
        Ok(path) => Ok(path),
        Err(first) if first.contains("does not provide attribute") => {
            let image = format!("{dir}#strata.{}.images.{name}.result", host_system());
            nix_build(&image)?.map_err(|second| {
                anyhow::anyhow!("--flake {reference}: neither `{reference}` nor `{image}` builds:\n{}\n{}", first.trim_end(), second.trim_end())
            })
        }
        Err(error) => bail!("--flake {reference}: nix build failed:\n{}", error.trim_end()),
    }
}

/// `nix build --json INSTALLABLE`: the output path, or Nix's error output.
fn nix_build(installable: &str) -> Result<std::result::Result<PathBuf, String>> {
    eprintln!("strata: nix build {installable}");
    strata_build::nix::build(installable, None).context("cannot run nix: is Nix installed and on PATH?")
}
