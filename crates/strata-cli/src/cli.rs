//! The command line, defined once: every subcommand, flag and help text (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use strata_oci::compress::Compression;
use strata_oci::platform::Platform;
use strata_oci::reference::Engine;
use strata_transport::credentials::Credentials;

use crate::exit::exit_codes_help;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Turn Nix closures into layered, reproducible OCI and Docker images",
    long_about = "Turn Nix closures into layered, reproducible OCI and Docker images.\n\n\
        An image spec (TOML or JSON) names closure roots, trees to lay over /, explicit layers and \
        the OCI config; everything the roots and the config's Entrypoint, Cmd and Env reference \
        ends up in the image, split into layers that stay stable across rebuilds.",
    after_help = concat!("Examples:\n  strata build image.toml | docker load\n  strata build image.toml -o oci:./out:latest\n  strata build image.toml -o oci-archive:image.tar --compress zstd\n  strata build image.toml -o docker://registry.example/web:1.4\n  strata containerize env.toml --runtime podman\n\n", exit_codes_help!())
)]
pub struct Cli {
    /// More log output on standard error (-v: info, -vv: debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// No progress bars (there are none either when standard error is not a terminal)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Registry credentials, USER:PASSWORD [default: from $REGISTRY_AUTH_FILE, containers'
    /// auth.json, or ~/.docker/config.json and its credential helpers]
    #[arg(long, global = true, value_name = "USER:PASSWORD")]
    pub creds: Option<Credentials>,
    /// Verify registries' TLS certificates; false also allows plain HTTP [default: true,
    /// unless registries.conf says `insecure = true` of the registry]
    #[arg(long, global = true, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub tls_verify: Option<bool>,
    /// A registry's certificates: *.crt authorities to trust, NAME.cert and NAME.key a client
    /// certificate [default: its HOST[:PORT] directory in ~/.config/containers/certs.d,
    /// /etc/containers/certs.d or /etc/docker/certs.d]
    #[arg(long, global = true, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Neither read nor write the layer cache: every layer is hashed and compressed anew
    #[arg(long, global = true, env = "STRATA_NO_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_cache: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build an image from a spec and write it to a destination
    #[command(after_help = DESTINATIONS)]
    Build(BuildArgs),
    /// Turn an environment (packages, variables, a start hook) into an image: a flox
    /// environment, as `flox containerize` does, or strata's own manifest
    #[command(after_help = CONTAINERIZE_HELP)]
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
    /// Show what is inside an image: platform, config, and each layer with its store paths
    #[command(
        after_help = "IMAGE is a spec (.toml or .json), what the Nix library built (./result), an OCI layout directory, or a source reference (docker-archive:PATH, oci:DIR[:REF], oci-archive:PATH[:REF], docker://HOST/REPO[:TAG|@DIGEST]).\nA source is shown as it is there; a spec or a Nix result as the OCI image with uncompressed layers it makes (nothing is written)."
    )]
    Inspect(InspectArgs),
    /// Compare two images: layers shared and changed, store paths added, removed and changed,
    /// and what a push of B after A uploads
    #[command(
        after_help = "A and B are images as `strata inspect` takes them: specs, ./result, layout directories or source references. Layers are the same when their diff IDs are; a store path changed when one of the same package name (Nix's name without its version) has another hash or version. The bytes a push of B uploads are those of B's blobs A does not have (as inspected: a spec's layers uncompressed).\nThis answers \"why did this digest change?\": the store paths named are the ones whose change made new layers."
    )]
    Diff(DiffArgs),
    /// Write the image's software bill of materials: every Nix store path a package (name,
    /// version, NAR hash, dependencies, the layer holding it); SPDX 2.3 or CycloneDX 1.5 JSON
    #[command(
        after_help = "IMAGE is anything `strata inspect` takes. Names and versions come from each store path's derivation (pname, version) where the local store has it, else from the path's name; hashes and dependencies from the local store; layers without store paths (a base image's) are named as such, not guessed at. The document's times and identifiers come from the image: the same image gives the same bytes."
    )]
    Sbom(SbomArgs),
    /// Write an image's file system as one tar: its layers applied in order, whiteouts and all
    #[command(
        after_help = "IMAGE is anything `strata run` takes: a spec, ./result, a layout directory or a source reference. The tar holds what a container of the image starts with (as `docker export` of a fresh container; nixpkgs' dockerTools.exportImage); it goes to FILE, written whole or not at all, or to standard output when it is not a terminal."
    )]
    Export(ExportArgs),
    /// Make a signing key pair in cosign's format: NAME.key (encrypted) and NAME.pub
    #[command(
        after_help = "The private key is ECDSA P-256, PKCS#8, encrypted with scrypt and NaCl secretbox under the PEM type ENCRYPTED COSIGN PRIVATE KEY, as cosign writes it (podman reads it too). The password is $COSIGN_PASSWORD (empty allowed), else asked on the terminal."
    )]
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Check an image's signature in a registry (cosign's storage) with a public key
    #[command(
        after_help = "Exit status 0 when a signature stored for the image's manifest digest is valid for the key and names the image's repository; 1, with the reason, otherwise."
    )]
    Verify(VerifyArgs),
    /// Check credentials with a registry and store them for later commands, as podman login does
    #[command(after_help = LOGIN_HELP)]
    Login(LoginArgs),
    /// Remove stored credentials for a registry (or all of them), as podman logout does
    Logout(LogoutArgs),
    /// List what is attached to an image in a registry (OCI 1.1 referrers: SBOMs, …)
    #[command(after_help = "The registry's referrers API where it has one, else the referrers tag schema (an index at tag sha256-<manifest hex>).")]
    Referrers {
        /// The image: docker://HOST/REPO[:TAG|@DIGEST]
        image: String,
        /// One JSON object: the image's manifest digest and its referrers
        #[arg(long)]
        json: bool,
    },
    /// Show or clear the layer cache (what strata knows of layers it made: their digests)
    #[command(
        after_help = "The cache is in $STRATA_CACHE_DIR, else $XDG_CACHE_HOME/strata, else ~/.cache/strata; every sink uses it to skip hashing and compressing layers made before. It holds digests, not blobs, and keeps within its bound by dropping the least recently used entries. A lost or damaged entry only costs time."
    )]
    Cache {
        #[command(subcommand)]
        action: Option<CacheAction>,
    },
    /// Print a completion script for a shell: `strata completions bash > /etc/bash_completion.d/strata`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages: strata(1) and one per subcommand (strata-build(1), …)
    #[command(after_help = "With no -o, strata(1) goes to standard output: `strata man | man -l -`.")]
    Man {
        /// The directory to write strata.1 and strata-SUBCOMMAND.1 into (made if missing)
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The image: a spec, ./result, a layout directory or a source reference
    pub image: String,
    /// One JSON object: reference, platform, manifest and config digests, config, and layers
    /// (digest, diff_id, size, media_type, store_paths)
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// The manifest's bytes, as they are (its digest is the image's)
    #[arg(long)]
    pub raw: bool,
    /// The platform to show, from a multi-platform image [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The image: a spec, ./result, a layout directory or a source reference
    pub image: String,
    /// Where the tar goes (default: standard output)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The platform to export, from a multi-platform image
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
}

