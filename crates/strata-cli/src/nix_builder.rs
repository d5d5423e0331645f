//! `strata nix-builder`: strata as the builder of the Nix library's derivations (`nix/`), so
//! image builds need no shell, coreutils or Python. It reads what Nix gives a builder: the
//! derivation's attributes as environment variables, `$out`, and the closure graph that
//! `exportReferencesGraph` wrote into the build directory.
//!
//! Modes (`strataMode`):
//! - `spec`: writes `strataSpecJson` to `$out`. Nix then finds in it every store path the
//!   image names, so the closure of this file is the closure of the image.
//! - `tarball`: builds the image of the spec file `strataSpec` (closure from the graph file
//!   `closure`) as a docker-archive, compressed whole with `strataCompressor` (gz, zstd,
//!   none), into `$out`; `docker load < $out` loads it.
//!
//! A spec without a tag gets `strataTag`, which the library derives from the spec file.
//! - `stream`: writes `$out` as an executable whose interpreter is `strata stream`: the spec
//!   and the closure graph, no image bytes. Running it writes the image to stdout.
//! - `description` (nix2container-style): the same as plain JSON (no interpreter line),
//!   plus the digests the image has with uncompressed layers and in `strataCompressor`'s
//!   codec (gz, zstd, none), computed now; `strata stream` reads it too, names blobs with
//!   them before reading anything, and checks them when it writes. The layer records in
//!   `strataLayerRecords` give the blobs of layers they match without compressing them again.
//! - `layer` (`buildLayer`): the record of one layer, the last explicit layer of the spec
//!   (the ones before it are what it leaves out): its content key, store paths, and blobs
//!   uncompressed and in `strataCompressor`'s codec.
//! - `sbom`: the bill of materials of the description `strataImage` in `strataSbomFormat`
//!   (spdx, cyclonedx), with the licences `strataLicenses` (JSON, base name to SPDX
//!   expression) the library took from its packages' `meta`; layers named by the digests the
//!   description recorded, nothing hashed but the store paths' NARs.
//! - `pull` (`pullImage`, a fixed-output derivation): the image `strataSource` names (a
//!   registry reference by digest) for `strataPlatform`, as a docker-archive named
//!   `strataDest`, its layers as the registry holds them; Nix checks the output's hash.
//! - `blob` (nix2container's `pullImageFromManifest`, a fixed-output derivation a blob): blob
//!   `strataDigest` of `strataSize` bytes of the image `strataSource` (a registry reference by
//!   manifest digest) into `$out`, checked as it is read (and by Nix).
//! - `dir`: the image of the manifest file `strataManifest` and its blobs `strataBlobs`
//!   (space-separated store paths) in skopeo's directory format, every blob checked against
//!   the manifest; `dir:$out` is a source like any other.
//! - `links`: `$out` as the tree that links the store paths `strataPaths` (space-separated)
//!   from `/`, joined as dockerTools' `contents` are (see `layer::link_trees`): the start of
//!   a customisation layer that `extraCommands` and `fakeRootCommands` then shape.
//! - `merge` (`dockerTools.mergeImages`): the images of the docker-archives `strataImages`
//!   (space-separated) as one docker-archive, compressed whole with `strataCompressor`.
//! - `export` (`dockerTools.exportImage`): the file system of the image `strataImage` (any
//!   image `strata export` takes) as one tar, its names starting `./` as dockerTools' do.
//! - `executable`: writes `strataText` to `$out/$strataPath`, executable (the runners);
//!   `file`: the same, read-only.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use strata_build::assemble::packages_of;
use strata_build::assemble::ClosureSource;
use strata_build::description::{Description, LayerRecord, RecordedLayer};
use strata_build::layer::LayerRecipe;
use strata_build::sbom::Bom;
use strata_build::spec::{Spec, ValidSpec};
use strata_oci::bounded::{read_file, read_text, MAX_INPUT_SIZE};
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{record_blobs, Image, LayerSource};
use strata_oci::platform::Platform;
use strata_oci::reference::ImageRef;
use strata_transport::registry::RegistryOptions;
use strata_transport::{open_image, write_docker_archive, Transport};

use crate::input::plan as plan_image;

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("the derivation has no {name} attribute (strata nix-builder runs as a Nix builder)"))
}

