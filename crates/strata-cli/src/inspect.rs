//! `strata inspect`: what is inside an image, and which store paths each layer holds;
//! `strata diff`: what changed between two images, layer by layer and store path by store
//! path, and what a push of the second after the first uploads; `strata sbom`: the image's
//! bill of materials (strata-build's `sbom`).
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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use anyhow::{bail, Context, Result};
use strata_build::assemble::{packages_of, store_paths_of_comment};
use strata_build::layer::LayerRecipe;
use strata_build::sbom::Bom;
use strata_build::store::package_and_version;
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{ConfigRecipe, Image, LayerSource, LayerTar, SourceImage};
use strata_oci::manifest::LayerBlob;
use strata_oci::platform::Platform;
use strata_oci::reference::{ImageRef, RegistryRef};
use strata_transport::registry::{attach, manifest_of, referrers as registry_referrers};
use strata_transport::{write_docker_archive, Transport, Written};

use crate::cli::{DiffArgs, InspectArgs, SbomArgs, SbomFormat};
use crate::input::{Input, Loaded};

/// What inspect shows of an image.
struct View {
    reference: String,
    /// The manifest's bytes, `None` for a docker-archive read as it is.
    manifest: Option<Vec<u8>>,
    config: Vec<u8>,
    layers: Vec<(LayerBlob, Vec<String>)>,
    /// Per layer, the store paths it holds and those whose trees it lays over `/` (what a bill
    /// of materials lists).
    packages: Vec<Vec<String>>,
}

/// Opens `image` (anything `inspect` takes) and views it.
fn open_view(image: &str, platform: Option<&Platform>, cx: &Transport) -> Result<View> {
    let Loaded(opened) = Input::resolve(image)?.open(&cx.registry, platform)?;
    view_of(&opened, cx).with_context(|| format!("inspecting {image}"))
}

