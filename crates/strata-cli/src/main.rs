//! The `strata` command: a thin layer over strata-build and strata-transport, the one place
//! where they meet. Flags are defined here once;
//! errors from the libraries are reported here, once, with their causes on one line.
//!
//! Exit codes (also in `--help` and the README):
//! - 0: success; 1: strata failed; 2: the command line is wrong (as clap does);
//! - `strata run`: the container's own exit status, and 125 when strata (or the engine)
//!   failed before the container ran, as Docker and podman do;
//! - 130 and 143: interrupted by SIGINT or SIGTERM (128 + the signal), after removing every
//!   file strata had not finished writing.

mod flake;
mod input;
mod nix_builder;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use strata_build::assemble::ClosureSource;
use strata_build::containerize::Environment;
use strata_oci::compress::Compression;
use strata_oci::image::{Image, Recode};
use strata_oci::platform::Platform;
use strata_oci::reference::{Engine, ImageRef, TRANSPORTS};
use strata_transport::open_image;
use strata_transport::registry::{Credentials, RegistryOptions};

use input::{Input, Loaded};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Turn Nix closures into layered, reproducible OCI and Docker images",
    long_about = "Turn Nix closures into layered, reproducible OCI and Docker images.\n\n\
        An image spec (TOML or JSON) names closure roots, trees to lay over /, explicit layers and \
        the OCI config; everything the roots and the config's Entrypoint, Cmd and Env reference \
        ends up in the image, split into layers that stay stable across rebuilds.",
    after_help = "Examples:\n  strata build image.toml | docker load\n  strata build image.toml -o oci:./out:latest\n  strata build image.toml -o oci-archive:image.tar --compress zstd\n  strata build image.toml -o docker://registry.example/web:1.4\n  strata containerize env.toml --runtime podman\n\nExit codes: 0 success, 1 failure, 2 usage error, 130/143 interrupted (SIGINT/SIGTERM); `strata run`: the container's status, or 125 when strata itself failed."
)]
struct Cli {
    /// More log output on standard error (-v: info, -vv: debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Registry credentials, USER:PASSWORD [default: from $REGISTRY_AUTH_FILE, containers'
    /// auth.json, or ~/.docker/config.json and its credential helpers]
    #[arg(long, global = true, value_name = "USER:PASSWORD")]
    creds: Option<Credentials>,
    /// Verify registries' TLS certificates; false also allows plain HTTP
    #[arg(long, global = true, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
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
    /// Build (or copy) an image into podman or docker and run it
    #[command(
        after_help = "IMAGE is a spec (.toml or .json), built first; a stream script, description or docker-archive (gzip and zstd too) built by strata's Nix library, as `./result`; an OCI layout directory; or a source reference (docker-archive:PATH, oci:DIR[:REF], oci-archive:PATH[:REF], docker://HOST/REPO:TAG).\nWith --flake DIR#NAME, the image is that flake output, built with Nix first (DIR#strata.<system>.images.NAME.result if DIR#NAME is not there).\nWith no --engine, podman is used if it is there, else docker.\n\nExit codes: the container's exit status; 125 when strata or the engine failed before the container ran (as docker and podman do); 130/143 when interrupted."
    )]
    Run(RunArgs),
    /// Write the image a stream script (from the Nix library's streamLayeredImage) describes
    #[command(after_help = "Stream scripts run this themselves: `$(nix-build) | docker load`.")]
    Stream(StreamArgs),
    /// Build an image inside a Nix build (the builder of the Nix library's derivations)
    #[command(hide = true)]
    NixBuilder,
    /// Copy an image from a source to a destination, layers and config unchanged
    #[command(
        after_help = "Sources: docker-archive:PATH, oci:DIR[:REF], oci-archive:PATH[:REF], docker://HOST/REPO[:TAG|@DIGEST]. Every blob read is checked against its digest and size.\n\nLayers are copied as they are, except to docker:// (uncompressed layers are gzipped, as skopeo does) and with --compress (every layer re-encoded into that codec; the config, and so the image ID, stays the same).\n\nDestinations: as for `strata build`."
    )]
    Copy(CopyArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// A spec file, a file or directory holding an image, or an image reference
    #[arg(required_unless_present = "flake")]
    image: Option<String>,
    /// Run the image this flake output builds, DIR#NAME
    #[arg(long, value_name = "DIR#NAME", conflicts_with = "image")]
    flake: Option<String>,
    /// The engine to run in [default: podman if available, else docker]
    #[arg(long, value_enum)]
    engine: Option<Runtime>,
    /// Name the container
    #[arg(long)]
    name: Option<String>,
    /// Run in the background and print the container's ID
    #[arg(short, long)]
    detach: bool,
    /// Publish a port, HOST:CONTAINER (repeatable)
    #[arg(short, long = "publish", value_name = "HOST:CTR")]
    publish: Vec<String>,
    /// Set a variable in the container, K=V (repeatable)
    #[arg(short, long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// The container's network (as the engine's --network)
    #[arg(long)]
    network: Option<String>,
    /// Arguments for the image's entrypoint
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
struct StreamArgs {
    /// The stream script
    script: PathBuf,
    /// Where to write the image (default: a docker-archive on standard output)
    #[arg(short, long, value_name = "DEST")]
    output: Option<String>,
    /// Layer compression [default: none for described images, else as for build]
    #[arg(long, value_enum, value_name = "CODEC")]
    compress: Option<Codec>,
}

#[derive(clap::Args)]
struct CopyArgs {
    /// The image to read
    source: String,
    /// Where to write it
    destination: String,
    /// Re-encode layers into this codec [default: gzip for docker://, else as they are]
    #[arg(long, value_enum, value_name = "CODEC")]
    compress: Option<Codec>,
}

const DESTINATIONS: &str = "Destinations:\n  docker-archive:PATH        a `docker load`-able tar; PATH `-` is standard output\n  oci:DIR[:REF]              an OCI image layout directory (created or added to)\n  oci-archive:PATH[:REF]     a tar of an OCI image layout\n  docker://HOST/REPO[:TAG]   pushed to a registry (gzip layers unless --compress says otherwise)\n  docker-daemon:[NAME:TAG]   loaded into the Docker engine (docker load; Docker reads zstd from version 23)\n  podman:[NAME:TAG]          loaded into podman (podman load)\nREF is a TAG, or NAME:TAG, the name engines give the image when they load the layout\n(NAME may hold a registry host: oci-archive:app.tar:registry.example/app:1.4).\n\nWith no -o, a docker-archive goes to standard output when it is not a terminal.";

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
    #[arg(required_unless_present = "flake")]
    spec: Option<PathBuf>,
    /// Build the image of this flake output with Nix instead, DIR#NAME (see `strata run --help`)
    #[arg(long, value_name = "DIR#NAME", conflicts_with_all = ["spec", "closure_graph"])]
    flake: Option<String>,
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

impl From<Runtime> for Engine {
    fn from(r: Runtime) -> Engine {
        match r {
            Runtime::Docker => Engine::Docker,
            Runtime::Podman => Engine::Podman,
        }
    }
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

/// The pid of a container engine `strata run` is waiting for: signals go to it instead.
static CHILD: AtomicI32 = AtomicI32::new(0);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        // Never below info for the HTTP stack: its debug output could show headers.
        _ => "debug,hyper=info,hyper_util=info,reqwest=info,h2=info,rustls=info",
    };
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .without_time()
        .init();
    // The process's TLS crypto: rustls with ring (aws-lc, rustls' default, takes minutes to
    // build on two cores). Registries' clients take it from here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = handle_signals() {
        eprintln!("strata: error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let is_run = matches!(cli.command, Command::Run(_));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            // `strata run`'s own failures are told apart from the container's exit status.
            ExitCode::from(if is_run { 125 } else { 1 })
        }
    }
}