pub fn build() -> Result<()> {
    let out = PathBuf::from(env("out")?);
    match env("strataMode")?.as_str() {
        "spec" => std::fs::write(&out, env("strataSpecJson")?).with_context(|| format!("writing {}", out.display())),
        "tarball" => tarball(&out),
        "stream" => stream_script(&out, false),
        "description" => stream_script(&out, true),
        "layer" => layer_record(&out),
        "sbom" => sbom(&out),
        "pull" => pull(&out),
        "links" => link_tree(&out),
        "blob" => pull_blob(&out),
        "dir" => dir_of_blobs(&out),
        "merge" => merge(&out),
        "export" => {
            let crate::input::Loaded(image) = crate::input::Input::resolve(&env("strataImage")?)?.open(&RegistryOptions::default(), None)?;
            let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            // Named as dockerTools' exportImage names them (tar -C root -c .).
            strata_transport::flatten::flatten(&image, std::io::BufWriter::new(file), "./")?;
            Ok(())
        }
        mode @ ("executable" | "file") => {
            let path = out.join(env("strataPath")?);
            std::fs::create_dir_all(path.parent().unwrap_or(&out))?;
            std::fs::write(&path, env("strataText")?).with_context(|| format!("writing {}", path.display()))?;
            let bits = if mode == "file" { 0o444 } else { 0o555 };
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(bits))?;
            Ok(())
        }
        other => {
            bail!("strataMode: unknown mode {other:?} (expected spec, tarball, stream, description, layer, sbom, pull, blob, dir, links, merge, export, executable or file)")
        }
    }
}

/// The registry reference by digest `strataSource` names (the output's hash depends on it).
fn registry_source() -> Result<strata_oci::reference::RegistryRef> {
    let source: ImageRef = env("strataSource")?.parse()?;
    match source {
        ImageRef::Registry(r) if r.digest.is_some() => Ok(r),
        other => bail!("strataSource: {other} must name an image by digest (docker://HOST/REPO@sha256:…): the output's hash depends on it"),
    }
}

/// The `blob` mode (see the module doc).
fn pull_blob(out: &Path) -> Result<()> {
    let source = registry_source()?;
    let digest: Digest = env("strataDigest")?.parse()?;
    let size: u64 = env("strataSize")?.parse().context("strataSize")?;
    let registry = RegistryOptions::new(None, Some(env("strataTlsVerify")? != "0"));
    let blobs = strata_transport::registry::RegistryBlobs::of(&source, &registry).with_context(|| format!("reaching {source}"))?;
    let file = blobs.fetch(&digest, size).with_context(|| format!("downloading {digest} from {source}"))?;
    let mut reader = strata_oci::digest::VerifiedReader::new(file, digest, size, PathBuf::from(format!("{source}: {digest}")));
    let mut output = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    std::io::copy(&mut reader, &mut output)?;
    reader.finish()?;
    Ok(())
}

/// The `dir` mode (see the module doc).
fn dir_of_blobs(out: &Path) -> Result<()> {
    let manifest_path = PathBuf::from(env("strataManifest")?);
    let read = std::fs::File::open(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest_bytes = strata_transport::blobs::read_bounded(read, strata_transport::blobs::MAX_METADATA_SIZE)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: {why}", manifest_path.display());
    let manifest: Value = serde_json::from_slice(&manifest_bytes).map_err(|_| bad("not JSON"))?;
    let layers = manifest["layers"].as_array().ok_or_else(|| bad("no `layers` (an image index? give one platform's manifest)"))?;
    let mut wanted: BTreeMap<Digest, u64> = BTreeMap::new();
    for descriptor in std::iter::once(&manifest["config"]).chain(layers) {
        let digest: Digest =
            descriptor["digest"].as_str().ok_or_else(|| bad("a blob without a digest"))?.parse().map_err(|_| bad("a blob's digest is not sha256:<hex>"))?;
        wanted.insert(digest, descriptor["size"].as_u64().ok_or_else(|| bad("a blob without a size"))?);
    }
    std::fs::create_dir(out).with_context(|| format!("creating {}", out.display()))?;
    for blob in env("strataBlobs")?.split_whitespace() {
        // Hashed as it is copied, then named by its digest if the manifest names it.
        let incoming = out.join(".incoming");
        let mut hashing = strata_oci::digest::HashingWriter::new(std::fs::File::create(&incoming)?);
        std::io::copy(&mut std::fs::File::open(blob).with_context(|| format!("reading {blob}"))?, &mut hashing).with_context(|| format!("copying {blob}"))?;
        let (digest, size, _) = hashing.finish();
        if wanted.remove(&digest) != Some(size) {
            bail!("strataBlobs: {blob} ({digest}, {size} bytes) is not a blob of {}", manifest_path.display());
        }
        std::fs::rename(&incoming, out.join(digest.hex()))?;
    }
    if let Some((digest, _)) = wanted.first_key_value() {
        bail!("strataBlobs: no blob {digest}, which {} names", manifest_path.display());
    }
    std::fs::write(out.join("manifest.json"), &manifest_bytes)?;
    std::fs::write(out.join("version"), strata_transport::dir::VERSION)?;
    Ok(())
}

/// The `links` mode: the directories and symlinks of `link_trees`, made under `out`.
fn link_tree(out: &Path) -> Result<()> {
    use strata_build::layer::EntryKind;
    let trees = env("strataPaths")?
        .split_whitespace()
        .map(|p| strata_build::store::StorePath::containing(p).with_context(|| format!("strataPaths: {p}")))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir(out).with_context(|| format!("creating {}", out.display()))?;
    // Entries come parents first; names are relative and come from directory listings.
    for entry in strata_build::layer::link_trees(&trees)? {
        let path = out.join(std::ffi::OsStr::from_bytes(&entry.path));
        match &entry.kind {
            EntryKind::Directory => std::fs::create_dir(&path),
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path),
            _ => bail!("link_trees made an entry that is neither a directory nor a symlink: {}", path.display()),
        }
        .with_context(|| format!("creating {}", path.display()))?;
    }
    Ok(())
}

