//! `strata run`: the image built (or copied) into podman or docker, then run there. strata's
//! own failures exit 125, as `docker run` and `podman run` do; the container's status is
//! passed through; signals go to the engine while it runs.

use std::io::IsTerminal;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};
use strata_oci::reference::{Engine, ImageRef};
use strata_transport::Transport;

use crate::cli::RunArgs;
use crate::exit::Status;
use crate::input::Input;

/// The pid of a container engine `strata run` is waiting for: signals go to it instead.
pub static CHILD: AtomicI32 = AtomicI32::new(0);

/// Builds or copies the image into an engine and runs it there; returns the container's
/// exit status.
pub fn run_container(args: RunArgs, cx: &Transport) -> Result<Status> {
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
    let written = input.open(&cx.registry, args.platform.as_ref())?.write(&dest, None, cx)?;

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
    let platform = args.platform.as_ref().map(ToString::to_string);
    for (flag, value) in [("--name", &args.name), ("--network", &args.network), ("--platform", &platform)] {
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
    Ok(Status::of_container(status))
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