/// What goes with an image pushed to a registry.
#[derive(clap::Args)]
pub struct PushArgs {
    /// Sign what is pushed (docker:// only) with this key, as cosign does
    #[arg(long, value_name = "NAME.key")]
    pub sign_key: Option<PathBuf>,
    /// Attach the image's bill of materials to what is pushed (docker:// only), as an OCI 1.1
    /// artifact whose subject is the image [default format: spdx]
    #[arg(long, value_enum, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "spdx")]
    pub sbom: Option<SbomFormat>,
}

#[derive(clap::Subcommand)]
pub enum KeyAction {
    /// Write NAME.key and NAME.pub
    Generate {
        /// The key pair's name (a path without the .key/.pub ending)
        name: PathBuf,
    },
}

const LOGIN_HELP: &str = "The registry, or the token service it names, must take the credentials; then they are stored as podman login stores them: an `auth` entry (base64 of USER:PASSWORD) under REGISTRY in --authfile, else $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json, else /run/containers/$UID/auth.json (on macOS, ~/.config/containers/auth.json: the first file strata reads credentials from), written by its owner only (mode 0600), every other entry kept.\nREGISTRY is HOST[:PORT], or HOST[:PORT]/NAMESPACE for credentials of one namespace (quay.io/team).\nThe password is --password-stdin's, else -p's (seen by other users in the process list), else asked on the terminal.";

