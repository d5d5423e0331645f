//! Container engines: `docker-daemon:[NAME:TAG]` and `podman:[NAME:TAG]`, a docker-archive
//! streamed into the engine's `load` (as go-containerregistry's `daemon/` is built on
//! `tarball/`). Docker before 23 cannot read zstd layers: asking for them fails up front, and
//! a base image's zstd layers are written uncompressed for it.

use std::io::BufWriter;

use strata_oci::compress::Compression;
use strata_oci::image::{Image, LayerTar, Recode};
use strata_oci::reference::Engine;

use crate::docker_archive::write_docker_archive;
use crate::{SinkError, Transport, Written};

/// Streams the image as a docker-archive into `ENGINE load`.
pub(crate) fn load_into<L: LayerTar>(
    engine: Engine,
    image: &Image<L>,
    compression: Compression,
    reference: Option<&str>,
    cx: &Transport,
) -> Result<Written, SinkError> {
    let mut image = std::borrow::Cow::Borrowed(image);
    if engine == Engine::Docker {
        if compression == Compression::Zstd || image.recode.is_some_and(|r| r.to == Compression::Zstd) {
            check_docker_reads_zstd()?;
        } else if image.recode.is_none() && image.layer_sources().iter().any(|l| l.compression() == Some(Compression::Zstd)) {
            // Base layers in zstd are written uncompressed for Docker, which may not read them.
            image.to_mut().recode = Some(Recode { from: Some(Compression::Zstd), to: Compression::None });
        }
    }
    let mut child = std::process::Command::new(engine.command())
        .arg("load")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| SinkError::EngineMissing { engine, source })?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let written = write_docker_archive(&image, BufWriter::with_capacity(1 << 20, stdin), compression, reference, cx);
    let output = child.wait_with_output().map_err(|source| SinkError::EngineMissing { engine, source })?;
    let failed = || SinkError::EngineLoad { engine, stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned() };
    match written {
        // The engine stopped reading and failed: its own message says why.
        Err(e) if !output.status.success() && crate::is_broken_pipe(&e) => Err(failed()),
        // Ours first otherwise: the engine only saw a stream that ended early.
        Err(e) => Err(e),
        Ok(_) if !output.status.success() => Err(failed()),
        Ok(written) => Ok(written),
    }
}

/// Docker reads zstd layers from version 23 on.
fn check_docker_reads_zstd() -> Result<(), SinkError> {
    let out = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|source| SinkError::EngineMissing { engine: Engine::Docker, source })?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major >= 23 {
        Ok(())
    } else {
        Err(SinkError::DockerZstd { version: if version.is_empty() { "(unknown version)".to_owned() } else { version } })
    }
}