/// On SIGINT or SIGTERM: removes every unfinished file and exits with 128 + the signal; while
/// `strata run` waits for a container engine, passes the signal on to it instead.
fn handle_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let child = CHILD.load(Ordering::SeqCst);
            if child > 0 {
                // SAFETY: kill(2) with a pid and a signal number has no memory effects.
                unsafe { libc::kill(child, signal) };
                continue;
            }
            let _held = strata_scratch::remove_all();
            eprintln!("strata: interrupted");
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let registry = RegistryOptions::new(cli.creds, cli.tls_verify);
    match cli.command {
        Command::Run(args) => return run_container(args, &registry),
        Command::NixBuilder => nix_builder::build()?,
        Command::Stream(args) => {
            let dest = destination(args.output.as_deref(), &args.script.display().to_string())?;
            Input::Script(args.script).open(&registry)?.write(&dest, args.compress.map(Into::into), &registry)?;
        }
        Command::Build(args) => {
            let (input, what) = match (args.flake, args.spec) {
                (Some(flake), _) => (Input::flake(&flake)?, format!("--flake {flake}")),
                (None, Some(path)) => {
                    let closure = args.closure_graph.map_or(ClosureSource::Nix, ClosureSource::GraphFile);
                    let what = path.display().to_string();
                    (Input::Spec { path, closure }, what)
                }
                (None, None) => unreachable!("clap requires SPEC or --flake"),
            };
            let dest = destination(args.output.as_deref(), &format!("strata build {what}"))?;
            input.open(&registry)?.write(&dest, args.compress.map(Into::into), &registry)?;
        }
        Command::Copy(args) => {
            let dest: ImageRef = args.destination.parse()?;
            let source = open_image(&args.source.parse()?, &Platform::host(), &registry).with_context(|| format!("reading {}", args.source))?;
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
            Loaded(image).write(&dest, Some(Compression::None), &registry)?;
        }
        Command::Containerize(args) => {
            let dest = match args.runtime {
                Some(runtime) => ImageRef::Engine { engine: runtime.into(), name: None },
                None => destination(args.output.as_deref(), &format!("strata containerize {}", args.manifest.display()))?,
            };
            let environment = Environment::load(&args.manifest, args.tag.as_deref())?;
            Loaded(environment.plan(&ClosureSource::Nix)?).write(&dest, args.compress.map(Into::into), &registry)?;
        }
    }
    Ok(ExitCode::SUCCESS)
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