/// The spec file's JSON, tagged `strataTag` when the spec has no tag.
fn spec_with_tag() -> Result<Value> {
    let spec_path = env("strataSpec")?;
    let mut spec: Value = serde_json::from_slice(&read_file(Path::new(&spec_path), MAX_INPUT_SIZE).with_context(|| format!("reading {spec_path}"))?)?;
    if spec.get("tag").is_none_or(Value::is_null) {
        spec["tag"] = Value::String(env("strataTag")?);
    }
    Ok(spec)
}

fn plan(spec: Value, closure: &ClosureSource, spec_name: &str) -> Result<Image<LayerRecipe>> {
    plan_image(valid_spec(spec, spec_name)?, closure, &RegistryOptions::default(), None)
}

fn valid_spec(spec: Value, spec_name: &str) -> Result<ValidSpec> {
    let spec: Spec = serde_json::from_value(spec).with_context(|| format!("spec {spec_name}"))?;
    spec.validate().with_context(|| format!("spec {spec_name}"))
}

/// The closure graph `exportReferencesGraph` writes into the build directory.
fn graph_file() -> ClosureSource {
    ClosureSource::GraphFile(PathBuf::from("closure"))
}

/// `strataCompressor`, as the library's `compressor` argument names codecs.
fn compressor() -> Result<Compression> {
    Ok(match env("strataCompressor")?.as_str() {
        "gz" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        "none" => Compression::None,
        other => bail!("compressor: {other:?} is not one of gz, zstd, none"),
    })
}

/// The codecs recorded besides the tar.
fn codecs_recorded() -> Result<Vec<Compression>> {
    Ok(match compressor()? {
        Compression::None => vec![],
        codec => vec![codec],
    })
}

fn tarball(out: &Path) -> Result<()> {
    let compression = compressor()?;
    let image = plan(spec_with_tag()?, &graph_file(), &env("strataSpec")?)?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut encoder = compression.encoder(std::io::BufWriter::new(file))?;
    // No layer cache in a Nix build: it writes nothing but its output.
    write_docker_archive(&image, &mut encoder, Compression::None, None, &Transport::isolated())?;
    encoder.finish()?.flush()?;
    Ok(())
}

fn merge(out: &Path) -> Result<()> {
    let compression = compressor()?;
    let archives: Vec<PathBuf> = env("strataImages")?.split_whitespace().map(PathBuf::from).collect();
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut encoder = compression.encoder(std::io::BufWriter::new(file))?;
    strata_transport::docker_archive::merge_docker_archives(&archives, &mut encoder, 1)?;
    encoder.finish()?.flush()?;
    Ok(())
}

