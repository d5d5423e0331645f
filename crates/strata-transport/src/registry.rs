//! Registries: `docker://HOST/REPO[:TAG|@DIGEST]` over the OCI distribution API: pushes,
//! pulls, signatures and referrers, and the check of `strata login`, with retries and
//! backoff, credentials from the usual files, and a memory of layer digests. The requests
//! themselves, their authentication and the bounds on everything a registry sends (a
//! manifest, index or referrers list to 4 MiB, a blob to its declared size, a token, an
//! error's body) are [`client`]'s; what the machine's container configuration says of a
//! registry, `certs`' (containers-certs.d) and `conf`'s (containers-registries.conf).
//!
//! Pushing costs what changed. The layer cache (`crate::cache`) knows, per layer and
//! codec, the blob's digest and size, and in which repositories strata pushed it. So for a
//! layer made before, strata asks the registry (HEAD) before compressing anything; a blob
//! the repository lacks but another repository of the same registry has is mounted from
//! there; only the rest is compressed (into a temporary file, as the registry wants its size
//! up front) and uploaded. Layers go in parallel; the config, then the manifest, last.
//!
//! Secrets never reach an error, a log line or a `Debug` output: [`Credentials`] redacts
//! (`crate::credentials` finds them).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{Image, LayerSource, LayerTar, SourceImage};
use strata_oci::manifest::LayerBlob;
use strata_oci::platform::Platform;
pub use strata_oci::reference::RegistryRef;
use strata_scratch::ScratchFile;

use crate::blobs::{layers_of, parse_json, BlobStore, MAX_METADATA_SIZE};
use crate::cache::{CachedBlob, LayerCache};
pub use crate::credentials::Credentials;
use crate::credentials::CredentialsError;
use crate::progress::{Progress, Stage};
use crate::SourceError;

mod certs;
mod client;
mod conf;
pub use certs::CertificateError;
use client::{Access, Client, HttpError};
pub use conf::ConfError;

/// How many times a request is tried before giving up, and the first pause between tries.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How many times a request is sent again at once, uncounted, on a connection closed
/// before use ([`closed_before_use`]).
const QUIET_RETRIES: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("the registry's TLS settings: {0}")]
    Certificates(#[from] CertificateError),
    #[error("registries.conf: {0}")]
    Conf(#[from] ConfError),
    #[error("{reference} is blocked (`blocked = true` in {})", file.display())]
    Blocked { reference: String, file: PathBuf },
    #[error("registries.conf puts {reference} at {place:?}, which is not a reference: {why}")]
    BadPlace { reference: String, place: String, why: String },
    #[error("{error} (and its mirrors in registries.conf failed: {})", mirrors.join("; "))]
    MirrorsFailed { error: Box<RegistryError>, mirrors: Vec<String> },
    #[error("authentication to {host} failed{}: check the credentials (--creds, $REGISTRY_AUTH_FILE, ~/.docker/config.json)", user.as_ref().map(|u| format!(" for user {u:?}")).unwrap_or_default())]
    Unauthorized { host: String, user: Option<String> },
    #[error("{what} at {host}: {message}")]
    Request { host: String, what: String, message: String },
    #[error("{what}: digest {actual} where {expected} was expected")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("cannot start the runtime for registry requests")]
    Runtime(#[source] std::io::Error),
    #[error("layer {index}")]
    Layer { index: usize, source: Box<crate::SinkError> },
    #[error("{reference}: {why}")]
    BadManifest { reference: String, why: String },
    #[error("{host} speaks plain HTTP, not HTTPS: pass --tls-verify=false to use a registry without TLS")]
    PlainHttp { host: String },
    #[error("nothing listens at {host} (connection refused): is the registry running, and is the port right?")]
    Refused { host: String },
    #[error("{host}'s certificate is not trusted ({why}): put its authority in its containers-certs.d directory or --cert-dir, or pass --tls-verify=false")]
    Untrusted { host: String, why: String },
    #[error("{host} refused the TLS handshake ({why}): where it asks for a client certificate, put NAME.cert and NAME.key in its containers-certs.d directory or --cert-dir")]
    Handshake { host: String, why: String },
    #[error(transparent)]
    NotAsRecorded(#[from] strata_oci::image::NotAsRecorded),
}

/// What names `r`'s manifest in its repository: its digest, else its tag (`latest` if none).
fn manifest_target(r: &RegistryRef) -> String {
    match (&r.digest, &r.tag) {
        (Some(d), _) => d.to_string(),
        (None, tag) => tag.clone().unwrap_or_else(|| "latest".into()),
    }
}

/// How to talk to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Given on the command line; else looked up per registry.
    pub creds: Option<Credentials>,
    /// `false`: HTTPS without certificate checks, or plain HTTP. `None`: as registries.conf
    /// says of the registry (`insecure`), else verified.
    pub tls_verify: Option<bool>,
    /// Where a registry's authorities and client certificate are, instead of its directory in
    /// containers-certs.d(5)'s places (skopeo's `--cert-dir`).
    pub cert_dir: Option<PathBuf>,
    /// The one tokio runtime behind every synchronous call made with these options, made on
    /// first use (no registry, no runtime).
    runtime: std::sync::OnceLock<Arc<tokio::runtime::Runtime>>,
    /// registries.conf, read on first use.
    conf: Arc<std::sync::OnceLock<conf::RegistriesConf>>,
    /// How long a registry may stay silent, before its answer or within it, before the
    /// request is given up (and tried again); not for uploads (see `client`).
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions::new(None, None)
    }
}

impl RegistryOptions {
    /// Options for every registry a command talks to. TLS goes through rustls with the
    /// process's default crypto provider, which the program installs (a library does not).
    pub fn new(creds: Option<Credentials>, tls_verify: Option<bool>) -> RegistryOptions {
        RegistryOptions { creds, tls_verify, cert_dir: None, runtime: std::sync::OnceLock::new(), conf: Default::default(), read_timeout: client::READ_TIMEOUT }
    }

    /// These options, with registries' certificates read from `dir` rather than from their
    /// containers-certs.d(5) directories.
    pub fn with_cert_dir(self, dir: Option<PathBuf>) -> RegistryOptions {
        RegistryOptions { cert_dir: dir, ..self }
    }

    /// registries.conf, read on first use.
    fn conf(&self) -> Result<&conf::RegistriesConf, RegistryError> {
        if self.conf.get().is_none() {
            let loaded = conf::RegistriesConf::load()?;
            let _ = self.conf.set(loaded);
        }
        Ok(self.conf.get().expect("set above"))
    }

    /// What registries.conf says of `reference` (`HOST/REPOSITORY`).
    fn conf_of(&self, reference: &str) -> Result<Option<conf::Entry>, RegistryError> {
        Ok(self.conf()?.find(reference).cloned())
    }

    /// An error if registries.conf blocks reading from `source`'s repository.
    fn check_not_blocked(&self, source: &RegistryRef) -> Result<(), RegistryError> {
        let name = format!("{}/{}", source.host, source.repository);
        match self.conf_of(&name)?.filter(|e| e.blocked) {
            Some(entry) => Err(RegistryError::Blocked { reference: name, file: entry.file }),
            None => Ok(()),
        }
    }

    /// Where `source` is read from, in order (registries.conf's mirrors of it, then its
    /// location: see `conf`), each with whether TLS is optional there; an error if the file
    /// blocks it.
    fn pull_sources(&self, source: &RegistryRef) -> Result<Vec<(RegistryRef, bool)>, RegistryError> {
        self.check_not_blocked(source)?;
        let name = format!("{}/{}", source.host, source.repository);
        let mut places = Vec::new();
        for place in self.conf()?.pull_sources(&name, source.digest.is_some()) {
            let parsed = RegistryRef::parse(&place.name).map_err(|why| RegistryError::BadPlace { reference: name.clone(), place: place.name.clone(), why })?;
            places.push((RegistryRef { tag: source.tag.clone(), digest: source.digest, ..parsed }, place.insecure));
        }
        Ok(places)
    }

    fn runtime(&self) -> Result<Arc<tokio::runtime::Runtime>, RegistryError> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime.clone());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(RegistryError::Runtime)?;
        Ok(self.runtime.get_or_init(|| Arc::new(runtime)).clone())
    }
}

