//! Sinks: where images go. References follow skopeo's transports:
//! `docker-archive:PATH` (`-` for stdout), `oci:DIR[:TAG]`, `oci-archive:PATH[:TAG]`,
//! `docker-daemon:[NAME:TAG]` and `podman:[NAME:TAG]` (loaded with the engine's `load`, the
//! docker-archive streamed into it; NAME:TAG, if given, replaces the image's own).
//!
//! Nothing half-written is ever left at a destination: files are written beside it and
//! renamed into place when complete; a new OCI directory is built beside its final name;
//! an existing OCI layout only gains complete blobs, and its `index.json` is replaced last.

mod docker_archive;
mod oci;

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::compress::Compression;
use crate::digest::{Digest, HashingWriter};
use crate::image::{Image, LayerBlob, LayerSource};
use crate::registry::{RegistryError, RegistryOptions, RegistryRef};
use crate::source::{split_tag, SourceImage};
use crate::layer::{header, LayerError};

pub use docker_archive::write_docker_archive;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid destination {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0} exists and is not an OCI layout (no oci-layout file) nor an empty directory")]
    NotOciLayout(PathBuf),
    #[error("cannot read OCI layout {path}: {why}")]
    BadOciLayout { path: PathBuf, why: String },
    #[error("cannot copy layer {digest} of the base image: {source}")]
    CopyBaseLayer { digest: Digest, source: io::Error },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot run `{engine} load` ({source}); is {engine} installed?")]
    EngineMissing { engine: Engine, source: io::Error },
    #[error("`{engine} load` failed: {stderr}")]
    EngineLoad { engine: Engine, stderr: String },
}

/// Where `strata build` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A docker-archive file, or standard output.
    DockerArchive(Target),
    OciDir { dir: PathBuf, tag: Option<String> },
    OciArchive { path: PathBuf, tag: Option<String> },
    /// Loaded into a container engine, optionally as `NAME:TAG`.
    Engine { engine: Engine, reference: Option<String> },
    /// Pushed to a registry.
    Registry(RegistryRef),
}