pub fn inspect(args: InspectArgs, cx: &Transport) -> Result<()> {
    let view = open_view(&args.image, args.platform.as_ref(), cx)?;
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

fn view_of(image: &Image<LayerRecipe>, cx: &Transport) -> Result<View> {
    // Read from a source and shown as it is there.
    if let (true, None, ConfigRecipe::Verbatim, Some(base)) = (image.layers.is_empty(), image.recode, &image.config, &image.base) {
        let names = history_store_paths(base);
        let layers = base.layers.iter().enumerate().map(|(j, blob)| Ok((blob.clone(), layer_store_paths(base, j, &names)?))).collect::<Result<Vec<_>>>()?;
        let reference = base.reference.clone().unwrap_or_else(|| format!("{}:{}", image.name, image.tag.as_deref().unwrap_or("latest")));
        let packages = layers.iter().map(|(_, paths)| paths.clone()).collect();
        return Ok(View { reference, manifest: base.manifest_bytes.clone(), config: base.config_bytes.clone(), layers, packages });
    }
    // Built: as an OCI image with uncompressed layers, hashed (or known to the cache), not written.
    let written = write_docker_archive(image, io::sink(), Compression::None, None, cx)?;
    let diff_ids: Vec<Digest> = written.layers.iter().map(|l| l.diff_id).collect();
    let config = image.config_checked(&diff_ids)?;
    let manifest = image.manifest_checked(&config, &written.layers)?;
    let base_names = image.base.as_ref().map(history_store_paths).unwrap_or_default();
    let mut layers = Vec::new();
    let mut packages = Vec::new();
    for (source, blob) in image.layer_sources().into_iter().zip(written.layers) {
        let (paths, with_trees) = match source {
            LayerSource::Built(recipe) => (store_paths_of_comment(recipe.comment()), packages_of(recipe)),
            LayerSource::Base(base, j) => {
                let paths = layer_store_paths(base, j, &base_names)?;
                (paths.clone(), paths)
            }
        };
        layers.push((blob, paths));
        packages.push(with_trees);
    }
    Ok(View { reference: written.reference, manifest: Some(manifest), config, layers, packages })
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

pub fn sbom(args: SbomArgs, cx: &Transport) -> Result<()> {
    let view = open_view(&args.image, None, cx)?;
    let config: serde_json::Value = serde_json::from_slice(&view.config).context("the image's config")?;
    let created = config.get("created").and_then(|c| c.as_str()).unwrap_or("1970-01-01T00:00:00Z").to_owned();
    let digest = view.manifest.as_deref().map_or_else(|| Digest::of(&view.config), Digest::of);
    let layers: Vec<(Digest, Vec<String>)> = view.layers.iter().zip(&view.packages).map(|((blob, _), packages)| (blob.digest, packages.clone())).collect();
    let mut bom = Bom::of(view.reference.clone(), digest, created, &layers, None)?;
    if let Some(file) = &args.licenses {
        let text = strata_oci::bounded::read_file(file, strata_oci::bounded::MAX_INPUT_SIZE).with_context(|| format!("reading {}", file.display()))?;
        let licenses: std::collections::BTreeMap<String, String> = serde_json::from_slice(&text).with_context(|| format!("{}: licences", file.display()))?;
        bom.licenses(&licenses);
    }
    let document = match args.format {
        SbomFormat::Spdx => bom.spdx(),
        SbomFormat::Cyclonedx => bom.cyclonedx(),
    };
    let text = serde_json::to_vec_pretty(&document)?;
    match &args.output {
        Some(path) => strata_scratch::OutputFile::write_whole(path, &text).with_context(|| format!("writing {}", path.display()))?,
        None => io::stdout().lock().write_all(&text)?,
    }
    Ok(())
}

/// The media type of a bill of materials in `format`, as an artifact's type.
fn sbom_media_type(format: SbomFormat) -> &'static str {
    match format {
        SbomFormat::Spdx => "application/spdx+json",
        SbomFormat::Cyclonedx => "application/vnd.cyclonedx+json",
    }
}

/// Attaches the bill of materials of `image`, just written to `dest` as `written`, to it.
pub fn attach_sbom(image: &Image<LayerRecipe>, written: &Written, dest: &ImageRef, format: SbomFormat, cx: &Transport) -> Result<()> {
    let ImageRef::Registry(reference) = dest else { bail!("--sbom attaches to what is pushed to a registry (docker://…), not {dest}") };
    let base_names = image.base.as_ref().map(history_store_paths).unwrap_or_default();
    let layers: Vec<(Digest, Vec<String>)> = image
        .layer_sources()
        .iter()
        .zip(&written.layers)
        .map(|(source, blob)| {
            let packages = match source {
                LayerSource::Built(recipe) => packages_of(recipe),
                LayerSource::Base(_, j) => base_names.get(*j).cloned().flatten().unwrap_or_default(),
            };
            (blob.digest, packages)
        })
        .collect();
    // The manifest as written (by digest: the tag may name an index of several platforms).
    let by_digest = RegistryRef { digest: written.manifest_digest, ..reference.clone() };
    let (digest, size) = manifest_of(&by_digest, &cx.registry).with_context(|| format!("reading {dest}"))?;
    let bom = Bom::of(written.reference.clone(), digest, image.created().unwrap_or_default(), &layers, None)?;
    let document = match format {
        SbomFormat::Spdx => bom.spdx(),
        SbomFormat::Cyclonedx => bom.cyclonedx(),
    };
    let attached = attach(reference, (&digest, size), sbom_media_type(format), serde_json::to_vec_pretty(&document)?, &cx.registry)?;
    eprintln!("strata: attached its bill of materials to {digest} ({})", attached.digest);
    Ok(())
}

/// `strata referrers`: what is attached to an image in a registry.
pub fn referrers(image: &str, json: bool, cx: &Transport) -> Result<()> {
    let ImageRef::Registry(reference) = image.parse()? else { bail!("{image}: referrers are kept by registries (docker://…)") };
    let (digest, found) = registry_referrers(&reference, &cx.registry).with_context(|| format!("reading the referrers of {image}"))?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "manifest_digest": digest, "referrers": found }))?;
        return Ok(());
    }
    writeln!(out, "{image} ({digest}): {} attached", found.len())?;
    for r in &found {
        writeln!(out, "  {}  {:>10}  {}", r.digest, human(r.size), r.artifact_type.as_deref().unwrap_or("(no artifact type)"))?;
    }
    Ok(())
}