/// A connection to one repository of one registry.
struct Session {
    client: Client,
    user: Option<String>,
    host: String,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Whether the registry has answered once: a refused connection before that means
    /// nothing listens there (no use retrying), after it a registry restarting.
    answered: std::sync::atomic::AtomicBool,
}

impl Session {
    /// A session for `repository`'s registry, with the credentials stored for it.
    fn new(repository: &RegistryRef, options: &RegistryOptions) -> Result<Session, RegistryError> {
        let insecure = options.conf_of(&format!("{}/{}", repository.host, repository.repository))?.is_some_and(|e| e.insecure);
        Session::at(repository, insecure, options)
    }

    /// A session for `repository`'s registry where registries.conf says whether it is
    /// `insecure`, with the credentials stored for it.
    fn at(repository: &RegistryRef, insecure: bool, options: &RegistryOptions) -> Result<Session, RegistryError> {
        let host = repository.host.as_str();
        let creds = match &options.creds {
            Some(c) => Some(c.clone()),
            None => crate::credentials::stored(host, &repository.repository)?,
        };
        Session::with(host, &repository.repository, creds, insecure, options)
    }

    /// A session to read from `repository`, unless registries.conf blocks it.
    fn for_reading(repository: &RegistryRef, options: &RegistryOptions) -> Result<Session, RegistryError> {
        options.check_not_blocked(repository)?;
        Session::new(repository, options)
    }

