//! The `strata` command: a thin layer over strata-build and strata-transport, the one place
//! where they meet. Flags are defined once (`cli`), a module a kind of subcommand (`write`:
//! build, stream, containerize, copy; `run`; `nix_builder`); errors from the libraries are
//! reported here, once, with their causes on one line.
//!
//! Exit statuses are defined once, in `exit`.

mod about;
mod bars;
mod cli;
mod exit;
mod flake;
mod input;
mod inspect;
mod login;
mod nix_builder;
mod run;
mod sign;
mod write;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;
use clap::Parser;
use strata_transport::cache::LayerCache;
use strata_transport::registry::RegistryOptions;
use strata_transport::Transport;

use cli::{CacheAction, Cli, Command, KeyAction};
use exit::Status;

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
        return Status::Failure.into();
    }
    let is_run = matches!(cli.command, Command::Run(_));
    match run(cli) {
        Ok(status) => status.into(),
        Err(e) if broke_stdout(&e) => {
            let _held = strata_scratch::remove_all();
            Status::Signal(libc::SIGPIPE).into()
        }
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            // `strata run`'s own failures are told apart from the container's exit status.
            (if is_run { Status::RunFailure } else { Status::Failure }).into()
        }
    }
}

/// Whether `error` is standard output's reader going away (`strata inspect … | head`): no
/// fault of strata's, to end quietly, as `cat` ends (killed by SIGPIPE). Asked of the pipe
/// itself (poll reports an error on it once its reader is gone), so that a pipe broken
/// elsewhere (`docker load` dying while strata feeds it) is still reported.
fn broke_stdout(error: &anyhow::Error) -> bool {
    let broken_pipe = strata_transport::is_broken_pipe(error.as_ref());
    let mut stdout = libc::pollfd { fd: libc::STDOUT_FILENO, events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll(2) on one pollfd this function owns, without waiting.
    broken_pipe && unsafe { libc::poll(&mut stdout, 1, 0) } == 1 && stdout.revents & libc::POLLERR != 0
}

/// On SIGINT or SIGTERM: removes every unfinished file and exits with 128 + the signal; while
/// `strata run` waits for a container engine, passes the signal on to it instead.
fn handle_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let child = run::CHILD.load(Ordering::SeqCst);
            if child > 0 {
                // SAFETY: kill(2) with a pid and a signal number has no memory effects.
                unsafe { libc::kill(child, signal) };
                continue;
            }
            let _held = strata_scratch::remove_all();
            eprintln!("strata: interrupted");
            std::process::exit(Status::Signal(signal).code().into());
        }
    });
    Ok(())
}

/// Runs the subcommand; its exit code on success.
fn run(cli: Cli) -> Result<Status> {
    let cx = Transport {
        registry: RegistryOptions::new(cli.creds, cli.tls_verify).with_cert_dir(cli.cert_dir),
        cache: if cli.no_cache { LayerCache::disabled() } else { LayerCache::from_env() },
        progress: bars::progress(cli.quiet),
    };
    match cli.command {
        Command::Run(args) => return run::run_container(args, &cx),
        Command::NixBuilder => nix_builder::build()?,
        Command::Stream(args) => write::stream(args, &cx)?,
        Command::Build(args) => write::build(args, &cx)?,
        Command::Copy(args) => write::copy(args, &cx)?,
        Command::Export(args) => write::export(args, &cx)?,
        Command::Containerize(args) => write::containerize(args, &cx)?,
        Command::Inspect(args) => inspect::inspect(args, &cx)?,
        Command::Diff(args) => inspect::diff(args, &cx)?,
        Command::Sbom(args) => inspect::sbom(args, &cx)?,
        Command::Key { action: KeyAction::Generate { name } } => sign::generate(&name)?,
        Command::Verify(args) => sign::verify(args, &cx)?,
        Command::Login(args) => login::login(args, &cx)?,
        Command::Logout(args) => login::logout(args)?,
        Command::Referrers { image, json } => inspect::referrers(&image, json, &cx)?,
        Command::Cache { action } => about::cache(&cx.cache, action.unwrap_or(CacheAction::Show))?,
        Command::Completions { shell } => about::completions(shell),
        Command::Man { output } => about::man_pages(output.as_deref())?,
    }
    Ok(Status::Success)
}