/// A store path's package name (its name without hash and version), from its base name.
fn package_name(base_name: &str) -> &str {
    package_and_version(base_name.split_once('-').map_or(base_name, |(_, name)| name)).0
}

/// B's store paths against A's: added, removed, and changed (same package name, another path).
struct PathChanges {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
    /// From A's path to B's.
    changed: BTreeMap<String, String>,
}

fn path_changes(a: &BTreeSet<&String>, b: &BTreeSet<&String>) -> PathChanges {
    let only = |x: &BTreeSet<&String>, y: &BTreeSet<&String>| -> Vec<String> { x.difference(y).map(|p| (*p).clone()).collect() };
    let (gone, new) = (only(a, b), only(b, a));
    let by_name = |paths: &[String]| -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in paths {
            map.entry(package_name(p).to_owned()).or_default().push(p.clone());
        }
        map
    };
    let (gone_by_name, new_by_name) = (by_name(&gone), by_name(&new));
    let mut changes = PathChanges { added: BTreeSet::new(), removed: BTreeSet::new(), changed: BTreeMap::new() };
    // One path of a name on each side is a change; anything else is added and removed.
    for (name, paths) in &new_by_name {
        match (paths.as_slice(), gone_by_name.get(name).map(Vec::as_slice)) {
            ([to], Some([from])) => {
                changes.changed.insert(from.clone(), to.clone());
            }
            _ => changes.added.extend(paths.iter().cloned()),
        }
    }
    changes.removed = gone.into_iter().filter(|p| !changes.changed.contains_key(p)).collect();
    changes
}