    /// A session for `repository` (empty: the registry itself) at `host`, with `creds`; TLS
    /// unverified if `--tls-verify=false`, or if the registry is `insecure` and no
    /// `--tls-verify` was given.
    fn with(host: &str, repository: &str, creds: Option<Credentials>, insecure: bool, options: &RegistryOptions) -> Result<Session, RegistryError> {
        let user = creds.as_ref().map(|c| c.user.clone()).filter(|u| !u.is_empty());
        let tls = certs::for_registry(host, options.cert_dir.as_deref())?;
        let tls_verify = options.tls_verify.unwrap_or(!insecure);
        let client = Client::new(host, repository, creds, tls_verify, tls, options.read_timeout).map_err(|e| RegistryError::Request {
            host: host.to_owned(),
            what: "starting an HTTP client".into(),
            message: e.to_string(),
        })?;
        let runtime = options.runtime()?;
        Ok(Session { client, user, host: host.to_owned(), runtime, answered: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Runs `op` with retries on dropped connections, 5xx and 429 answers; maps the final
    /// error.
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, HttpError>>,
    {
        let (mut pause, mut attempt, mut unused_closed) = (FIRST_BACKOFF, 0, 0);
        loop {
            let result = op().await;
            let answered = self.answered.load(std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(v) => {
                    self.answered.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => match self.hopeless(&e, answered) {
                    Some(error) => return Err(error),
                    None if closed_before_use(&e) && unused_closed < QUIET_RETRIES => unused_closed += 1,
                    None if attempt + 1 < ATTEMPTS && retryable(&e) => {
                        attempt += 1;
                        tracing::warn!("{what} at {}: {}; trying again in {pause:?}", self.host, describe(&e));
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                    None => return Err(self.error(what, &e)),
                },
            }
        }
    }

    /// The error `e` stands for when trying again is no use, told by its innermost cause: a
    /// TLS handshake answered in plain HTTP (rustls sees a record that is not TLS); a
    /// connection refused before the registry ever answered (after, a registry restarting);
    /// a certificate rustls refused; a handshake the registry ended with an alert (no client
    /// certificate, or one it does not trust).
    fn hopeless(&self, e: &HttpError, answered: bool) -> Option<RegistryError> {
        let (cause, host) = (root_cause(e), self.host.clone());
        if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
            Some(RegistryError::PlainHttp { host })
        } else if !answered && cause.contains("Connection refused") {
            Some(RegistryError::Refused { host })
        } else if cause.contains("invalid peer certificate") {
            Some(RegistryError::Untrusted { host, why: cause })
        } else if cause.contains("received fatal alert") {
            Some(RegistryError::Handshake { host, why: cause })
        } else {
            None
        }
    }

    fn error(&self, what: &str, e: &HttpError) -> RegistryError {
        if is_unauthorized(e) {
            return RegistryError::Unauthorized { host: self.host.clone(), user: self.user.clone() };
        }
        RegistryError::Request { host: self.host.clone(), what: what.to_owned(), message: describe(e) }
    }

    async fn authenticate(&self, access: Access) -> Result<(), RegistryError> {
        self.retry("authenticating", || self.client.authenticate(access)).await
    }

    /// The manifest or index `target` (a tag or a digest) names, and the digest the registry
    /// says it has.
    async fn get_manifest(&self, target: &str) -> Result<(Vec<u8>, Option<String>), HttpError> {
        self.client.get_bounded(&format!("manifests/{target}"), &ACCEPTED.join(", "), MAX_METADATA_SIZE, "the most a manifest may have").await
    }
}

fn retryable(e: &HttpError) -> bool {
    match e {
        HttpError::Transport(r) => r.is_connect() || r.is_timeout() || r.is_request() || r.is_body(),
        HttpError::Status { status, .. } => status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS,
        // A dropped connection while a blob is written down; not a blob larger than declared,
        // which would come again.
        HttpError::Io(e) => e.kind() != std::io::ErrorKind::FileTooLarge,
        HttpError::TooLarge { .. } | HttpError::Token { .. } | HttpError::Protocol { .. } => false,
    }
}

/// A new connection the registry closed before the request could go out. In TLS 1.3 the
/// client's side of the handshake ends before the registry has judged its certificate, so
/// a refusal (no certificate, or one it does not trust) can come as the connection closing
/// just after; tried again at once and without a warning, the handshake mostly reads the
/// refusal itself, which [`Session::hopeless`] names.
fn closed_before_use(e: &HttpError) -> bool {
    matches!(e, HttpError::Transport(_)) && root_cause(e).contains("connection was not ready")
}

fn is_unauthorized(e: &HttpError) -> bool {
    e.status() == Some(reqwest::StatusCode::UNAUTHORIZED)
}

fn not_found(e: &HttpError) -> bool {
    e.status() == Some(reqwest::StatusCode::NOT_FOUND)
}

/// The error's message with every cause, each once, and URLs' queries (an upload's state,
/// a signed URL's secret) left out.
fn describe(e: &HttpError) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    without_queries(&parts.join(": "))
}

/// `text` with each URL's query left out: from a `?` to the end of the URL (a space, a `)`,
/// or the `: ` after it).
fn without_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        while let Some(&next) = chars.peek() {
            let colon_ends = next == ':' && chars.clone().nth(1).is_none_or(char::is_whitespace);
            if next.is_whitespace() || next == ')' || colon_ends {
                break;
            }
            chars.next();
        }
    }
    out
}

/// The innermost cause of `e`.
fn root_cause(e: &HttpError) -> String {
    let mut err: &dyn std::error::Error = e;
    while let Some(source) = err.source() {
        err = source;
    }
    err.to_string()
}

/// Checks `creds` with the registry at `host`, as `docker login` and `podman login` do: the
/// registry, or its token service, takes them (a registry that asks for none takes any).
pub fn login(host: &str, creds: Credentials, options: &RegistryOptions) -> Result<(), RegistryError> {
    let insecure = options.conf_of(host)?.is_some_and(|e| e.insecure);
    let session = Session::with(host, "", Some(creds), insecure, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(session.retry("logging in", || session.client.login()))
}

/// What a push did, for the caller's report.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub config_digest: Digest,
    pub manifest_digest: Digest,
    /// Layer blobs uploaded, mounted from another repository, and found already there.
    pub uploaded: usize,
    pub mounted: usize,
    pub present: usize,
    /// Built layers read (their tars made, hashed, compressed): the rest were known from the
    /// layer cache or Nix's record and found in the registry.
    pub made: usize,
    /// The layer blobs the manifest lists.
    pub layers: Vec<LayerBlob>,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
}

/// Pushes `image` to `dest`.
pub fn push<L: LayerTar>(image: &Image<L>, dest: &RegistryRef, compression: Compression, cx: &crate::Transport) -> Result<Pushed, RegistryError> {
    let session = Session::new(dest, &cx.registry)?;
    let runtime = session.runtime.clone();
    runtime.block_on(push_async(&session, image, dest, compression, &cx.cache, &cx.progress, Target::Tag))
}

/// Pushes `images` (one a platform) to `dest` as one image: each manifest by its digest, then
/// the image index listing them to the tag (which moves only with the index).
pub fn push_index<L: LayerTar>(
    images: &[Image<L>],
    dest: &RegistryRef,
    compression: Compression,
    keep: Option<&[u8]>,
    cx: &crate::Transport,
) -> Result<crate::WrittenIndex, RegistryError> {
    let session = Session::new(dest, &cx.registry)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async {
        let mut pushed = Vec::new();
        for image in images {
            let one = push_async(&session, image, dest, compression, &cx.cache, &cx.progress, Target::Digest).await?;
            let (uploaded, mounted, present, made) = (one.uploaded, one.mounted, one.present, one.made);
            tracing::info!("{}: {uploaded} layers uploaded, {mounted} mounted, {present} already there; {made} layers read", image.platform());
            pushed.push((image.platform(), one));
        }
        let listed: Vec<(Platform, &[u8])> = pushed.iter().map(|(p, one)| (p.clone(), one.manifest.as_slice())).collect();
        let index = crate::index_bytes(&listed, keep);
        let index_digest = Digest::of(&index);
        let (target, media_type) = (manifest_target(dest), MediaType::ImageIndex.to_string());
        session.retry("uploading the index", || session.client.put_manifest(&target, &media_type, &index)).await?;
        let images = pushed
            .into_iter()
            .map(|(platform, one)| {
                let written = crate::Written {
                    reference: dest.image_name(),
                    config_digest: one.config_digest,
                    manifest_digest: Some(one.manifest_digest),
                    layers: one.layers,
                };
                (platform, written)
            })
            .collect();
        Ok(crate::WrittenIndex { reference: dest.image_name(), index_digest, images })
    })
}

/// Where an image's manifest goes: to the reference's tag, or by its own digest (an image of
/// an index, which the index's tag names).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Tag,
    Digest,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Uploaded,
    Mounted,
    Present,
}

async fn push_async<L: LayerTar>(
    session: &Session,
    image: &Image<L>,
    dest: &RegistryRef,
    compression: Compression,
    cache: &LayerCache,
    progress: &Arc<dyn Progress>,
    target: Target,
) -> Result<Pushed, RegistryError> {
    session.authenticate(Access::Push).await?;
    let here = format!("{}/{}", dest.host, dest.repository);
    let layers = image.layer_sources();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let from_previous = tokio::task::block_in_place(|| taken_from_previous(image, compression, cache, &**progress, &dest.host))?;
    let push = Push { session, here: &here, cache, progress, image, compression, made: AtomicUsize::new(0), from_previous };

    let results: Vec<(LayerBlob, Outcome)> =
        futures_util::stream::iter(layers.iter().enumerate()).map(|(i, layer)| push_layer(&push, *layer, i)).buffered(cores.max(2)).try_collect().await?;

    let diff_ids: Vec<Digest> = results.iter().map(|(l, _)| l.diff_id).collect();
    // Checked before the config and manifest go up: the tag moves only with the manifest.
    let config = image.config_checked(&diff_ids)?;
    let config_digest = Digest::of(&config);
    let blobs: Vec<LayerBlob> = results.iter().map(|(l, _)| l.clone()).collect();
    let manifest = image.manifest_checked(&config, &blobs)?;
    ensure_blob(session, &config, "the config").await?;
    let manifest_digest = Digest::of(&manifest);
    let manifest_at = match target {
        Target::Tag => manifest_target(dest),
        Target::Digest => manifest_digest.to_string(),
    };
    let media_type = MediaType::ImageManifest.to_string();
    session.retry("uploading the manifest", || session.client.put_manifest(&manifest_at, &media_type, &manifest)).await?;

    cache.remember_pushed(results.iter().map(|(layer, _)| &layer.digest), &here);
    let count = |o: Outcome| results.iter().filter(|(_, r)| *r == o).count();
    Ok(Pushed {
        config_digest,
        manifest_digest,
        uploaded: count(Outcome::Uploaded),
        mounted: count(Outcome::Mounted),
        present: count(Outcome::Present),
        made: push.made.into_inner(),
        layers: blobs,
        manifest,
    })
}