/// A container engine that loads docker-archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    /// The engine's command.
    pub fn command(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl FromStr for Destination {
    type Err = SinkError;

    fn from_str(reference: &str) -> Result<Destination, SinkError> {
        let bad = |why: &str| SinkError::BadReference { reference: reference.to_owned(), why: why.to_owned() };
        let (transport, rest) = reference
            .split_once(':')
            .ok_or_else(|| bad("expected TRANSPORT:PATH, with docker-archive, oci, oci-archive, docker-daemon or podman as transport"))?;
        let engine = match transport {
            "docker-daemon" => Some(Engine::Docker),
            "podman" => Some(Engine::Podman),
            _ => None,
        };
        if transport == "docker" {
            return rest.parse().map(Destination::Registry).map_err(|e: RegistryError| bad(&e.to_string()));
        }
        if let Some(engine) = engine {
            if !rest.is_empty() && !rest.rsplit_once(':').is_some_and(|(name, tag)| !name.is_empty() && !tag.is_empty() && !tag.contains('/')) {
                return Err(bad("expected NAME:TAG after the transport"));
            }
            return Ok(Destination::Engine { engine, reference: (!rest.is_empty()).then(|| rest.to_owned()) });
        }
        if rest.is_empty() {
            return Err(bad("the path is empty"));
        }
        match transport {
            "docker-archive" if rest == "-" => Ok(Destination::DockerArchive(Target::Stdout)),
            "docker-archive" => Ok(Destination::DockerArchive(Target::File(PathBuf::from(rest)))),
            "oci" => {
                let (dir, tag) = split_tag(rest);
                Ok(Destination::OciDir { dir, tag })
            }
            "oci-archive" => {
                let (path, tag) = split_tag(rest);
                Ok(Destination::OciArchive { path, tag })
            }
            _ => Err(bad("unknown transport (expected docker-archive, oci, oci-archive, docker, docker-daemon or podman)")),
        }
    }
}

impl Destination {
    /// docker-archive layers default to uncompressed (fast `docker load`), OCI to gzip.
    pub fn default_compression(&self) -> Compression {
        match self {
            Destination::DockerArchive(_) | Destination::Engine { .. } => Compression::None,
            _ => Compression::Gzip,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_tag = |tag: &Option<String>| tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default();
        match self {
            Destination::DockerArchive(Target::Stdout) => write!(f, "docker-archive:-"),
            Destination::DockerArchive(Target::File(p)) => write!(f, "docker-archive:{}", p.display()),
            Destination::OciDir { dir, tag } => write!(f, "oci:{}{}", dir.display(), with_tag(tag)),
            Destination::OciArchive { path, tag } => write!(f, "oci-archive:{}{}", path.display(), with_tag(tag)),
            Destination::Engine { engine: Engine::Docker, reference } => write!(f, "docker-daemon:{}", reference.as_deref().unwrap_or_default()),
            Destination::Engine { engine: Engine::Podman, reference } => write!(f, "podman:{}", reference.as_deref().unwrap_or_default()),
            Destination::Registry(r) => write!(f, "{r}"),
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// `name:tag` as the image is known at the destination.
    pub reference: String,
    pub config_digest: Digest,
    /// The manifest's digest, for OCI destinations.
    pub manifest_digest: Option<Digest>,
}

/// Writes `image` to `dest`.
pub fn write_image(image: &Image, dest: &Destination, compression: Compression, registry: &RegistryOptions) -> Result<Written, SinkError> {
    match dest {
        Destination::Registry(r) => {
            let pushed = crate::registry::push(image, r, compression, registry)?;
            tracing::info!("{} layers uploaded, {} mounted, {} already there", pushed.uploaded, pushed.mounted, pushed.present);
            let reference = format!("{}/{}:{}", r.host, r.repository, r.tag.as_deref().unwrap_or("latest"));
            Ok(Written { reference, config_digest: pushed.config_digest, manifest_digest: Some(pushed.manifest_digest) })
        }
        Destination::DockerArchive(Target::Stdout) => {
            let stdout = io::stdout().lock();
            // Small enough that file chunks (mostly larger) go straight through, uncopied.
            let mut out = BufWriter::with_capacity(64 << 10, stdout);
            let written = write_docker_archive(image, &mut out, compression, None)?;
            out.flush().map_err(|source| SinkError::Write { path: "standard output".into(), source })?;
            Ok(written)
        }
        Destination::DockerArchive(Target::File(path)) => write_file_atomically(path, |out| write_docker_archive(image, out, compression, None)),
        Destination::Engine { engine, reference } => load_into(*engine, image, compression, reference.as_deref()),
        Destination::OciDir { dir, tag } => oci::write_layout(image, dir, tag.as_deref(), compression),
        Destination::OciArchive { path, tag } => oci::write_archive(image, path, tag.as_deref(), compression),
    }
}

/// Streams the image as a docker-archive into `ENGINE load`.
fn load_into(engine: Engine, image: &Image, compression: Compression, reference: Option<&str>) -> Result<Written, SinkError> {
    let mut child = std::process::Command::new(engine.command())
        .arg("load")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| SinkError::EngineMissing { engine, source })?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let written = write_docker_archive(image, BufWriter::with_capacity(1 << 20, stdin), compression, reference);
    let output = child.wait_with_output().map_err(|source| SinkError::EngineMissing { engine, source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(SinkError::EngineLoad { engine, stderr });
    }
    written
}

/// Runs `write` on a temporary file beside `path` and renames it to `path` if it succeeds;
/// on failure the temporary file is removed and `path` is untouched.
fn write_file_atomically<T>(path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> Result<T, SinkError>) -> Result<T, SinkError> {
    let write_err = |source| SinkError::Write { path: path.to_owned(), source };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| write_err(io::Error::other("not a file name")))?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(parent)
        .map_err(write_err)?;
    let result = {
        let mut out = BufWriter::with_capacity(1 << 20, temp.as_file());
        let result = write(&mut out)?;
        out.flush().map_err(write_err)?;
        result
    };
    temp.as_file().sync_all().map_err(write_err)?;
    temp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(result)
}

/// Runs `work` on every index in `0..n` on all cores, biggest `weight` first (so the longest
/// jobs start early and the cores finish together), and returns the results in index order.
/// The first error stops the remaining work and is returned.
///
/// Written here rather than with rayon: rayon's splitting does not start jobs in a chosen
/// order, and this scheduling is what keeps two cores busy to the end.
fn for_each_biggest_first<T: Send, E: Send>(n: usize, weight: impl Fn(usize) -> u64, work: impl Fn(usize) -> Result<T, E> + Sync) -> Result<Vec<T>, E> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| std::cmp::Reverse(weight(*i)));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(n.max(1));
    let mut results: Vec<(usize, Result<T, E>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                        let result = work(i);
                        failed.fetch_or(result.is_err(), Ordering::Relaxed);
                        done.push((i, result));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker panicked")).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Writes every layer of `image` as a blob file named by its digest into `dir`: built layers
/// compressed and hashed, base layers copied as they are (and verified), in parallel.
fn write_layer_blobs(image: &Image, compression: Compression, dir: &Path) -> Result<Vec<LayerBlob>, SinkError> {
    let write_err = |source| SinkError::Write { path: dir.to_owned(), source };
    let layers = image.layer_sources();
    let weight = |i: usize| match layers[i] {
        LayerSource::Built(recipe) => recipe.tar_len(),
        LayerSource::Base(base, j) => base.layers[j].size,
    };
    for_each_biggest_first(layers.len(), weight, |i| {
        let temp = tempfile::Builder::new().prefix(".layer").tempfile_in(dir).map_err(write_err)?;
        let mut file = HashingWriter::new(BufWriter::with_capacity(1 << 20, temp.as_file()));
        let (diff_id, media_type) = match layers[i] {
            LayerSource::Built(recipe) => {
                let mut tar = HashingWriter::new(compression.encoder(file).map_err(write_err)?);
                recipe.write_tar(&mut tar)?;
                let (diff_id, _, encoder) = tar.finish();
                file = encoder.finish().map_err(write_err)?;
                (diff_id, compression.layer_media_type())
            }
            LayerSource::Base(base, j) => {
                copy_base_layer(base, j, &mut file)?;
                (base.layers[j].diff_id, base.layers[j].media_type.clone())
            }
        };
        let (digest, size, mut file) = file.finish();
        file.flush().map_err(write_err)?;
        drop(file);
        temp.persist(dir.join(digest.hex())).map_err(|e| write_err(e.error))?;
        Ok(LayerBlob { diff_id, digest, size, media_type })
    })
}

/// Copies layer `index` of `base` to `out`, checking its digest.
fn copy_base_layer(base: &SourceImage, index: usize, out: &mut impl Write) -> Result<(), SinkError> {
    let digest = base.layers[index].digest;
    let mut reader = base.open_layer(index)?;
    io::copy(&mut reader, out).map(|_| ()).map_err(|source| SinkError::CopyBaseLayer { digest, source })
}

/// A tar around whole files (the docker-archive and OCI archive containers): regular files
/// only, mode 0644, owned by root, with one fixed mtime.
struct OuterTar<W: Write> {
    out: W,
    mtime: u64,
    path: PathBuf,
}

impl<W: Write> OuterTar<W> {
    fn write_err(&self, source: io::Error) -> SinkError {
        SinkError::Write { path: self.path.clone(), source }
    }

    fn header(&mut self, name: &str, size: u64) -> Result<(), SinkError> {
        let h = header(name.as_bytes(), tar::EntryType::Regular, 0o644, 0, 0, size, self.mtime, b"");
        self.out.write_all(h.as_bytes()).map_err(|e| self.write_err(e))
    }

    fn pad(&mut self, size: u64) -> Result<(), SinkError> {
        let pad = (size.next_multiple_of(512) - size) as usize;
        self.out.write_all(&[0u8; 512][..pad]).map_err(|e| self.write_err(e))
    }

    fn bytes(&mut self, name: &str, data: &[u8]) -> Result<(), SinkError> {
        self.header(name, data.len() as u64)?;
        self.out.write_all(data).map_err(|e| self.write_err(e))?;
        self.pad(data.len() as u64)
    }

    fn file(&mut self, name: &str, source: &Path) -> Result<(), SinkError> {
        let read_err = |e| SinkError::Layer(LayerError::Read { path: source.to_owned(), source: e });
        let mut file = File::open(source).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        self.header(name, size)?;
        let copied = io::copy(&mut (&mut file).take(size), &mut self.out).map_err(|e| self.write_err(e))?;
        if copied != size {
            return Err(LayerError::Changed { path: source.to_owned(), expected: size }.into());
        }
        self.pad(size)
    }

    /// Ends the archive and flushes the writer.
    fn finish(mut self) -> Result<W, SinkError> {
        self.out.write_all(&[0u8; 1024]).and_then(|()| self.out.flush()).map_err(|e| self.write_err(e))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destinations() {
        let p = |s: &str| s.parse::<Destination>().unwrap();
        assert_eq!(p("docker-archive:-"), Destination::DockerArchive(Target::Stdout));
        assert_eq!(p("docker-archive:/tmp/a:b.tar"), Destination::DockerArchive(Target::File("/tmp/a:b.tar".into())));
        assert_eq!(p("oci:out"), Destination::OciDir { dir: "out".into(), tag: None });
        assert_eq!(p("oci:/tmp/out:v1"), Destination::OciDir { dir: "/tmp/out".into(), tag: Some("v1".into()) });
        assert_eq!(p("oci-archive:x.tar:latest"), Destination::OciArchive { path: "x.tar".into(), tag: Some("latest".into()) });
        for bad in ["nowhere", "docker-archive:", "ftp:/x"] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
        assert_eq!(p("oci:/tmp/out:v1").to_string(), "oci:/tmp/out:v1");
        assert_eq!(p("podman:"), Destination::Engine { engine: Engine::Podman, reference: None });
        assert_eq!(p("docker-daemon:web:1.4"), Destination::Engine { engine: Engine::Docker, reference: Some("web:1.4".into()) });
        assert!("docker-daemon:web".parse::<Destination>().is_err());
    }

    #[test]
    fn parallel_work_keeps_order_and_stops_on_error() {
        let out = for_each_biggest_first(50, |i| i as u64, |i| Ok::<_, ()>(i * 2)).unwrap();
        assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        let err = for_each_biggest_first(50, |_| 0, |i| if i == 7 { Err(i) } else { Ok(i) });
        assert_eq!(err, Err(7));
    }
}
