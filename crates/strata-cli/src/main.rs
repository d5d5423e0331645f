//! The `strata` command: a thin layer over `strata-engine`. Flags are defined here once;
//! errors from the engine are reported here, one line each, with exit code 1 (2 for usage
//! errors, as clap does).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use strata_engine::compress::Compression;
use strata_engine::containerize::Environment;
use strata_engine::image::{ClosureSource, Image};
use strata_engine::sink::{write_image, Destination, Engine, Target};
use strata_engine::spec::ValidSpec;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Turn Nix closures into layered, reproducible OCI and Docker images",
    long_about = "Turn Nix closures into layered, reproducible OCI and Docker images.\n\n\
        An image spec (TOML or JSON) names closure roots, trees to lay over /, explicit layers and \
        the OCI config; everything the roots and the config's Entrypoint, Cmd and Env reference \
        ends up in the image, split into layers that stay stable across rebuilds.",
    after_help = "Examples:\n  strata build image.toml | docker load\n  strata build image.toml -o oci:./out:latest\n  strata build image.toml -o oci-archive:image.tar --compress zstd\n  strata containerize env.toml --runtime podman"
)]
struct Cli {
    /// More log output on standard error (-v: info, -vv: debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a spec and write it to a destination
    #[command(after_help = DESTINATIONS)]
    Build(BuildArgs),
    /// Turn an environment (packages, variables, a start hook) into an image
    #[command(after_help = DESTINATIONS)]
    Containerize(ContainerizeArgs),
}

const DESTINATIONS: &str = "Destinations:\n  docker-archive:PATH      a `docker load`-able tar; PATH `-` is standard output\n  oci:DIR[:TAG]            an OCI image layout directory (created or added to)\n  oci-archive:PATH[:TAG]   a tar of an OCI image layout\n  docker-daemon:[NAME:TAG] loaded into the Docker engine (docker load)\n  podman:[NAME:TAG]        loaded into podman (podman load)\n\nWith no -o, a docker-archive goes to standard output when it is not a terminal.";

#[derive(clap::Args)]
struct ContainerizeArgs {
    /// The environment manifest (TOML: [install], [vars], [hook], [container])
    manifest: PathBuf,
    /// Where to write the image (see Destinations below)
    #[arg(short, long, value_name = "DEST", conflicts_with = "runtime")]
    output: Option<String>,
    /// Load the image into this engine instead of writing it
    #[arg(long, value_enum)]
    runtime: Option<Runtime>,
    /// The image tag, instead of the manifest's
    #[arg(short, long)]
    tag: Option<String>,
    /// Layer compression [default: none for docker-archive and engines, gzip for OCI]
    #[arg(long, value_enum, value_name = "CODEC")]
    compress: Option<Codec>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Runtime {
    Docker,
    Podman,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The image spec: a .toml or .json file
    spec: PathBuf,
    /// Where to write the image (see Destinations below)
    #[arg(short, long, value_name = "DEST")]
    output: Option<String>,
    /// Layer compression [default: none for docker-archive, gzip for OCI]
    #[arg(long, value_enum, value_name = "CODEC")]
    compress: Option<Codec>,
    /// Read the closure from this file (exportReferencesGraph / closureInfo registration
    /// format, or `nix path-info --json` output) instead of asking Nix
    #[arg(long, value_name = "FILE")]
    closure_graph: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Codec {
    None,
    Gzip,
    Zstd,
}

impl From<Codec> for Compression {
    fn from(c: Codec) -> Compression {
        match c {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => {
            let dest = destination(args.output.as_deref(), &format!("strata build {}", args.spec.display()))?;
            let spec = ValidSpec::load(&args.spec)?;
            let source = args.closure_graph.map_or(ClosureSource::Nix, ClosureSource::GraphFile);
            write(&Image::plan(spec, &source)?, &dest, args.compress)
        }
        Command::Containerize(args) => {
            let dest = match args.runtime {
                Some(Runtime::Docker) => Destination::Engine { engine: Engine::Docker, reference: None },
                Some(Runtime::Podman) => Destination::Engine { engine: Engine::Podman, reference: None },
                None => destination(args.output.as_deref(), &format!("strata containerize {}", args.manifest.display()))?,
            };
            let environment = Environment::load(&args.manifest, args.tag.as_deref())?;
            write(&environment.plan(&ClosureSource::Nix)?, &dest, args.compress)
        }
    }
}

/// `-o DEST` parsed; without it, standard output unless that is a terminal.
fn destination(output: Option<&str>, command: &str) -> Result<Destination> {
    match output {
        Some(reference) => Ok(reference.parse()?),
        None if std::io::stdout().is_terminal() => {
            bail!("standard output is a terminal: pass -o DEST (e.g. -o docker-archive:image.tar), or pipe the image ({command} | docker load)")
        }
        None => Ok(Destination::DockerArchive(Target::Stdout)),
    }
}

fn write(image: &Image, dest: &Destination, compress: Option<Codec>) -> Result<()> {
    tracing::info!("{} layers planned", image.layers.len());
    let compression = compress.map_or_else(|| dest.default_compression(), Compression::from);
    let written = write_image(image, dest, compression).with_context(|| format!("writing {dest}"))?;
    let digest = written.manifest_digest.unwrap_or(written.config_digest);
    eprintln!("strata: wrote {} to {dest} ({} layers, {digest})", written.reference, image.layers.len());
    Ok(())
}