/// Makes sure one layer is in the repository: already there, mounted, or uploaded.
/// What every layer of one push shares.
struct Push<'a, L> {
    session: &'a Session,
    /// `HOST/REPOSITORY` pushed to.
    here: &'a str,
    cache: &'a LayerCache,
    progress: &'a Arc<dyn Progress>,
    image: &'a Image<L>,
    compression: Compression,
    made: AtomicUsize,
    /// Per layer, what [`taken_from_previous`] found.
    from_previous: Vec<Option<TakenBlob>>,
}

async fn push_layer<L: LayerTar>(push: &Push<'_, L>, layer: LayerSource<'_, L>, index: usize) -> Result<(LayerBlob, Outcome), RegistryError> {
    let Push { session, here, cache, progress, image, compression, .. } = *push;
    let recode = image.recode_into(&layer);
    // What names the blob before it is made; a base layer copied as it is has its digest already.
    let key = crate::cache_key(image, layer, compression);
    let known = match (layer, key) {
        (LayerSource::Base(base, j), None) => Some(base.layers[j].clone()),
        (_, key) => crate::known_blob(image, index, compression, key, cache),
    };
    let origin = match (layer, recode) {
        (LayerSource::Base(base, _), None) => base.origin.clone(),
        _ => None,
    };
    // A blob the previous release holds is looked for (and mounted from there) once, by
    // `from_previous`.
    if let (Some(previous), Some(taken)) = (&image.previous, &push.from_previous[index]) {
        return from_previous(push, &previous.release, taken, index).await;
    }
    if let Some(known) = &known {
        if let Some(outcome) = find_or_mount(session, here, cache, &known.digest, origin).await? {
            return Ok((known.clone(), outcome));
        }
    }
    if let (LayerSource::Base(base, j), None) = (layer, recode) {
        // Copied as it is: streamed from the source, verified on the way, never staged on disk
        // (a registry-to-registry copy writes each blob once, where the pull puts it).
        let blob = base.layers[j].clone();
        let body = || Ok(reqwest::Body::wrap_stream(counted(blob_stream(base.clone(), j), index, blob.size, progress)));
        session.retry(&format!("uploading layer {index}"), || session.client.upload(&blob.digest, blob.size, body)).await?;
        return Ok((blob, Outcome::Uploaded));
    }
    // Not in the registry: make the blob (compressing a built layer) in a scratch file, on
    // this worker thread, which the runtime replaces meanwhile.
    let what = format!("layer {index}");
    let layer_err = |source: crate::SinkError| RegistryError::Layer { index, source: Box::new(source) };
    let io_err = |source| layer_err(crate::SinkError::Write { path: std::env::temp_dir(), source });
    let staging = ScratchFile::temporary().map_err(io_err)?;
    push.made.fetch_add(matches!(layer, LayerSource::Built(_)) as usize, Ordering::Relaxed);
    let made = tokio::task::block_in_place(|| -> Result<LayerBlob, crate::SinkError> {
        let file = staging.reopen().map_err(|source| crate::SinkError::Write { path: staging.path().to_owned(), source })?;
        let (blob, mut out) =
            crate::write_layer_blob(image, index, compression, std::io::BufWriter::with_capacity(1 << 20, file), staging.path(), &**progress)?;
        std::io::Write::flush(&mut out).map_err(|source| crate::SinkError::Write { path: staging.path().to_owned(), source })?;
        Ok(blob)
    })
    .map_err(layer_err)?;
    if let Some((fingerprint, codec)) = key {
        cache.put(&fingerprint, codec, &CachedBlob::of(&made));
    }
    if known.is_none() {
        if let Some(outcome) = find_or_mount(session, here, cache, &made.digest, None).await? {
            return Ok((made, outcome));
        }
    }
    let body = || {
        let file = tokio::fs::File::from_std(staging.reopen()?);
        Ok(reqwest::Body::wrap_stream(counted(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20), index, made.size, progress)))
    };
    session.retry(&format!("uploading {what}"), || session.client.upload(&made.digest, made.size, body)).await?;
    Ok((made, Outcome::Uploaded))
}

/// A blob a push takes from the previous release, and its copy, if one was kept as it was
/// read to be checked.
struct TakenBlob {
    taken: crate::Taken,
    kept: Option<ScratchFile>,
}

/// The layers a push takes from the previous release rather than compressing them again
/// ([`crate::held_by_previous`]), found on all cores, biggest first. Where the previous
/// release is in another registry than `host` (no mount can bring its blobs), each blob read
/// to be checked is kept in a scratch file on the way, so that an upload does not download
/// it again.
fn taken_from_previous<L: LayerTar>(
    image: &Image<L>,
    compression: Compression,
    cache: &LayerCache,
    progress: &dyn Progress,
    host: &str,
) -> Result<Vec<Option<TakenBlob>>, RegistryError> {
    let layers = image.layer_sources();
    let Some(previous) = &image.previous else { return Ok(std::iter::repeat_with(|| None).take(layers.len()).collect()) };
    let elsewhere = previous.release.origin.as_deref().is_some_and(|origin| !origin.starts_with(&format!("{host}/")));
    let weight = |i: usize| match layers[i] {
        LayerSource::Built(recipe) => recipe.tar_len(),
        LayerSource::Base(..) => 0,
    };
    crate::for_each_biggest_first(layers.len(), weight, |i| {
        let layer_err = |source: crate::SinkError| RegistryError::Layer { index: i, source: Box::new(source) };
        let write_err = |source| layer_err(crate::SinkError::Write { path: std::env::temp_dir(), source });
        let scratch = if elsewhere { Some(ScratchFile::temporary().map_err(write_err)?) } else { None };
        let mut copy = scratch.as_ref().map(|f| std::io::BufWriter::with_capacity(1 << 20, f.as_file()));
        let keep = copy.as_mut().zip(scratch.as_ref()).map(|(w, f)| (w as &mut (dyn std::io::Write + Send), f.path()));
        let known = crate::known_blob(image, i, compression, crate::cache_key(image, layers[i], compression), cache);
        let Some(taken) = crate::held_by_previous(image, i, compression, known.as_ref(), cache, progress, keep).map_err(layer_err)? else { return Ok(None) };
        if let Some(copy) = copy.as_mut() {
            std::io::Write::flush(copy).map_err(write_err)?;
        }
        drop(copy);
        let kept = if taken.kept { scratch } else { None };
        Ok(Some(TakenBlob { taken, kept }))
    })
}