pub fn diff(args: DiffArgs, cx: &Transport) -> Result<()> {
    let (a, b) = (open_view(&args.a, None, cx)?, open_view(&args.b, None, cx)?);
    let a_diff_ids: BTreeSet<Digest> = a.layers.iter().map(|(l, _)| l.diff_id).collect();
    let b_diff_ids: BTreeSet<Digest> = b.layers.iter().map(|(l, _)| l.diff_id).collect();
    let a_blobs: BTreeSet<Digest> = a.layers.iter().map(|(l, _)| l.digest).collect();
    let paths_of = |v: &View| -> BTreeSet<String> { v.layers.iter().flat_map(|(_, p)| p.iter().cloned()).collect() };
    let (a_paths, b_paths) = (paths_of(&a), paths_of(&b));
    let changes = path_changes(&a_paths.iter().collect(), &b_paths.iter().collect());
    let changed_to: BTreeMap<&String, &String> = changes.changed.iter().map(|(from, to)| (to, from)).collect();

    // B's layers A has not, each with what is new in it; A's layers B has not.
    let new_layers: Vec<(usize, &(LayerBlob, Vec<String>))> = b.layers.iter().enumerate().filter(|(_, (l, _))| !a_diff_ids.contains(&l.diff_id)).collect();
    let gone_layers: Vec<(usize, &(LayerBlob, Vec<String>))> = a.layers.iter().enumerate().filter(|(_, (l, _))| !b_diff_ids.contains(&l.diff_id)).collect();
    let upload: Vec<&LayerBlob> = b.layers.iter().map(|(l, _)| l).filter(|l| !a_blobs.contains(&l.digest)).collect();
    let upload_bytes: u64 = upload.iter().map(|l| l.size).sum();
    let shared = b.layers.len() - new_layers.len();

    let mut out = io::stdout().lock();
    let summary = |v: &View| serde_json::json!({ "reference": v.reference, "manifest_digest": v.manifest.as_deref().map(Digest::of), "config_digest": Digest::of(&v.config), "layers": v.layers.len() });
    if args.json {
        let layer = |(i, (blob, paths)): &(usize, &(LayerBlob, Vec<String>))| {
            let mut layer = serde_json::to_value(blob).expect("a layer blob serialises");
            layer["index"] = serde_json::json!(i + 1);
            layer["store_paths"] = serde_json::json!(paths);
            layer
        };
        let changed_in = |(_, (_, paths)): &(usize, &(LayerBlob, Vec<String>))| {
            serde_json::json!({
                "added": paths.iter().filter(|p| changes.added.contains(*p)).collect::<Vec<_>>(),
                "changed": paths.iter().filter_map(|p| changed_to.get(p).map(|from| serde_json::json!({ "from": from, "to": p }))).collect::<Vec<_>>(),
            })
        };
        let object = serde_json::json!({
            "a": summary(&a),
            "b": summary(&b),
            "shared_layers": shared,
            "new_layers": new_layers.iter().map(|l| { let mut v = layer(l); v["paths"] = changed_in(l); v }).collect::<Vec<_>>(),
            "gone_layers": gone_layers.iter().map(layer).collect::<Vec<_>>(),
            "store_paths": {
                "added": changes.added,
                "removed": changes.removed,
                "changed": changes.changed.iter().map(|(from, to)| serde_json::json!({ "from": from, "to": to })).collect::<Vec<_>>(),
            },
            "push": { "layers": upload.len(), "bytes": upload_bytes },
        });
        writeln!(out, "{object}")?;
        return Ok(());
    }
    for (label, v) in [("A", &a), ("B", &b)] {
        let digest = v.manifest.as_deref().map(Digest::of).unwrap_or_else(|| Digest::of(&v.config));
        writeln!(out, "{label}  {}  {} layers  {digest}", v.reference, v.layers.len())?;
    }
    writeln!(out, "layers: {shared} of B's {} shared with A, {} new, {} of A's gone", b.layers.len(), new_layers.len(), gone_layers.len())?;
    for (i, (blob, paths)) in &new_layers {
        writeln!(out, "  new  {:>3}  {}  {:>10}", i + 1, blob.diff_id, human(blob.size))?;
        for p in paths {
            match (changes.added.contains(p), changed_to.get(p)) {
                (true, _) => writeln!(out, "         + {p}")?,
                (_, Some(from)) => writeln!(out, "         ~ {from} -> {p}")?,
                _ => writeln!(out, "           {p}")?,
            }
        }
    }
    for (i, (blob, _)) in &gone_layers {
        writeln!(out, "  gone {:>3}  {}  {:>10}", i + 1, blob.diff_id, human(blob.size))?;
    }
    writeln!(out, "store paths: {} added, {} removed, {} changed", changes.added.len(), changes.removed.len(), changes.changed.len())?;
    for p in &changes.removed {
        writeln!(out, "  - {p}")?;
    }
    writeln!(out, "a push of B after A uploads {} layers, {}", upload.len(), human(upload_bytes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_path_of_a_name_on_each_side_is_a_change() {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let (a, b) = (s(&["h1-app-1", "h2-lib-1", "h3-old-1", "h4-twin-1", "h5-twin-2"]), s(&["h6-app-2", "h2-lib-1", "h7-new-1", "h8-twin-3"]));
        let changes = path_changes(&a.iter().collect(), &b.iter().collect());
        assert_eq!(changes.changed, [("h1-app-1".to_owned(), "h6-app-2".to_owned())].into());
        assert_eq!(changes.added, ["h7-new-1".to_owned(), "h8-twin-3".to_owned()].into());
        assert_eq!(changes.removed, ["h3-old-1".to_owned(), "h4-twin-1".to_owned(), "h5-twin-2".to_owned()].into());
    }
}