#[derive(clap::Args)]
pub struct LoginArgs {
    /// HOST[:PORT], or HOST[:PORT]/NAMESPACE
    pub registry: String,
    /// The user name [default: asked on the terminal]
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (others may see it in the process list: prefer --password-stdin)
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input (its first line)
    #[arg(long)]
    pub password_stdin: bool,
    /// The auth file to store the credentials in
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// HOST[:PORT], or HOST[:PORT]/NAMESPACE
    #[arg(required_unless_present = "all")]
    pub registry: Option<String>,
    /// Remove the credentials of every registry
    #[arg(short, long, conflicts_with = "registry")]
    pub all: bool,
    /// The auth file to remove them from [default: where `strata login` stores them]
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image: docker://HOST/REPO[:TAG|@DIGEST]
    pub image: String,
    /// The public key (PEM), as `strata key generate` or cosign writes it
    #[arg(long, value_name = "NAME.pub")]
    pub key: PathBuf,
}

#[derive(clap::Args)]
pub struct SbomArgs {
    /// The image: a spec, ./result, a layout directory or a source reference
    pub image: String,
    /// The document's format
    #[arg(long, value_enum, default_value = "spdx")]
    pub format: SbomFormat,
    /// Write it to FILE (atomically) instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Licences by store path, a JSON object of base names to SPDX expressions (what the Nix
    /// library passes from its packages' meta)
    #[arg(long, value_name = "FILE", hide = true)]
    pub licenses: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SbomFormat {
    Spdx,
    Cyclonedx,
}

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The image before
    pub a: String,
    /// The image after
    pub b: String,
    /// One JSON object: both images, shared and changed layers, store paths, push bytes
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Clone, Copy)]
pub enum CacheAction {
    /// Where the cache is, how many entries it holds and its size (the default)
    Show,
    /// Remove every entry
    Clear,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A spec file, a file or directory holding an image, or an image reference
    #[arg(required_unless_present = "flake")]
    pub image: Option<String>,
    /// Run the image this flake output builds, DIR#NAME
    #[arg(long, value_name = "DIR#NAME", conflicts_with = "image")]
    pub flake: Option<String>,
    /// The engine to run in [default: podman if available, else docker]
    #[arg(long, value_enum)]
    pub engine: Option<Runtime>,
    /// Name the container
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background and print the container's ID
    #[arg(short, long)]
    pub detach: bool,
    /// Publish a port, HOST:CONTAINER (repeatable)
    #[arg(short, long = "publish", value_name = "HOST:CTR")]
    pub publish: Vec<String>,
    /// Set a variable in the container, K=V (repeatable)
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// The container's network (as the engine's --network)
    #[arg(long)]
    pub network: Option<String>,
    /// The platform to run, from a multi-platform image (a foreign one runs under emulation,
    /// where binfmt_misc has it) [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    /// Arguments for the image's entrypoint
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(clap::Args)]
pub struct StreamArgs {
    /// The stream script
    pub script: PathBuf,
    /// Where to write the image (default: a docker-archive on standard output)
    #[arg(short, long, value_name = "DEST")]
    pub output: Option<String>,
    /// Layer compression [default: none for described images, else as for build]
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<Codec>,
}

#[derive(clap::Args)]
pub struct CopyArgs {
    /// The image to read
    pub source: String,
    /// Where to write it
    pub destination: String,
    /// Re-encode layers into this codec [default: gzip for docker://, else as they are]
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<Codec>,
    /// Print what was written as one JSON object on standard output
    #[arg(long)]
    pub json: bool,
    /// From a multi-platform image, the image of this platform [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", conflicts_with = "all")]
    pub platform: Option<Platform>,
    /// From a multi-platform image, every platform's image and the index itself (its digest
    /// kept), as skopeo copy --all
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub push: PushArgs,
}

/// The destinations every writing subcommand's help lists.
macro_rules! destinations {
    () => {
        "Destinations:\n  docker-archive:PATH        a `docker load`-able tar; PATH `-` is standard output\n  oci:DIR[:REF]              an OCI image layout directory (created or added to)\n  oci-archive:PATH[:REF]     a tar of an OCI image layout\n  docker://HOST/REPO[:TAG]   pushed to a registry (gzip layers unless --compress says otherwise)\n  docker-daemon:[NAME:TAG]   loaded into the Docker engine (docker load; Docker reads zstd from version 23)\n  podman:[NAME:TAG]          loaded into podman (podman load)\n  dir:DIR                    skopeo's directory format (manifest.json, version, blobs by digest)\nREF is a TAG, or NAME:TAG, the name engines give the image when they load the layout\n(NAME may hold a registry host: oci-archive:app.tar:registry.example/app:1.4).\n\nWith no -o, a docker-archive goes to standard output when it is not a terminal."
    };
}
const DESTINATIONS: &str = destinations!();