/// A built layer whose tar the previous release holds in the codec pushed (`taken`, see
/// [`crate::held_by_previous`]), taken as it is there: found in the repository, mounted from
/// the previous release's, or uploaded from the copy kept when it was checked, else copied
/// from the previous release (its digest checked on the way).
async fn from_previous<L: LayerTar>(
    push: &Push<'_, L>,
    previous: &SourceImage,
    TakenBlob { taken, kept }: &TakenBlob,
    index: usize,
) -> Result<(LayerBlob, Outcome), RegistryError> {
    let Push { session, here, cache, progress, .. } = *push;
    push.made.fetch_add(usize::from(taken.read), Ordering::Relaxed);
    let blob = taken.blob.clone();
    if let Some(outcome) = find_or_mount(session, here, cache, &blob.digest, previous.origin.clone()).await? {
        return Ok((blob, outcome));
    }
    let j = taken.index;
    let body = || match kept {
        Some(file) => {
            let file = tokio::fs::File::from_std(file.reopen()?);
            Ok(reqwest::Body::wrap_stream(counted(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20), index, blob.size, progress)))
        }
        None => Ok(reqwest::Body::wrap_stream(counted(blob_stream(previous.clone(), j), index, blob.size, progress))),
    };
    session.retry(&format!("uploading layer {index}"), || session.client.upload(&blob.digest, blob.size, body)).await?;
    Ok((blob, Outcome::Uploaded))
}

/// `Present` if the repository has the blob, `Mounted` if another repository of the same
/// registry had it (the one it was pulled from, or one strata pushed it to) and it could be
/// mounted, else `None`.
async fn find_or_mount(session: &Session, here: &str, cache: &LayerCache, digest: &Digest, origin: Option<String>) -> Result<Option<Outcome>, RegistryError> {
    if session.retry("checking a layer", || session.client.has_blob(digest)).await? {
        return Ok(Some(Outcome::Present));
    }
    let host_prefix = format!("{}/", session.host);
    let others: Vec<String> = origin.into_iter().chain(cache.pushed_to(digest)).filter(|r| r.starts_with(&host_prefix) && r.as_str() != here).collect();
    for other in others {
        // A mount that fails (no access to the other repository, the blob gone) is an upload.
        if session.client.mount(digest, &other[host_prefix.len()..]).await.unwrap_or(false) && session.client.has_blob(digest).await.unwrap_or(false) {
            return Ok(Some(Outcome::Mounted));
        }
    }
    Ok(None)
}

/// What [`pull`] reads: the config and manifest (bytes and parsed), where they were read
/// (`source`, or a mirror of it), and where blobs come from.
pub struct Pulled {
    pub config: Vec<u8>,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    pub from: RegistryRef,
    pub blobs: RegistryBlobs,
}

/// Reads a manifest (choosing this platform's from an index), its config, and its layer
/// list from a registry, or the first of its mirrors that has them; blobs are fetched later,
/// from the same place, through [`RegistryBlobs`].
pub fn pull(source: &RegistryRef, platform: &Platform, options: &RegistryOptions) -> Result<Pulled, RegistryError> {
    let (session, from, (config, manifest_bytes, manifest)) = from_first_place(source, options, async |session, place| {
        let mut bytes = fetch_manifest(session, place, &manifest_target(place), place.digest).await?;
        if is_index(&bytes) {
            let bad = |why: String| RegistryError::BadManifest { reference: place.to_string(), why };
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| bad(format!("index: {e}")))?;
            let chosen = index
                .manifests()
                .iter()
                .find(|m| m.platform().as_ref().is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| bad(format!("the index has no image for {platform}")))?;
            let chosen_digest = Digest::try_from(chosen.digest()).map_err(|e| bad(format!("index: {e}")))?;
            bytes = fetch_manifest(session, place, &chosen_digest.to_string(), Some(chosen_digest)).await?;
        }
        let bad = |why: String| RegistryError::BadManifest { reference: place.to_string(), why };
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
        let config_digest: Digest = Digest::try_from(manifest.config().digest()).map_err(|e| bad(format!("config: {e}")))?;
        let config = fetch_small_blob(session, &config_digest, manifest.config().size(), &format!("{place}: config")).await?;
        Ok((config, bytes, manifest))
    })?;
    let place = BlobPlace { repository: from.clone(), session, authenticated: true.into() };
    Ok(Pulled { config, manifest_bytes, manifest, from, blobs: RegistryBlobs { places: vec![place] } })
}

/// Runs `attempt` at each place `source` is read from (registries.conf's mirrors of it,
/// then its location) with a session authenticated to pull there, until one succeeds; that
/// session, the place, and what the attempt returned (see [`first_place_that_answers`]).
fn from_first_place<T>(
    source: &RegistryRef,
    options: &RegistryOptions,
    attempt: impl AsyncFn(&Session, &RegistryRef) -> Result<T, RegistryError>,
) -> Result<(Session, RegistryRef, T), RegistryError> {
    let places = options.pull_sources(source)?;
    let ((place, _), (session, got)) = first_place_that_answers(
        &format!("reading {source}"),
        places,
        |(place, _)| place,
        |(place, insecure)| {
            let session = Session::at(place, *insecure, options)?;
            let runtime = session.runtime.clone();
            let got = runtime.block_on(async {
                session.authenticate(Access::Pull).await?;
                attempt(&session, place).await
            })?;
            Ok((session, got))
        },
    )?;
    Ok((session, place, got))
}

/// Runs `attempt` at each of `places` in turn, the mirrors first and the registry's own place
/// last, until one succeeds: that place and what it returned. A mirror that fails is passed
/// over (the log says so, as it says which mirror served `what`, naming each by `name`); when
/// every place fails, the error is the registry's, naming what each mirror answered.
fn first_place_that_answers<P, T>(
    what: &str,
    places: impl IntoIterator<Item = P>,
    name: impl Fn(&P) -> &RegistryRef,
    mut attempt: impl FnMut(&P) -> Result<T, RegistryError>,
) -> Result<(P, T), RegistryError> {
    let mut places = places.into_iter().peekable();
    let mut mirrors_failed = Vec::new();
    while let Some(place) = places.next() {
        let mirror = places.peek().is_some();
        match attempt(&place) {
            Ok(got) => {
                if mirror {
                    tracing::info!("{what} from its mirror {}", name(&place));
                }
                return Ok((place, got));
            }
            Err(e) if mirror => {
                tracing::info!("{what} from its mirror {}: {e}; trying the next place", name(&place));
                mirrors_failed.push(format!("{}: {e}", name(&place)));
            }
            Err(e) if mirrors_failed.is_empty() => return Err(e),
            Err(e) => return Err(RegistryError::MirrorsFailed { error: Box::new(e), mirrors: mirrors_failed }),
        }
    }
    unreachable!("a source has at least its registry's own place")
}