/// Builds or copies the image into an engine and runs it there; returns the container's
/// exit status.
fn run_container(args: RunArgs, registry: &RegistryOptions) -> Result<ExitCode> {
    let engine = match args.engine {
        Some(runtime) => runtime.into(),
        None => {
            let available =
                |cmd: &str| std::process::Command::new(cmd).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
            let engine = [Engine::Podman, Engine::Docker].into_iter().find(|e| available(e.command()));
            engine.context("neither podman nor docker is available: install one, or name it with --engine")?
        }
    };
    eprintln!("strata: running with {engine}");
    let dest = ImageRef::Engine { engine, name: None };
    let input = match (&args.flake, &args.image) {
        (Some(flake), _) => Input::flake(flake)?,
        (None, Some(image)) => Input::resolve(image)?,
        (None, None) => unreachable!("clap requires IMAGE or --flake"),
    };
    let written = input.open(registry)?.write(&dest, None, registry)?;

    let mut run = std::process::Command::new(engine.command());
    run.arg("run");
    if args.detach {
        run.arg("--detach");
    } else {
        run.arg("--rm");
        if std::io::stdin().is_terminal() {
            run.args(["--interactive", "--tty"]);
        }
    }
    for (flag, value) in [("--name", &args.name), ("--network", &args.network)] {
        if let Some(value) = value {
            run.args([flag, value]);
        }
    }
    for port in &args.publish {
        run.args(["--publish", port]);
    }
    for var in &args.env {
        run.args(["--env", var]);
    }
    run.arg(&written.reference).args(&args.args);
    tracing::info!("{}", shown(&run));
    let mut child = run.spawn().with_context(|| format!("cannot run {engine}"))?;
    CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
    let status = child.wait().with_context(|| format!("waiting for {engine}"))?;
    CHILD.store(0, Ordering::SeqCst);
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(125)),
        // Killed by a signal: as a shell reports it.
        None => ExitCode::from(std::os::unix::process::ExitStatusExt::signal(&status).map_or(125, |s| u8::try_from(128 + s).unwrap_or(125))),
    })
}

/// A command as it would be typed, with the values of `--env K=V` left out: they can be secrets.
fn shown(command: &std::process::Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    let mut after_env = false;
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        words.push(match arg.split_once('=') {
            Some((key, _)) if after_env => format!("{key}=<redacted>"),
            _ => arg.to_string(),
        });
        after_env = arg == "--env";
    }
    words.join(" ")
}
