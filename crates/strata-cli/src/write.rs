//! The subcommands that write an image: `build`, `stream`, `containerize` and `copy`; and
//! `export`, which writes its file system.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use strata_build::assemble::ClosureSource;
use strata_build::containerize::{Environment, LoadOptions};
use strata_build::layer::LayerRecipe;
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{Image, Recode};
use strata_oci::platform::Platform;
use strata_oci::reference::{ImageRef, TRANSPORTS};
use strata_transport::{choose_platform, default_compression, open_image, open_index, write_index, Transport, Written};

use crate::cli::{BuildArgs, ContainerizeArgs, CopyArgs, ExportArgs, SbomFormat, StreamArgs};
use crate::input::{Input, Loaded, PreviousArg};
use crate::inspect::attach_sbom;
use crate::sign::Signer;

/// `strata build`: a spec (or a flake's image) to a destination; several specs, one a
/// platform, to one multi-platform image.
pub fn build(args: BuildArgs, cx: &Transport) -> Result<()> {
    let closure = || args.closure_graph.clone().map_or(ClosureSource::Nix, ClosureSource::GraphFile);
    let previous = args.previous.as_deref().map(|image| PreviousArg::new(image, args.previous_key.as_deref())).transpose()?;
    let (inputs, what) = match (&args.flake, args.spec.as_slice()) {
        (Some(flake), _) => (vec![Input::flake(flake)?], format!("--flake {flake}")),
        (None, []) => unreachable!("clap requires SPEC or --flake"),
        (None, specs) => {
            let inputs = specs.iter().map(|path| Input::Spec { path: path.clone(), closure: closure(), previous: previous.clone() }).collect();
            (inputs, specs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "))
        }
    };
    let dest = destination(args.output.as_deref(), &format!("strata build {what}"))?;
    check_json_destination(args.json, &dest)?;
    let signer = args.push.sign_key.as_deref().map(|key| Signer::load(key, &dest)).transpose()?;
    check_attachable(args.push.sbom, &dest)?;
    let target = Target {
        dest: &dest,
        compression: args.compress.map(Into::into),
        platform: args.platform.as_ref(),
        signer: signer.as_ref(),
        sbom: args.push.sbom,
        json: args.json,
    };
    if inputs.len() == 1 && !inputs[0].is_index() {
        let input = inputs.into_iter().next().expect("one input");
        let loaded = input.open(&cx.registry, args.platform.as_ref())?;
        let written = loaded.write(&dest, target.compression, cx)?;
        return after_push(&target, &loaded.0, &written, cx);
    }
    let mut images = Vec::new();
    for input in inputs {
        images.extend(input.open_all(&cx.registry)?);
    }
    write_images(images, &target, None, cx)
}

/// `--sbom` attaches to what goes to a registry.
fn check_attachable(sbom: Option<SbomFormat>, dest: &ImageRef) -> Result<()> {
    if sbom.is_some() && !matches!(dest, ImageRef::Registry(_)) {
        bail!("--sbom attaches the bill of materials to what is pushed to a registry (docker://…), not {dest}: write it with strata sbom");
    }
    Ok(())
}

/// After an image is written: signed (`--sign-key`), its bill of materials attached (`--sbom`),
/// and what was written printed (`--json`).
fn after_push(target: &Target, image: &Image<LayerRecipe>, written: &Written, cx: &Transport) -> Result<()> {
    if let (Some(signer), Some(digest)) = (target.signer, written.manifest_digest) {
        signer.sign(target.dest, &digest, cx)?;
    }
    if let Some(format) = target.sbom {
        attach_sbom(image, written, target.dest, format, cx)?;
    }
    print_json(target.json, target.dest, written)
}

/// Where and how a command writes what it made.
struct Target<'a> {
    dest: &'a ImageRef,
    /// `None`: as the destination wants (see `default_compression`).
    compression: Option<Compression>,
    /// The platform written where one image goes.
    platform: Option<&'a Platform>,
    signer: Option<&'a Signer>,
    /// Attach each image's bill of materials in this format.
    sbom: Option<SbomFormat>,
    json: bool,
}