/// Manifests and indexes strata reads.
const ACCEPTED: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The manifest or index `target` (a tag or digest of `source`'s repository) names, checked
/// against the digest that named it (`expected`: the reference's, or an index entry's) and
/// the one the registry says it has.
async fn fetch_manifest(session: &Session, source: &RegistryRef, target: &str, expected: Option<Digest>) -> Result<Vec<u8>, RegistryError> {
    let (bytes, said) = session.retry("reading the manifest", || session.get_manifest(target)).await?;
    let actual = Digest::of(&bytes);
    if let Some(expected) = expected.filter(|e| *e != actual) {
        return Err(RegistryError::DigestMismatch { what: format!("{source}: manifest"), expected, actual });
    }
    if let Some(said) = said.filter(|said| *said != actual.to_string()) {
        return Err(RegistryError::DigestMismatch { what: format!("{source}: manifest"), expected: said.parse().unwrap_or(actual), actual });
    }
    Ok(bytes)
}

fn is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).ok().is_some_and(|v| v.get("manifests").is_some())
}

/// Runs `then` with a session for `reference`'s registry, authenticated to pull, and the
/// manifest or index `reference` names (checked as [`pull`] checks it). Never at a mirror:
/// what signs, attaches to or lists the referrers of an image must see the registry's own.
fn with_top_manifest<T>(
    reference: &RegistryRef,
    options: &RegistryOptions,
    then: impl AsyncFnOnce(&Session, Vec<u8>) -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let session = Session::for_reading(reference, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async {
        session.authenticate(Access::Pull).await?;
        let bytes = fetch_manifest(&session, reference, &manifest_target(reference), reference.digest).await?;
        then(&session, bytes).await
    })
}

/// The image index `source` names, if it names one (read where [`pull`] would read it).
pub(crate) fn index_of(source: &RegistryRef, options: &RegistryOptions) -> Result<Option<Vec<u8>>, RegistryError> {
    let (_, _, bytes) = from_first_place(source, options, async |session, place| fetch_manifest(session, place, &manifest_target(place), place.digest).await)?;
    Ok(is_index(&bytes).then_some(bytes))
}

/// Fetches blobs of one repository, or of its mirrors.
pub struct RegistryBlobs {
    /// Where a blob is asked for, in order, until one sends it.
    places: Vec<BlobPlace>,
}

struct BlobPlace {
    repository: RegistryRef,
    session: Session,
    /// Whether the session is authenticated to pull (it is authenticated on first use).
    authenticated: std::sync::atomic::AtomicBool,
}

impl RegistryBlobs {
    /// The blobs of `source`'s repository, read without its manifest or config, from the
    /// first place registries.conf names that has each (a blob is named by its digest, so any
    /// mirror may serve it): for a blob whose digest and size are known already (each
    /// fixed-output derivation of `pullImageFromManifest` fetches one).
    pub fn of(source: &RegistryRef, options: &RegistryOptions) -> Result<RegistryBlobs, RegistryError> {
        let places = options.pull_sources(source)?.into_iter().map(|(repository, insecure)| {
            let session = Session::at(&repository, insecure, options)?;
            Ok(BlobPlace { repository, session, authenticated: false.into() })
        });
        Ok(RegistryBlobs { places: places.collect::<Result<_, RegistryError>>()? })
    }

    /// Downloads blob `digest` into an anonymous temporary file and returns it, rewound.
    /// The caller checks the digest while reading.
    /// Never more than `size` bytes are written: a registry that sends more is stopped.
    pub fn fetch(&self, digest: &Digest, size: u64) -> Result<std::fs::File, RegistryError> {
        let places = self.places.iter();
        first_place_that_answers(&format!("downloading {digest}"), places, |place| &place.repository, |place| place.fetch(digest, size)).map(|(_, file)| file)
    }
}

impl BlobPlace {
    fn fetch(&self, digest: &Digest, size: u64) -> Result<std::fs::File, RegistryError> {
        let session = &self.session;
        session.runtime.block_on(async {
            if !self.authenticated.load(Ordering::Relaxed) {
                session.authenticate(Access::Pull).await?;
                self.authenticated.store(true, Ordering::Relaxed);
            }
            session
                .retry(&format!("downloading {digest}"), || async {
                    let mut response = session.client.get_blob(digest).await?;
                    let mut file = tempfile::tempfile()?;
                    let mut left = size;
                    while let Some(chunk) = response.chunk().await? {
                        left = left.checked_sub(chunk.len() as u64).ok_or_else(|| more_than_declared(digest, size))?;
                        std::io::Write::write_all(&mut file, &chunk)?;
                    }
                    std::io::Seek::rewind(&mut file)?;
                    Ok(file)
                })
                .await
        })
    }
}

pub(crate) fn open_registry(reference: &RegistryRef, platform: &Platform, options: &RegistryOptions) -> Result<SourceImage, SourceError> {
    let Pulled { config: config_bytes, manifest_bytes, manifest, from, blobs } = crate::registry::pull(reference, platform, options)?;
    let path = PathBuf::from(from.to_string());
    let config: ImageConfiguration = parse_json(&config_bytes, &path, "config")?;
    let layers = layers_of(&manifest, &config, &path)?;
    // Where the blobs are (a mirror, perhaps), for a push to that registry to mount them.
    let origin = format!("{}/{}", from.host, from.repository);
    Ok(SourceImage {
        config_bytes,
        config,
        manifest_bytes: Some(manifest_bytes),
        layers,
        reference: Some(reference.image_name()),
        origin: Some(origin.clone()),
        blobs: Arc::new(BlobStore::Registry(blobs, origin)),
    })
}

/// `stream`, reported to `progress` as layer `index`'s upload of `size` bytes (from the
/// start again when a failed upload is retried).
fn counted<S>(
    stream: S,
    index: usize,
    size: u64,
    progress: &Arc<dyn Progress>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    progress.start(index, Stage::Uploading, size);
    let progress = progress.clone();
    let mut sent = 0;
    stream.inspect_ok(move |chunk| {
        progress.advance(index, chunk.len() as u64);
        sent += chunk.len() as u64;
        if sent >= size {
            progress.finish(index);
        }
    })
}

/// Layer `index` of `base` as a stream of chunks, read (and verified: a corrupt blob ends
/// the stream with an error) on a blocking thread.
fn blob_stream(base: SourceImage, index: usize) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = match base.open_layer(index) {
            Ok(reader) => reader,
            Err(e) => return drop(tx.blocking_send(Err(e))),
        };
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            match std::io::Read::read(&mut reader, &mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.blocking_send(Ok(chunk.into())).is_err() {
                        return; // the upload stopped
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return drop(tx.blocking_send(Err(e))),
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// A blob that came longer than its descriptor said.
fn more_than_declared(digest: &Digest, size: u64) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("the registry sent more of {digest} than its {size} bytes"))
}

