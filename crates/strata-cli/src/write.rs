//! The subcommands that write an image: `build`, `stream`, `containerize` and `copy`.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use strata_build::assemble::ClosureSource;
use strata_build::containerize::{Environment, LoadOptions};
use strata_oci::compress::Compression;
use strata_oci::image::{Image, Recode};
use strata_oci::platform::Platform;
use strata_oci::reference::{ImageRef, TRANSPORTS};
use strata_transport::open_image;
use strata_transport::{Transport, Written};

use crate::cli::{BuildArgs, ContainerizeArgs, CopyArgs, StreamArgs};
use crate::input::{Input, Loaded};

/// `strata build`: a spec (or a flake's image) to a destination.
pub fn build(args: BuildArgs, cx: &Transport) -> Result<()> {
    let (input, what) = match (args.flake, args.spec) {
        (Some(flake), _) => (Input::flake(&flake)?, format!("--flake {flake}")),
        (None, Some(path)) => {
            let closure = args.closure_graph.map_or(ClosureSource::Nix, ClosureSource::GraphFile);
            let what = path.display().to_string();
            let previous = args.previous.as_deref().map(str::parse).transpose()?;
            (Input::Spec { path, closure, previous }, what)
        }
        (None, None) => unreachable!("clap requires SPEC or --flake"),
    };
    let dest = destination(args.output.as_deref(), &format!("strata build {what}"))?;
    check_json_destination(args.json, &dest)?;
    let written = input.open(&cx.registry)?.write(&dest, args.compress.map(Into::into), cx)?;
    print_json(args.json, &dest, &written)
}

/// `strata stream`: the image a stream script or description describes.
pub fn stream(args: StreamArgs, cx: &Transport) -> Result<()> {
    let dest = destination(args.output.as_deref(), &args.script.display().to_string())?;
    Input::Script(args.script).open(&cx.registry)?.write(&dest, args.compress.map(Into::into), cx)?;
    Ok(())
}

/// `strata copy`: an image from a source to a destination, layers verified, the config kept.
pub fn copy(args: CopyArgs, cx: &Transport) -> Result<()> {
    let dest: ImageRef = args.destination.parse()?;
    check_json_destination(args.json, &dest)?;
    let source = open_image(&args.source.parse()?, &Platform::host(), &cx.registry).with_context(|| format!("reading {}", args.source))?;
    let name = match &dest {
        ImageRef::Engine { name: Some(name), .. } => Some(name),
        _ => None,
    };
    let mut image = Image::copy_of(source, name);
    image.recode = match (args.compress, &dest) {
        (Some(codec), _) => Some(Recode { from: None, to: codec.into() }),
        // As skopeo does: what goes to a registry is compressed.
        (None, ImageRef::Registry(_)) => Some(Recode { from: Some(Compression::None), to: Compression::Gzip }),
        (None, _) => None,
    };
    let written = Loaded(image).write(&dest, Some(Compression::None), cx)?;
    print_json(args.json, &dest, &written)
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

/// `strata containerize`: an environment manifest made into an image.
/// `strata containerize`: the manifest named, else the flox environment's in `--dir` (or
/// here); written where `-f`, `-o` or `--runtime` say, else to standard output when it is not
/// a terminal, else (a flox environment, as flox does) to `NAME-container.tar`.
pub fn containerize(args: ContainerizeArgs, cx: &Transport) -> Result<()> {
    let manifest = args.manifest.clone().unwrap_or_else(|| args.dir.clone().unwrap_or_else(|| ".".into()).join(".flox/env/manifest.toml"));
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