/// Writes images of one name, one a platform, to the target: as an image index where it
/// holds one (OCI layouts and archives, registries), else the image of its platform (default:
/// the host's). `keep` is a source's index to keep (see `write_index`).
fn write_images(images: Vec<Image<LayerRecipe>>, target: &Target, keep: Option<&[u8]>, cx: &Transport) -> Result<()> {
    let Target { dest, compression, platform, signer, json, .. } = *target;
    if matches!(dest, ImageRef::DockerArchive(_) | ImageRef::Engine { .. } | ImageRef::Dir(_)) {
        let platform = platform.cloned().unwrap_or_else(Platform::host);
        let chosen = choose_platform(&images, &platform).with_context(|| format!("writing {dest}, which holds one image: choose it with --platform"))?;
        let written = Loaded(chosen.clone()).write(dest, compression, cx)?;
        return print_json(json, dest, &written);
    }
    let compression = compression.unwrap_or_else(|| default_compression(dest));
    let written = write_index(&images, dest, compression, keep, cx).with_context(|| format!("writing {dest}"))?;
    if let Some(signer) = signer {
        signer.sign(dest, &written.index_digest, cx)?;
    }
    if let Some(format) = target.sbom {
        for (image, (_, one)) in images.iter().zip(&written.images) {
            attach_sbom(image, one, dest, format, cx)?;
        }
    }
    let platforms: Vec<String> = written.images.iter().map(|(p, _)| p.to_string()).collect();
    eprintln!("strata: wrote {} to {dest} ({}; index {})", written.reference, platforms.join(", "), written.index_digest);
    if json {
        let images: Vec<serde_json::Value> = written
            .images
            .iter()
            .map(|(platform, w)| {
                serde_json::json!({ "platform": platform.to_string(), "config_digest": w.config_digest, "manifest_digest": w.manifest_digest, "layers": w.layers })
            })
            .collect();
        let object =
            serde_json::json!({ "destination": dest.to_string(), "reference": written.reference, "index_digest": written.index_digest, "images": images });
        println!("{object}");
    }
    Ok(())
}

/// `strata stream`: the image a stream script or description describes.
pub fn stream(args: StreamArgs, cx: &Transport) -> Result<()> {
    let dest = destination(args.output.as_deref(), &args.script.display().to_string())?;
    let compression = args.compress.map(Into::into);
    let input = Input::resolve(&args.script.to_string_lossy())?;
    if input.is_index() {
        let target = Target { dest: &dest, compression, platform: None, signer: None, sbom: None, json: false };
        return write_images(input.open_all(&cx.registry)?, &target, None, cx);
    }
    Input::Script(args.script).open(&cx.registry, None)?.write(&dest, compression, cx)?;
    Ok(())
}

/// `strata copy`: an image from a source to a destination, layers verified, the config kept;
/// from a multi-platform source, the host's (or `--platform`'s) image, or with `--all`
/// every platform's and the index.
pub fn copy(args: CopyArgs, cx: &Transport) -> Result<()> {
    let dest: ImageRef = args.destination.parse()?;
    check_json_destination(args.json, &dest)?;
    let signer = args.push.sign_key.as_deref().map(|key| Signer::load(key, &dest)).transpose()?;
    check_attachable(args.push.sbom, &dest)?;
    let source: ImageRef = args.source.parse()?;
    let name = match &dest {
        ImageRef::Engine { name: Some(name), .. } => Some(name),
        _ => None,
    };
    let recode = match (args.compress, &dest) {
        (Some(codec), _) => Some(Recode { from: None, to: codec.into() }),
        // As skopeo does: what goes to a registry is compressed.
        (None, ImageRef::Registry(_)) => Some(Recode { from: Some(Compression::None), to: Compression::Gzip }),
        (None, _) => None,
    };
    let copy_of = |platform: &Platform| -> Result<Image<LayerRecipe>> {
        let opened = open_image(&source, platform, &cx.registry).with_context(|| format!("reading {} for {platform}", args.source))?;
        let mut image = Image::copy_of(opened, name);
        image.recode = recode;
        Ok(image)
    };
    if args.all {
        if let Some(index) = open_index(&source, &cx.registry).with_context(|| format!("reading {}", args.source))? {
            let mut images = Vec::new();
            for (platform, digest) in &index.platforms {
                let image = copy_of(platform)?;
                // The tag may have moved since the index was read: the image must be the one it lists.
                let listed = image.base.as_ref().and_then(|b| b.manifest_bytes.as_deref()).map(Digest::of);
                if listed != Some(*digest) {
                    bail!("{}: the image for {platform} is not the one its index lists ({digest}): the source changed while it was read", args.source);
                }
                images.push(image);
            }
            let target =
                Target { dest: &dest, compression: Some(Compression::None), platform: None, signer: signer.as_ref(), sbom: args.push.sbom, json: args.json };
            return write_images(images, &target, Some(&index.bytes), cx);
        }
    }
    let loaded = Loaded(copy_of(args.platform.as_ref().unwrap_or(&Platform::host()))?);
    let written = loaded.write(&dest, Some(Compression::None), cx)?;
    let target = Target { dest: &dest, compression: None, platform: None, signer: signer.as_ref(), sbom: args.push.sbom, json: args.json };
    after_push(&target, &loaded.0, &written, cx)
}