/// The small blob `digest` (a config, a payload) of `reference`'s repository, whole: read up
/// to its declared size (at most [`MAX_METADATA_SIZE`]) and checked against its
/// digest; `what` names it in errors.
async fn fetch_small_blob(session: &Session, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    let limit = size.min(MAX_METADATA_SIZE);
    let bytes = session
        .retry(&format!("reading {what}"), || async {
            client::read_bounded(session.client.get_blob(digest).await?, limit, "the size its descriptor gives (4 MiB at most)").await
        })
        .await?;
    if Digest::of(&bytes) != *digest {
        return Err(RegistryError::DigestMismatch { what: what.to_owned(), expected: *digest, actual: Digest::of(&bytes) });
    }
    Ok(bytes)
}

/// Makes sure the small blob `bytes` is in `reference`'s repository (pushed unless it is).
async fn ensure_blob(session: &Session, bytes: &[u8], what: &str) -> Result<(), RegistryError> {
    let digest = Digest::of(bytes);
    if !session.retry(&format!("checking {what}"), || session.client.has_blob(&digest)).await? {
        let body = || Ok(reqwest::Body::from(bytes.to_vec()));
        session.retry(&format!("uploading {what}"), || session.client.upload(&digest, bytes.len() as u64, body)).await?;
    }
    Ok(())
}

/// The tag cosign stores an image's signatures at: `sha256-<manifest hex>.sig`.
fn signature_tag(digest: &Digest) -> String {
    format!("{}.sig", referrers_tag(digest))
}

/// The tag of the referrers tag schema's index for the manifest `digest`: `sha256-<hex>`.
fn referrers_tag(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// One signature as cosign stores it: the simple-signing payload and its signature (base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSignature {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// The signatures stored for the manifest `digest` in `repository` (cosign's tag), each
/// payload read and checked against its digest; none if the tag is not there.
pub fn signatures(repository: &RegistryRef, digest: &Digest, options: &RegistryOptions) -> Result<Vec<StoredSignature>, RegistryError> {
    let session = Session::for_reading(repository, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async { stored_signatures(&session, repository, digest).await })
}

async fn stored_signatures(session: &Session, repository: &RegistryRef, digest: &Digest) -> Result<Vec<StoredSignature>, RegistryError> {
    session.authenticate(Access::Pull).await?;
    let bytes = match session.get_manifest(&signature_tag(digest)).await {
        Ok((bytes, _)) => bytes,
        Err(e) if not_found(&e) => return Ok(vec![]),
        Err(e) => return Err(session.error("reading the signatures", &e)),
    };
    let bad = |why: String| RegistryError::BadManifest { reference: format!("{repository}:{}", signature_tag(digest)), why };
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut found = Vec::new();
    for layer in manifest.layers() {
        let Some(signature) = layer.annotations().as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)).cloned() else { continue };
        let layer_digest = Digest::try_from(layer.digest()).map_err(|e| bad(e.to_string()))?;
        let payload = fetch_small_blob(session, &layer_digest, layer.size(), "a signature's payload").await?;
        found.push(StoredSignature { payload, signature });
    }
    Ok(found)
}

/// The annotation cosign puts a layer's signature in.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of a signature manifest's layers: the simple-signing payloads.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// Stores `signature` for the manifest `digest` in `repository` as cosign does: the payload
/// a layer of the manifest at tag `sha256-<hex>.sig` (added to the signatures already there,
/// if any), the signature its annotation.
pub fn push_signature(repository: &RegistryRef, digest: &Digest, signature: StoredSignature, options: &RegistryOptions) -> Result<(), RegistryError> {
    let session = Session::new(repository, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async {
        session.authenticate(Access::Push).await?;
        let mut all = stored_signatures(&session, repository, digest).await?;
        if !all.contains(&signature) {
            all.push(signature);
        }
        let mut layers = Vec::new();
        for s in &all {
            let payload_digest = Digest::of(&s.payload);
            ensure_blob(&session, &s.payload, "a signature's payload").await?;
            let mut layer = oci_spec::image::Descriptor::new(
                MediaType::Other(PAYLOAD_MEDIA_TYPE.into()),
                s.payload.len() as u64,
                oci_spec::image::Digest::from(payload_digest),
            );
            layer.set_annotations(Some([(SIGNATURE_ANNOTATION.to_owned(), s.signature.clone())].into()));
            layers.push(layer);
        }
        // cosign's config for a signature manifest: the payloads as its layers' diff IDs.
        let diff_ids: Vec<String> = all.iter().map(|s| Digest::of(&s.payload).to_string()).collect();
        let config = strata_oci::canonical::canonical_json(&serde_json::json!({
            "architecture": "", "config": {}, "created": "0001-01-01T00:00:00Z",
            "history": [{ "created": "0001-01-01T00:00:00Z" }], "os": "",
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }));
        let config_digest = Digest::of(&config);
        ensure_blob(&session, &config, "the signature's config").await?;
        let manifest = oci_spec::image::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(oci_spec::image::Descriptor::new(MediaType::ImageConfig, config.len() as u64, oci_spec::image::Digest::from(config_digest)))
            .layers(layers)
            .build()
            .expect("every required manifest field is set");
        let (body, tag, media_type) = (strata_oci::canonical::canonical_json(&manifest), signature_tag(digest), MediaType::ImageManifest.to_string());
        session.retry("uploading the signature", || session.client.put_manifest(&tag, &media_type, &body)).await?;
        Ok(())
    })
}

/// The digest and size of the manifest (or index) `reference` names.
pub fn manifest_of(reference: &RegistryRef, options: &RegistryOptions) -> Result<(Digest, u64), RegistryError> {
    with_top_manifest(reference, options, async |_, bytes| Ok((Digest::of(&bytes), bytes.len() as u64)))
}

/// An artifact attached to an image (OCI 1.1): its manifest's digest and size, and type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Referrer {
    pub digest: Digest,
    pub size: u64,
    pub artifact_type: Option<String>,
}

/// The empty config of artifacts (`application/vnd.oci.empty.v1+json`).
const EMPTY_CONFIG: &[u8] = b"{}";

