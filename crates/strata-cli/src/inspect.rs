//! `strata inspect`: what is inside an image, and which store paths each layer holds.
//!
//! An image read from a source (`oci:`, `oci-archive:`, `docker://`, `docker-archive:`) is
//! shown as the source holds it: its manifest (a docker-archive has none), its config and
//! its layer blobs. A spec or what the Nix library built is shown as the OCI image with
//! uncompressed layers it makes (diff IDs are the same in every format; blob digests of
//! compressed layers depend on the codec): its layers are hashed, or taken from the layer
//! cache, and nothing is written.
//!
//! The store paths of a layer come from its history comment where strata wrote the image
//! (every store path of the layer, by base name); for other images, from the layer's tar
//! (the entries under `nix/store/`), read and verified against its digest.

use std::collections::BTreeSet;
use std::io::{self, Write};

use anyhow::{bail, Context, Result};
use strata_build::assemble::store_paths_of_comment;
use strata_build::layer::LayerRecipe;
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{ConfigRecipe, Image, LayerSource, LayerTar, SourceImage};
use strata_oci::manifest::LayerBlob;
use strata_transport::cache::LayerCache;
use strata_transport::{write_docker_archive, Transport};

use crate::cli::InspectArgs;
use crate::input::{Input, Loaded};

/// What inspect shows of an image.
struct View {
    reference: String,
    /// The manifest's bytes, `None` for a docker-archive read as it is.
    manifest: Option<Vec<u8>>,
    config: Vec<u8>,
    layers: Vec<(LayerBlob, Vec<String>)>,
}

pub fn inspect(args: InspectArgs, cx: &Transport) -> Result<()> {
    let Loaded(image) = Input::resolve(&args.image)?.open(&cx.registry)?;
    let view = view_of(&image, &cx.cache).with_context(|| format!("inspecting {}", args.image))?;
    let mut out = io::stdout().lock();
    if args.raw {
        let Some(manifest) = &view.manifest else { bail!("{}: a docker-archive has no manifest (--json shows its config and layers)", args.image) };
        out.write_all(manifest)?;
        return Ok(());
    }
    let config: serde_json::Value = serde_json::from_slice(&view.config).context("the image's config")?;
    let platform = {
        let field = |key: &str| config.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let variant = field("variant");
        format!("{}/{}{}", field("os"), field("architecture"), if variant.is_empty() { String::new() } else { format!("/{variant}") })
    };
    let manifest_digest = view.manifest.as_deref().map(Digest::of);
    if args.json {
        // Each layer blob's record, with the store paths it holds.
        let mut layers = Vec::new();
        for (blob, paths) in &view.layers {
            let mut layer = serde_json::to_value(blob)?;
            layer["store_paths"] = serde_json::json!(paths);
            layers.push(layer);
        }
        let object = serde_json::json!({
            "reference": view.reference,
            "platform": platform,
            "manifest_digest": manifest_digest,
            "config_digest": Digest::of(&view.config),
            "config": config,
            "layers": layers,
        });
        writeln!(out, "{object}")?;
        return Ok(());
    }
    writeln!(out, "image     {}", view.reference)?;
    writeln!(out, "platform  {platform}")?;
    match manifest_digest {
        Some(digest) => writeln!(out, "manifest  {digest}")?,
        None => writeln!(out, "manifest  none (a docker-archive)")?,
    }
    writeln!(out, "config    {}", Digest::of(&view.config))?;
    if let Some(run) = config.get("config").filter(|c| c.is_object()) {
        for key in ["Entrypoint", "Cmd", "Env", "WorkingDir", "User", "ExposedPorts", "Labels"] {
            if let Some(value) = run.get(key).filter(|v| !v.is_null()) {
                writeln!(out, "  {key:<12} {value}")?;
            }
        }
    }
    writeln!(out, "layers    {}", view.layers.len())?;
    for (i, (layer, paths)) in view.layers.iter().enumerate() {
        let shown = if paths.is_empty() { "(no store paths)".to_owned() } else { paths.join(", ") };
        writeln!(out, "  {:>3}  {}  {:>10}  {shown}", i + 1, layer.digest, human(layer.size))?;
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b} B"),
    }
}