/// The stream executable (`#!<strata> stream`, then `{"spec": …, "closure": "<graph>"}`), or
/// with `describe` the description (that JSON plus `"digests"`, no interpreter line).
fn stream_script(out: &Path, describe: bool) -> Result<()> {
    let spec = spec_with_tag()?;
    let closure = read_text(Path::new("closure"), MAX_INPUT_SIZE).context("reading the closure graph `closure` (exportReferencesGraph)")?;
    let strata = std::env::current_exe().context("locating the strata binary")?;
    let mut body = serde_json::json!({ "spec": spec, "closure": closure });
    if describe {
        let image = plan(spec_with_tag()?, &graph_file(), &env("strataSpec")?)?;
        let records = layer_records()?;
        let known = |recipe: &LayerRecipe| {
            let key = recipe.content_key();
            let (path, part) = records.iter().find_map(|(path, r)| Some((path, r.parts.iter().find(|part| part.content_key == key)?)))?;
            eprintln!("strata: the digests of the layer with {} are from the layer record {}", recipe.comment, path.display());
            Some(part.blobs.clone())
        };
        body["digests"] = serde_json::to_value(image.record(&codecs_recorded()?, known)?)?;
    }
    let (text, mode) = if describe { (format!("{body}\n"), 0o444) } else { (format!("#!{} stream\n{body}\n", strata.display()), 0o555) };
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    std::fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// The layer records the description may take blobs from (`strataLayerRecords`, store paths
/// separated by spaces, as Nix passes a list).
fn layer_records() -> Result<Vec<(PathBuf, LayerRecord)>> {
    let list = std::env::var("strataLayerRecords").unwrap_or_default();
    list.split_whitespace().map(|path| Ok((PathBuf::from(path), LayerRecord::read(Path::new(path))?))).collect()
}

/// A layer's record: its spec's explicit layers are the layers it leaves out, then itself
/// (one layer, or several parts of it: each is recorded).
fn layer_record(out: &Path) -> Result<()> {
    let spec = valid_spec(spec_with_tag()?, &env("strataSpec")?)?;
    let own = spec.layers.len().checked_sub(1).context("the layer's spec has no layer")?;
    let roots = spec.layers[own].roots.iter().chain(&spec.layers[own].copy_to_root).map(|p| p.as_str().to_owned()).collect();
    let image = plan_image(spec, &graph_file(), &RegistryOptions::default(), None)?;
    let codecs = codecs_recorded()?;
    let parts = image
        .layers
        .iter()
        .filter(|recipe| recipe.explicit == Some(own))
        .map(|recipe| Ok(RecordedLayer { content_key: recipe.content_key(), blobs: record_blobs(recipe, &codecs)? }))
        .collect::<Result<Vec<_>>>()?;
    let record = LayerRecord { roots, parts };
    std::fs::write(out, serde_json::to_string_pretty(&record)? + "\n").with_context(|| format!("writing {}", out.display()))
}

/// A registry's image as a docker-archive (see the module doc).
fn pull(out: &Path) -> Result<()> {
    let source = ImageRef::Registry(registry_source()?);
    let platform: Platform = env("strataPlatform")?.parse()?;
    let registry = RegistryOptions::new(None, Some(env("strataTlsVerify")? != "0"));
    let pulled = open_image(&source, &platform, &registry).with_context(|| format!("pulling {source}"))?;
    let image: Image<LayerRecipe> = Image::copy_of(pulled, None);
    let dest = env("strataDest")?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    write_docker_archive(&image, &mut writer, Compression::None, Some(&dest), &Transport::isolated())?;
    writer.flush()?;
    Ok(())
}

/// The bill of materials of a description, from what it recorded (see the module doc).
fn sbom(out: &Path) -> Result<()> {
    let path = PathBuf::from(env("strataImage")?);
    let text = read_text(&path, MAX_INPUT_SIZE).with_context(|| format!("reading {}", path.display()))?;
    let description = Description::parse(&text, &path)?;
    let recorded = description.recorded.clone().with_context(|| format!("{}: a description records its digests", path.display()))?;
    let closure = description.closure.clone();
    let mut image = plan_image(description.spec, &ClosureSource::Graph(description.closure), &RegistryOptions::default(), None)?;
    image.recorded = Some(recorded.clone());
    let codec = recorded.codec();
    let layers: Vec<(Digest, Vec<String>)> = image
        .layer_sources()
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let digest = image.recorded_blob(i, codec).map_or(recorded.diff_ids[i], |b| b.digest);
            let paths = match source {
                LayerSource::Built(recipe) => packages_of(recipe),
                LayerSource::Base(..) => vec![],
            };
            (digest, paths)
        })
        .collect();
    let manifest = recorded.compressed.iter().find(|c| c.codec == codec.id()).map_or(recorded.manifest, |c| c.manifest);
    let mut bom = Bom::of(image.reference(&recorded.config), manifest, image.created().unwrap_or_default(), &layers, Some(&closure))?;
    let licenses: BTreeMap<String, String> = serde_json::from_str(&env("strataLicenses")?).context("strataLicenses")?;
    bom.licenses(&licenses);
    let document = match env("strataSbomFormat")?.as_str() {
        "spdx" => bom.spdx(),
        "cyclonedx" => bom.cyclonedx(),
        other => bail!("strataSbomFormat: {other:?} is not one of spdx, cyclonedx"),
    };
    std::fs::write(out, serde_json::to_vec_pretty(&document)?).with_context(|| format!("writing {}", out.display()))
}

/// `strata stream SCRIPT`: the interpreter of stream executables; plans the image described
/// in `script` and returns it for writing, with the digests recorded at build time if any.
pub fn read_stream_script(script: &Path) -> Result<Image<LayerRecipe>> {
    let text = read_text(script, MAX_INPUT_SIZE).with_context(|| format!("reading {}", script.display()))?;
    let description = Description::parse(&text, script)?;
    let closure = ClosureSource::Graph(description.closure);
    let mut image = plan_image(description.spec, &closure, &RegistryOptions::default(), None).with_context(|| format!("{}", script.display()))?;
    image.recorded = description.recorded;
    Ok(image)
}