/// Attaches `content` (of media type `artifact_type`) to the manifest `subject` (its digest
/// and size) in `repository`, as an OCI 1.1 artifact whose `subject` is the image: its
/// manifest pushed by digest, which a registry with the referrers API indexes; where the
/// registry has none (its referrers answer does not list the artifact), the referrers tag
/// schema: the index at tag `sha256-<subject hex>` gains the artifact.
pub fn attach(
    repository: &RegistryRef,
    subject: (&Digest, u64),
    artifact_type: &str,
    content: Vec<u8>,
    options: &RegistryOptions,
) -> Result<Referrer, RegistryError> {
    let session = Session::new(repository, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async {
        let (subject_digest, subject_size) = subject;
        let tag = referrers_tag(subject_digest);
        session.authenticate(Access::Push).await?;
        let descriptor = |media_type: MediaType, bytes: &[u8]| {
            oci_spec::image::Descriptor::new(media_type, bytes.len() as u64, oci_spec::image::Digest::from(Digest::of(bytes)))
        };
        for blob in [EMPTY_CONFIG, content.as_slice()] {
            ensure_blob(&session, blob, "an artifact's blob").await?;
        }
        let subject_descriptor = oci_spec::image::Descriptor::new(MediaType::ImageManifest, subject_size, oci_spec::image::Digest::from(*subject_digest));
        let mut manifest = oci_spec::image::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::EmptyJSON, EMPTY_CONFIG))
            .layers(vec![descriptor(MediaType::Other(artifact_type.to_owned()), &content)])
            .build()
            .expect("every required manifest field is set");
        manifest.set_artifact_type(Some(MediaType::Other(artifact_type.to_owned())));
        manifest.set_subject(Some(subject_descriptor));
        let bytes = strata_oci::canonical::canonical_json(&manifest);
        let digest = Digest::of(&bytes);
        let (by_digest, media_type) = (digest.to_string(), MediaType::ImageManifest.to_string());
        session.retry("uploading the artifact", || session.client.put_manifest(&by_digest, &media_type, &bytes)).await?;
        let referrer = Referrer { digest, size: bytes.len() as u64, artifact_type: Some(artifact_type.to_owned()) };
        let listed = referrers_of(&session, repository, subject_digest).await?;
        if listed.iter().any(|r| r.digest == digest) {
            return Ok(referrer);
        }
        // The referrers tag schema: the index at the subject's tag, with the artifact added.
        let mut entries: Vec<oci_spec::image::Descriptor> = match session.get_manifest(&tag).await {
            Ok((bytes, _)) => serde_json::from_slice::<ImageIndex>(&bytes).map(|i| i.manifests().clone()).unwrap_or_default(),
            Err(e) if not_found(&e) => vec![],
            Err(e) => return Err(session.error("reading the referrers index", &e)),
        };
        let mut entry = oci_spec::image::Descriptor::new(MediaType::ImageManifest, referrer.size, oci_spec::image::Digest::from(digest));
        entry.set_artifact_type(Some(MediaType::Other(artifact_type.to_owned())));
        entries.push(entry);
        let index =
            oci_spec::image::ImageIndexBuilder::default().schema_version(2u32).media_type(MediaType::ImageIndex).manifests(entries).build().expect("an index");
        let (body, media_type) = (strata_oci::canonical::canonical_json(&index), MediaType::ImageIndex.to_string());
        session.retry("uploading the referrers index", || session.client.put_manifest(&tag, &media_type, &body)).await?;
        Ok(referrer)
    })
}

/// What is attached to the manifest `digest` in `repository`: the registry's referrers API,
/// else (where it answers 404) the referrers tag schema's index, else nothing.
async fn referrers_of(session: &Session, repository: &RegistryRef, digest: &Digest) -> Result<Vec<Referrer>, RegistryError> {
    let (tagged, api) = (referrers_tag(digest), format!("referrers/{digest}"));
    let listed = session
        .retry("reading the referrers", || async {
            match session.client.get_bounded(&api, MediaType::ImageIndex.as_ref(), MAX_METADATA_SIZE, "the most a manifest may have").await {
                Err(e) if not_found(&e) => match session.get_manifest(&tagged).await {
                    Err(e) if not_found(&e) => Ok(None),
                    other => other.map(|(bytes, _)| Some(bytes)),
                },
                other => other.map(|(bytes, _)| Some(bytes)),
            }
        })
        .await?;
    let Some(bytes) = listed else { return Ok(vec![]) };
    let bad = |why: String| RegistryError::BadManifest { reference: format!("{repository}: referrers of {digest}"), why };
    let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    index
        .manifests()
        .iter()
        .map(|m| {
            let digest = Digest::try_from(m.digest()).map_err(|e| bad(e.to_string()))?;
            Ok(Referrer { digest, size: m.size(), artifact_type: m.artifact_type().as_ref().map(ToString::to_string) })
        })
        .collect()
}

/// What is attached to the image `reference` names.
pub fn referrers(reference: &RegistryRef, options: &RegistryOptions) -> Result<(Digest, Vec<Referrer>), RegistryError> {
    with_top_manifest(reference, options, async |session, bytes| {
        let digest = Digest::of(&bytes);
        Ok((digest, referrers_of(session, reference, &digest).await?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry (a thread) that answers `/v2/` and serves one index at every tag, but
    /// stays silent on the first `silent` requests for it; returns its host and how many
    /// requests for the index it had.
    fn registry_silent_at_first(silent: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let (mut request, mut line) = (String::new(), String::new());
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                            request.push_str(&line);
                            line.clear();
                        }
                        let body: &[u8] = if request.starts_with("GET /v2/ ") {
                            b""
                        } else if request.contains("/manifests/") {
                            if counter.fetch_add(1, Ordering::SeqCst) < silent {
                                std::thread::sleep(Duration::from_secs(30));
                                return;
                            }
                            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
                        } else {
                            return;
                        };
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nContent-Length: {}\r\n\r\n", body.len());
                        if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (host, asked)
    }

    /// A registry that stays silent is given up after the read timeout and asked again; one
    /// that stays silent every time fails with the timeout told, rather than hanging.
    #[test]
    fn a_silent_registry_is_given_up_and_asked_again() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = RegistryOptions { read_timeout: Duration::from_millis(300), ..RegistryOptions::new(None, Some(false)) };
        let (host, asked) = registry_silent_at_first(1);
        let reference = RegistryRef::parse(&format!("{host}/silent:v1")).unwrap();
        let (digest, _) = manifest_of(&reference, &options).unwrap();
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2, "asked again after the silence");
        assert!(digest.to_string().starts_with("sha256:"));

        let (host, asked) = registry_silent_at_first(usize::MAX);
        let reference = RegistryRef::parse(&format!("{host}/silent:v1")).unwrap();
        let error = manifest_of(&reference, &options).unwrap_err().to_string();
        assert!(error.contains("timed out") && error.contains(&host), "{error}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), ATTEMPTS as usize);
    }

    #[test]
    fn errors_are_told_without_the_queries_of_their_urls() {
        let upload = HttpError::Protocol { url: "http://r/v2/x/blobs/uploads/u?_state=s3cret&digest=sha256:1".into(), why: "no location".into() };
        assert_eq!(describe(&upload), "http://r/v2/x/blobs/uploads/u: no location");
        let sending = HttpError::Io(std::io::Error::other("error sending request for url (https://r/b?X-Amz-Signature=s3cret): connection closed"));
        assert_eq!(describe(&sending), "error sending request for url (https://r/b): connection closed");
    }
}