fn view_of(image: &Image<LayerRecipe>, cache: &LayerCache) -> Result<View> {
    // Read from a source and shown as it is there.
    if let (true, None, ConfigRecipe::Verbatim, Some(base)) = (image.layers.is_empty(), image.recode, &image.config, &image.base) {
        let names = history_store_paths(base);
        let layers = base.layers.iter().enumerate().map(|(j, blob)| Ok((blob.clone(), layer_store_paths(base, j, &names)?))).collect::<Result<Vec<_>>>()?;
        let reference = base.reference.clone().unwrap_or_else(|| format!("{}:{}", image.name, image.tag.as_deref().unwrap_or("latest")));
        return Ok(View { reference, manifest: base.manifest_bytes.clone(), config: base.config_bytes.clone(), layers });
    }
    // Built: as an OCI image with uncompressed layers, hashed (or known to the cache), not written.
    let written = write_docker_archive(image, io::sink(), Compression::None, None, cache)?;
    let diff_ids: Vec<Digest> = written.layers.iter().map(|l| l.diff_id).collect();
    let config = image.config_checked(&diff_ids)?;
    let manifest = image.manifest_checked(&config, &written.layers)?;
    let base_names = image.base.as_ref().map(history_store_paths).unwrap_or_default();
    let mut layers = Vec::new();
    for (source, blob) in image.layer_sources().into_iter().zip(written.layers) {
        let paths = match source {
            LayerSource::Built(recipe) => store_paths_of_comment(recipe.comment()),
            LayerSource::Base(base, j) => layer_store_paths(base, j, &base_names)?,
        };
        layers.push((blob, paths));
    }
    Ok(View { reference: written.reference, manifest: Some(manifest), config, layers })
}

/// The store paths strata's history comments name for each layer of `base` (`None` where a
/// layer's comment is not strata's), in layer order.
fn history_store_paths(base: &SourceImage) -> Vec<Option<Vec<String>>> {
    let history = base.config.history().as_deref().unwrap_or_default();
    let mut per_layer: Vec<Option<Vec<String>>> = history
        .iter()
        .filter(|h| h.empty_layer() != Some(true))
        .map(|h| Some(store_paths_of_comment(h.comment().as_deref().unwrap_or_default())).filter(|paths| !paths.is_empty()))
        .collect();
    // A history that does not match the layers one to one says nothing about them.
    if per_layer.len() != base.layers.len() {
        per_layer = vec![None; base.layers.len()];
    }
    per_layer
}

/// Layer `j`'s store paths: from the history where strata wrote it, else from its tar.
fn layer_store_paths(base: &SourceImage, j: usize, names: &[Option<Vec<String>>]) -> Result<Vec<String>> {
    if let Some(Some(paths)) = names.get(j) {
        return Ok(paths.clone());
    }
    let blob = &base.layers[j];
    let what = || format!("layer {} ({})", j + 1, blob.digest);
    let mut reader = base.open_layer(j).with_context(what)?;
    let codec = Compression::of_media_type(&blob.media_type).unwrap_or(Compression::None);
    let mut paths = BTreeSet::new();
    {
        let decoder = codec.decoder(io::BufReader::new(&mut reader)).with_context(what)?;
        let mut tar = tar::Archive::new(decoder);
        for entry in tar.entries().with_context(what)? {
            let entry = entry.with_context(what)?;
            let path = entry.path_bytes();
            let path = String::from_utf8_lossy(&path);
            let path = path.trim_start_matches("./").trim_start_matches('/');
            if let Some(name) = path.strip_prefix("nix/store/").and_then(|rest| rest.split('/').next()).filter(|n| !n.is_empty()) {
                paths.insert(name.to_owned());
            }
        }
        // The rest of the blob (tar padding), so that the digest can be checked.
        io::copy(&mut tar.into_inner(), &mut io::sink()).with_context(what)?;
    }
    io::copy(&mut reader, &mut io::sink()).with_context(what)?;
    reader.finish().with_context(what)?;
    Ok(paths.into_iter().collect())
}