const CONTAINERIZE_HELP: &str = concat!(
    "A flox manifest's packages are built with Nix: pkg-path from --nixpkgs (nixpkgs#PKG-PATH), flake and store-path as they are. The image is named after the environment (.flox/env.json's name, else the directory holding .flox), tagged latest; running it runs [hook] on-activate, then the command ([containerize.config] cmd, else a shell).\n\nExamples:\n  strata containerize | docker load\n  strata containerize -d ./myenv --runtime podman\n  strata containerize -f myenv.tar --tag v1\n\n",
    destinations!()
);

#[derive(clap::Args)]
pub struct ContainerizeArgs {
    /// The environment manifest: flox's (.flox/env/manifest.toml) or strata's (TOML:
    /// [install], [vars], [hook], [container]) [default: DIR/.flox/env/manifest.toml]
    pub manifest: Option<PathBuf>,
    /// The directory holding the flox environment (.flox)
    #[arg(short, long, value_name = "DIR", conflicts_with = "manifest")]
    pub dir: Option<PathBuf>,
    /// Write the image to this file as a docker-archive, `-` for standard output (as flox)
    /// [default: standard output when it is not a terminal, else NAME-container.tar for a
    /// flox environment]
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["output", "runtime"])]
    pub file: Option<PathBuf>,
    /// Where to write the image (see Destinations below)
    #[arg(short, long, value_name = "DEST", conflicts_with = "runtime")]
    pub output: Option<String>,
    /// Load the image into this engine instead of writing it
    #[arg(long, value_enum)]
    pub runtime: Option<Runtime>,
    /// The image tag, instead of the manifest's (a flox environment's: latest)
    #[arg(short, long)]
    pub tag: Option<String>,
    /// A label on the image, KEY=VALUE (repeatable)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// The nixpkgs flake a flox manifest's pkg-paths are built from
    #[arg(long, value_name = "FLAKEREF", default_value = "nixpkgs")]
    pub nixpkgs: String,
    /// Layer compression [default: none for docker-archive and engines, gzip for OCI]
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<Codec>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Runtime {
    Docker,
    Podman,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The image spec: a .toml or .json file. Several specs, one a platform (their
    /// `architecture`), make one multi-platform image
    #[arg(required_unless_present = "flake")]
    pub spec: Vec<PathBuf>,
    /// Build the image of this flake output with Nix instead, DIR#NAME (see `strata run --help`)
    #[arg(long, value_name = "DIR#NAME", conflicts_with_all = ["spec", "closure_graph"])]
    pub flake: Option<String>,
    /// Where to write the image (see Destinations below)
    #[arg(short, long, value_name = "DEST")]
    pub output: Option<String>,
    /// Layer compression [default: none for docker-archive, gzip for OCI]
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<Codec>,
    /// Read the closure from this file (exportReferencesGraph / closureInfo registration
    /// format, or `nix path-info --json` output) instead of asking Nix
    #[arg(long, value_name = "FILE")]
    pub closure_graph: Option<PathBuf>,
    /// An earlier release of this image (any source: docker://…, oci:…, docker-archive:…):
    /// its layers whose store paths are all still in the image are kept as they were, and a
    /// push or a layout takes its blobs of layers that are byte for byte the same (checked)
    /// rather than compressing them again
    #[arg(long, value_name = "IMAGE", conflicts_with = "flake")]
    pub previous: Option<String>,
    /// Trust the --previous release (in a registry) if its signature verifies with this
    /// public key, as `strata verify` checks it: its blobs of unchanged layers are then taken
    /// by their diff IDs, unread. A release not signed with this key is checked blob by blob
    #[arg(long, value_name = "NAME.pub", requires = "previous")]
    pub previous_key: Option<PathBuf>,
    /// Print what was written as one JSON object on standard output (reference, digests,
    /// layers); the image must then go elsewhere (-o)
    #[arg(long)]
    pub json: bool,
    /// The platform written where one image goes (docker-archive, engines) when several
    /// specs make a multi-platform image [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub push: PushArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Codec {
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