/// `--json` prints to standard output: the image cannot go there too.
fn check_json_destination(json: bool, dest: &ImageRef) -> Result<()> {
    if json && matches!(dest, ImageRef::DockerArchive(None)) {
        bail!("--json prints to standard output, where the image would go: name a destination with -o");
    }
    Ok(())
}

/// With `--json`, what was written: one object on standard output.
fn print_json(json: bool, dest: &ImageRef, written: &Written) -> Result<()> {
    if !json {
        return Ok(());
    }
    let object = serde_json::json!({
        "destination": dest.to_string(),
        "reference": written.reference,
        "config_digest": written.config_digest,
        "manifest_digest": written.manifest_digest,
        "layers": written.layers,
    });
    println!("{object}");
    Ok(())
}

/// `strata containerize`: an environment manifest made into an image: the manifest named,
/// else the flox environment's in `--dir` (or here); written where `-f`, `-o` or `--runtime`
/// say, else to standard output when it is not a terminal, else (a flox environment, as flox
/// does) to `NAME-container.tar`.
pub fn containerize(args: ContainerizeArgs, cx: &Transport) -> Result<()> {
    let manifest = match (&args.manifest, &args.dir) {
        (Some(manifest), _) => manifest.clone(),
        (None, dir) => {
            let dir = dir.clone().unwrap_or_else(|| ".".into());
            let manifest = dir.join(".flox/env/manifest.toml");
            if !manifest.exists() {
                bail!(
                    "no flox environment in {} (no {}): run strata containerize where .flox is, or name the directory (-d DIR) or a manifest",
                    dir.display(),
                    manifest.display()
                );
            }
            manifest
        }
    };
    let options = LoadOptions { tag: args.tag.clone(), labels: args.label.iter().cloned().collect(), nixpkgs: Some(args.nixpkgs.clone()) };
    let environment = Environment::load(&manifest, &options)?;
    let dest = match (args.runtime, &args.file, &args.output) {
        (Some(runtime), _, _) => ImageRef::Engine { engine: runtime.into(), name: None },
        (None, Some(file), _) if file.as_os_str() == "-" => ImageRef::DockerArchive(None),
        (None, Some(file), _) => ImageRef::DockerArchive(Some(file.clone())),
        (None, None, Some(_)) => destination(args.output.as_deref(), "")?,
        (None, None, None) if std::io::stdout().is_terminal() && environment.is_flox() => {
            ImageRef::DockerArchive(Some(format!("{}-container.tar", environment.spec.name).into()))
        }
        (None, None, None) => destination(None, &format!("strata containerize {}", manifest.display()))?,
    };
    Loaded(environment.plan(&ClosureSource::Nix)?).write(&dest, args.compress.map(Into::into), cx)?;
    Ok(())
}

/// `-o DEST` parsed; without it, standard output unless that is a terminal.
fn destination(output: Option<&str>, command: &str) -> Result<ImageRef> {
    match output {
        Some(reference) => Ok(reference.parse()?),
        None if std::io::stdout().is_terminal() => {
            bail!("standard output is a terminal: pass -o DEST ({TRANSPORTS}), or pipe the image ({command} | docker load)")
        }
        None => Ok(ImageRef::DockerArchive(None)),
    }
}

/// `strata export`: the image's file system as one tar, to a file (whole or not at all) or
/// to standard output.
pub fn export(args: ExportArgs, cx: &Transport) -> Result<()> {
    let Loaded(image) = Input::resolve(&args.image)?.open(&cx.registry, args.platform.as_ref())?;
    match &args.output {
        None if std::io::stdout().is_terminal() => bail!("standard output is a terminal: give -o FILE, or pipe the tar somewhere"),
        None => strata_transport::flatten::flatten(&image, std::io::BufWriter::new(std::io::stdout().lock()), "")?,
        Some(path) => {
            let output = strata_scratch::OutputFile::create(path).with_context(|| format!("writing {}", path.display()))?;
            strata_transport::flatten::flatten(&image, std::io::BufWriter::new(output.as_file()), "")?;
            output.commit().with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
