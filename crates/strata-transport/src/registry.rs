//! Registries: `docker://HOST/REPO[:TAG|@DIGEST]` over the OCI distribution API, through the
//! `oci-client` crate, with what it lacks added here: retries with backoff, credentials
//! from the usual files, a memory of layer digests, and bounds on what a registry sends
//! (manifests, indexes and referrers lists are read here, to at most 4 MiB; blobs to their
//! declared size). Still read whole by oci-client: the token endpoint's answer and the body
//! of an error, which a hostile registry could make endless; bounding them means taking
//! over its authentication, which no registry here (htpasswd, basic auth) could test.
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
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
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

/// How many times a request is tried before giving up, and the first pause between tries.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
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
    #[error(transparent)]
    NotAsRecorded(#[from] strata_oci::image::NotAsRecorded),
}

/// oci-client's reference for `r`.
fn client_ref(r: &RegistryRef) -> Reference {
    match (&r.digest, &r.tag) {
        (Some(d), _) => Reference::with_digest(r.host.clone(), r.repository.clone(), d.to_string()),
        (None, tag) => Reference::with_tag(r.host.clone(), r.repository.clone(), tag.clone().unwrap_or_else(|| "latest".into())),
    }
}

/// How to talk to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Given on the command line; else looked up per registry.
    pub creds: Option<Credentials>,
    /// `false`: plain HTTP, or HTTPS without certificate checks.
    pub tls_verify: bool,
    /// The one tokio runtime behind every synchronous call made with these options, made on
    /// first use (no registry, no runtime).
    runtime: std::sync::OnceLock<Arc<tokio::runtime::Runtime>>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions::new(None, true)
    }
}

impl RegistryOptions {
    /// Options for every registry a command talks to. TLS goes through rustls with the
    /// process's default crypto provider, which the program installs (a library does not).
    pub fn new(creds: Option<Credentials>, tls_verify: bool) -> RegistryOptions {
        RegistryOptions { creds, tls_verify, runtime: std::sync::OnceLock::new() }
    }

    fn runtime(&self) -> Result<Arc<tokio::runtime::Runtime>, RegistryError> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime.clone());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(RegistryError::Runtime)?;
        Ok(self.runtime.get_or_init(|| Arc::new(runtime)).clone())
    }
}

/// A connection to one registry.
struct Session {
    client: Client,
    /// For the reads strata bounds itself ([`Session::get_bounded`]), with `client`'s settings.
    http: reqwest::Client,
    protocol: ClientProtocol,
    /// The bearer token of the last authentication, if the registry gave one.
    token: std::sync::Mutex<Option<String>>,
    auth: RegistryAuth,
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
        let host = repository.host.as_str();
        let creds = match &options.creds {
            Some(c) => Some(c.clone()),
            None => crate::credentials::stored(host, &repository.repository)?,
        };
        let protocol = if options.tls_verify { ClientProtocol::Https } else { ClientProtocol::HttpsExcept(vec![host.to_owned()]) };
        let config =
            ClientConfig { protocol: protocol.clone(), accept_invalid_certificates: !options.tls_verify, use_monolithic_push: true, ..ClientConfig::default() };
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(!options.tls_verify)
            .user_agent(config.user_agent)
            .build()
            .map_err(|e| RegistryError::Request { host: host.to_owned(), what: "starting an HTTP client".into(), message: e.to_string() })?;
        let runtime = options.runtime()?;
        Ok(Session {
            client: Client::new(config),
            http,
            protocol,
            token: std::sync::Mutex::new(None),
            auth: creds.as_ref().map_or(RegistryAuth::Anonymous, |c| RegistryAuth::Basic(c.user.clone(), c.password.clone())),
            user: creds.map(|c| c.user),
            host: host.to_owned(),
            runtime,
            answered: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs `op` with retries on dropped connections and 5xx answers; maps the final error.
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut pause = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let result = op().await;
            let answered = self.answered.load(std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(v) => {
                    self.answered.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if plain_http(&e) => return Err(RegistryError::PlainHttp { host: self.host.clone() }),
                Err(e) if !answered && refused(&e) => return Err(RegistryError::Refused { host: self.host.clone() }),
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    tracing::warn!("{what} at {}: {}; trying again in {pause:?}", self.host, describe(&e));
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(self.error(what, &e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn error(&self, what: &str, e: &OciDistributionError) -> RegistryError {
        if is_unauthorized(e) {
            return RegistryError::Unauthorized { host: self.host.clone(), user: self.user.clone() };
        }
        RegistryError::Request { host: self.host.clone(), what: what.to_owned(), message: describe(e) }
    }

    /// The bearer token of the last authentication (a panic while it was held leaves it whole).
    fn token(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn authenticate(&self, reference: &Reference, operation: RegistryOperation) -> Result<(), RegistryError> {
        let token = self.retry("authenticating", || self.client.auth(reference, &self.auth, operation)).await?;
        *self.token() = token;
        Ok(())
    }

    /// The manifest or index `reference` names, and the digest the registry says it has.
    async fn get_manifest(&self, reference: &Reference) -> Result<(bytes::Bytes, Option<String>), OciDistributionError> {
        let target = reference.digest().or(reference.tag()).unwrap_or("latest");
        self.get_bounded(reference, &format!("manifests/{target}"), &ACCEPTED.join(", ")).await
    }

    /// GET of `path` in `reference`'s repository (`manifests/…`, `referrers/…`), read to at
    /// most [`MAX_METADATA_SIZE`] (what every manifest and index read is bounded by), with the
    /// digest the registry says the body has. Written here rather than left to oci-client,
    /// whose `pull_manifest_raw` and `pull_referrers` buffer whatever body comes: a hostile
    /// registry could fill the memory. Authenticated as oci-client's requests are: the token
    /// of the last authentication, else the user's credentials, sent only to the registry
    /// itself.
    async fn get_bounded(&self, reference: &Reference, path: &str, accept: &str) -> Result<(bytes::Bytes, Option<String>), OciDistributionError> {
        let registry = reference.resolve_registry();
        let scheme = match &self.protocol {
            ClientProtocol::HttpsExcept(plain) if plain.iter().any(|h| h == registry) => "http",
            ClientProtocol::Http => "http",
            _ => "https",
        };
        let url = format!("{scheme}://{registry}/v2/{}/{path}", reference.repository());
        let send = || {
            let request = self.http.get(&url).header(http::header::ACCEPT, accept);
            match (self.token().clone(), &self.auth) {
                (Some(token), _) => request.bearer_auth(token),
                (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
                (None, _) => request,
            }
            .send()
        };
        let mut response = send().await?;
        let had_token = self.token().is_some();
        if response.status() == http::StatusCode::UNAUTHORIZED && had_token {
            // The token has expired (a long push before): another, once.
            let token = self.client.auth(reference, &self.auth, RegistryOperation::Pull).await?;
            *self.token() = token;
            response = send().await?;
        }
        let status = response.status();
        if !status.is_success() {
            return Err(match status.as_u16() {
                401 => OciDistributionError::UnauthorizedError { url },
                404 => OciDistributionError::ImageManifestNotFoundError(url),
                code => OciDistributionError::ServerError { code, url, message: status.to_string() },
            });
        }
        let said = response.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if (body.len() + chunk.len()) as u64 > MAX_METADATA_SIZE {
                let why = format!("{url} sends more than {} MiB, the most a manifest may have", MAX_METADATA_SIZE >> 20);
                return Err(OciDistributionError::IoError(std::io::Error::new(std::io::ErrorKind::FileTooLarge, why)));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body.into(), said))
    }
}

fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_connect() || r.is_timeout() || r.is_request() || r.is_body() || r.status().is_some_and(|s| s.is_server_error())
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500,
        // Sent more than the blob's size: the same would come again.
        OciDistributionError::IoError(e) => e.kind() != std::io::ErrorKind::FileTooLarge,
        _ => false,
    }
}

fn is_unauthorized(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401,
        OciDistributionError::RequestError(r) => r.status().is_some_and(|s| s.as_u16() == 401),
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| e.code == oci_client::errors::OciErrorCode::Unauthorized),
        _ => false,
    }
}

/// The error's message with every cause, each once, and the URL's query (upload state
/// tokens) left out.
fn describe(e: &OciDistributionError) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ").split('?').next().unwrap_or_default().to_owned()
}

/// The innermost cause of `e`.
fn root_cause(e: &OciDistributionError) -> String {
    let mut err: &dyn std::error::Error = e;
    while let Some(source) = err.source() {
        err = source;
    }
    err.to_string()
}

/// A TLS handshake answered in plain HTTP (rustls sees a record that is not TLS).
fn plain_http(e: &OciDistributionError) -> bool {
    let cause = root_cause(e);
    cause.contains("InvalidContentType") || cause.contains("corrupt message")
}

fn refused(e: &OciDistributionError) -> bool {
    root_cause(e).contains("Connection refused")
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
        let reference = client_ref(dest);
        let body = bytes::Bytes::from(index);
        let content_type = reqwest_header(MediaType::ImageIndex.to_string());
        session.retry("uploading the index", || session.client.push_manifest_raw(&reference, body.clone(), content_type.clone())).await?;
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
    let reference = client_ref(dest);
    session.authenticate(&reference, RegistryOperation::Push).await?;
    let here = format!("{}/{}", dest.host, dest.repository);
    let layers = image.layer_sources();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let push = Push { session, reference: &reference, here: &here, cache, progress, image, compression, made: AtomicUsize::new(0) };

    let results: Vec<(LayerBlob, Outcome)> =
        futures_util::stream::iter(layers.iter().enumerate()).map(|(i, layer)| push_layer(&push, *layer, i)).buffered(cores.max(2)).try_collect().await?;

    let diff_ids: Vec<Digest> = results.iter().map(|(l, _)| l.diff_id).collect();
    // Checked before the config and manifest go up: the tag moves only with the manifest.
    let config = image.config_checked(&diff_ids)?;
    let config_digest = Digest::of(&config);
    let blobs: Vec<LayerBlob> = results.iter().map(|(l, _)| l.clone()).collect();
    let manifest = image.manifest_checked(&config, &blobs)?;
    ensure_blob(session, &reference, &config, "the config").await?;
    let manifest_digest = Digest::of(&manifest);
    let body = bytes::Bytes::from(manifest.clone());
    let content_type = reqwest_header(MediaType::ImageManifest.to_string());
    let manifest_ref = match target {
        Target::Tag => reference.clone(),
        Target::Digest => Reference::with_digest(dest.host.clone(), dest.repository.clone(), manifest_digest.to_string()),
    };
    session.retry("uploading the manifest", || session.client.push_manifest_raw(&manifest_ref, body.clone(), content_type.clone())).await?;

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

fn reqwest_header(value: String) -> http::HeaderValue {
    http::HeaderValue::from_str(&value).expect("media types are valid header values")
}

/// Makes sure one layer is in the repository: already there, mounted, or uploaded.
/// What every layer of one push shares.
struct Push<'a, L> {
    session: &'a Session,
    reference: &'a Reference,
    /// `HOST/REPOSITORY` pushed to.
    here: &'a str,
    cache: &'a LayerCache,
    progress: &'a Arc<dyn Progress>,
    image: &'a Image<L>,
    compression: Compression,
    made: AtomicUsize,
}

async fn push_layer<L: LayerTar>(push: &Push<'_, L>, layer: LayerSource<'_, L>, index: usize) -> Result<(LayerBlob, Outcome), RegistryError> {
    let Push { session, reference, here, cache, progress, image, compression, .. } = *push;
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
    if let Some(known) = &known {
        if let Some(outcome) = find_or_mount(session, reference, here, cache, &known.digest, origin).await? {
            return Ok((known.clone(), outcome));
        }
    }
    if let (LayerSource::Base(base, j), None) = (layer, recode) {
        // Copied as it is: streamed from the source, verified on the way, never staged on disk
        // (a registry-to-registry copy writes each blob once, where the pull puts it).
        let blob = base.layers[j].clone();
        let digest = blob.digest.to_string();
        session
            .retry(&format!("uploading layer {index}"), || async {
                let stream = counted(blob_stream(base.clone(), j), index, blob.size, progress);
                session.client.push_blob_stream(reference, stream, &digest, Some(blob.size)).await
            })
            .await?;
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
        if let Some(outcome) = find_or_mount(session, reference, here, cache, &made.digest, None).await? {
            return Ok((made, outcome));
        }
    }
    let path = staging.path().to_owned();
    let digest = made.digest.to_string();
    session
        .retry(&format!("uploading {what}"), || async {
            let file = tokio::fs::File::open(&path).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map_err(OciDistributionError::IoError);
            session.client.push_blob_stream(reference, counted(stream, index, made.size, progress), &digest, Some(made.size)).await
        })
        .await?;
    Ok((made, Outcome::Uploaded))
}

/// `Present` if the repository has the blob, `Mounted` if another repository of the same
/// registry had it (the one it was pulled from, or one strata pushed it to) and it could be
/// mounted, else `None`.
async fn find_or_mount(
    session: &Session,
    reference: &Reference,
    here: &str,
    cache: &LayerCache,
    digest: &Digest,
    origin: Option<String>,
) -> Result<Option<Outcome>, RegistryError> {
    let d = digest.to_string();
    if session.retry("checking a layer", || session.client.blob_exists(reference, &d)).await? {
        return Ok(Some(Outcome::Present));
    }
    let host_prefix = format!("{}/", session.host);
    let others: Vec<String> = origin.into_iter().chain(cache.pushed_to(digest)).filter(|r| r.starts_with(&host_prefix) && r.as_str() != here).collect();
    for other in others {
        let from = Reference::with_tag(session.host.clone(), other[host_prefix.len()..].to_owned(), "latest".to_owned());
        let from_pull = session.client.auth(&from, &session.auth, RegistryOperation::Pull).await;
        if from_pull.is_ok()
            && session.client.mount_blob(reference, &from, &d).await.is_ok()
            && session.client.blob_exists(reference, &d).await.unwrap_or(false)
        {
            return Ok(Some(Outcome::Mounted));
        }
    }
    Ok(None)
}

/// What [`pull`] reads: the config and manifest (bytes and parsed), and where blobs come from.
pub struct Pulled {
    pub config: Vec<u8>,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    pub blobs: RegistryBlobs,
}

/// Reads a manifest (choosing this platform's from an index), its config, and its layer
/// list from a registry; blobs are fetched later through [`RegistryBlobs`].
pub fn pull(source: &RegistryRef, platform: &Platform, options: &RegistryOptions) -> Result<Pulled, RegistryError> {
    let (session, mut reference) = pull_session(source, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async {
        let mut bytes = fetch_manifest(&session, source, &reference, source.digest).await?;
        if is_index(&bytes) {
            let bad = |why: String| RegistryError::BadManifest { reference: source.to_string(), why };
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| bad(format!("index: {e}")))?;
            let chosen = index
                .manifests()
                .iter()
                .find(|m| m.platform().as_ref().is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| bad(format!("the index has no image for {platform}")))?;
            let chosen_digest = Digest::try_from(chosen.digest()).map_err(|e| bad(format!("index: {e}")))?;
            reference = Reference::with_digest(source.host.clone(), source.repository.clone(), chosen_digest.to_string());
            bytes = fetch_manifest(&session, source, &reference, Some(chosen_digest)).await?;
        }
        let bad = |why: String| RegistryError::BadManifest { reference: source.to_string(), why };
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
        let config_digest: Digest = Digest::try_from(manifest.config().digest()).map_err(|e| bad(format!("config: {e}")))?;
        let config = fetch_small_blob(&session, &reference, &config_digest, manifest.config().size(), &format!("{source}: config")).await?;
        Ok(Pulled { config, manifest_bytes: bytes.to_vec(), manifest, blobs: RegistryBlobs { session: Arc::new(session), reference: reference.clone() } })
    })
}

/// Manifests and indexes strata reads.
const ACCEPTED: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The manifest or index `reference` names, checked against the digest that named it
/// (`expected`: the reference's, or an index entry's) and the one the registry says it has.
async fn fetch_manifest(session: &Session, source: &RegistryRef, reference: &Reference, expected: Option<Digest>) -> Result<bytes::Bytes, RegistryError> {
    let (bytes, said) = session.retry("reading the manifest", || session.get_manifest(reference)).await?;
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
/// manifest or index `reference` names (checked as [`pull`] checks it).
fn with_top_manifest<T>(
    reference: &RegistryRef,
    options: &RegistryOptions,
    then: impl AsyncFnOnce(&Session, bytes::Bytes) -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let (session, client_reference) = pull_session(reference, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async {
        let bytes = fetch_manifest(&session, reference, &client_reference, reference.digest).await?;
        then(&session, bytes).await
    })
}

/// A session with `source`'s registry, authenticated to pull from its repository, and the
/// reference that names it there.
fn pull_session(source: &RegistryRef, options: &RegistryOptions) -> Result<(Session, Reference), RegistryError> {
    let session = Session::new(source, options)?;
    let reference = client_ref(source);
    session.runtime.clone().block_on(session.authenticate(&reference, RegistryOperation::Pull))?;
    Ok((session, reference))
}

/// The image index `source` names, if it names one.
pub(crate) fn index_of(source: &RegistryRef, options: &RegistryOptions) -> Result<Option<Vec<u8>>, RegistryError> {
    with_top_manifest(source, options, async |_, bytes| Ok(is_index(&bytes).then(|| bytes.to_vec())))
}

/// Fetches blobs of one repository.
pub struct RegistryBlobs {
    session: Arc<Session>,
    reference: Reference,
}

impl RegistryBlobs {
    /// The blobs of `source`'s repository, read without its manifest or config: for a blob
    /// whose digest and size are known already (each fixed-output derivation of
    /// `pullImageFromManifest` fetches one).
    pub fn of(source: &RegistryRef, options: &RegistryOptions) -> Result<RegistryBlobs, RegistryError> {
        let (session, reference) = pull_session(source, options)?;
        Ok(RegistryBlobs { session: Arc::new(session), reference })
    }

    /// Downloads blob `digest` into an anonymous temporary file and returns it, rewound.
    /// The caller checks the digest while reading.
    /// Never more than `size` bytes are written: a registry that sends more is stopped.
    pub fn fetch(&self, digest: &Digest, size: u64) -> Result<std::fs::File, RegistryError> {
        let session = &self.session;
        session.runtime.block_on(async {
            let name = digest.to_string();
            session
                .retry(&format!("downloading {digest}"), || async {
                    let file = tempfile::tempfile()?;
                    let mut out = Bounded { inner: tokio::fs::File::from_std(file.try_clone()?), left: size };
                    session.client.pull_blob(&self.reference, name.as_str(), &mut out).await?;
                    tokio::io::AsyncWriteExt::flush(&mut out).await?;
                    let mut file = file;
                    std::io::Seek::rewind(&mut file)?;
                    Ok(file)
                })
                .await
        })
    }
}

pub(crate) fn open_registry(reference: &RegistryRef, platform: &Platform, options: &RegistryOptions) -> Result<SourceImage, SourceError> {
    let Pulled { config: config_bytes, manifest_bytes, manifest, blobs } = crate::registry::pull(reference, platform, options)?;
    let path = PathBuf::from(reference.to_string());
    let config: ImageConfiguration = parse_json(&config_bytes, &path, "config")?;
    let layers = layers_of(&manifest, &config, &path)?;
    let origin = format!("{}/{}", reference.host, reference.repository);
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
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static,
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
fn blob_stream(base: SourceImage, index: usize) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> {
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
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item.map_err(OciDistributionError::IoError), rx)) })
}

/// A writer that takes at most `left` more bytes, then fails.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Bounded<W> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            let err = std::io::Error::new(std::io::ErrorKind::FileTooLarge, "the registry sent more bytes than the blob's size");
            return std::task::Poll::Ready(Err(err));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.left -= *n as u64;
        }
        polled
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The small blob `digest` (a config, a payload) of `reference`'s repository, whole: read up
/// to its declared size (at most [`MAX_METADATA_SIZE`]) and checked against its
/// digest; `what` names it in errors.
async fn fetch_small_blob(session: &Session, reference: &Reference, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    let name = digest.to_string();
    let left = size.min(MAX_METADATA_SIZE);
    let bytes = session
        .retry(&format!("reading {what}"), || async {
            let mut blob = Bounded { inner: Vec::new(), left };
            session.client.pull_blob(reference, name.as_str(), &mut blob).await?;
            Ok(blob.inner)
        })
        .await?;
    if Digest::of(&bytes) != *digest {
        return Err(RegistryError::DigestMismatch { what: what.to_owned(), expected: *digest, actual: Digest::of(&bytes) });
    }
    Ok(bytes)
}

/// Makes sure the small blob `bytes` is in `reference`'s repository (pushed unless it is).
async fn ensure_blob(session: &Session, reference: &Reference, bytes: &[u8], what: &str) -> Result<(), RegistryError> {
    let name = Digest::of(bytes).to_string();
    if !session.retry(&format!("checking {what}"), || session.client.blob_exists(reference, &name)).await? {
        let body = bytes::Bytes::from(bytes.to_vec());
        session.retry(&format!("uploading {what}"), || session.client.push_blob(reference, body.clone(), &name)).await?;
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
    let session = Session::new(repository, options)?;
    let runtime = session.runtime.clone();
    runtime.block_on(async { stored_signatures(&session, repository, digest).await })
}

async fn stored_signatures(session: &Session, repository: &RegistryRef, digest: &Digest) -> Result<Vec<StoredSignature>, RegistryError> {
    let reference = Reference::with_tag(repository.host.clone(), repository.repository.clone(), signature_tag(digest));
    session.authenticate(&reference, RegistryOperation::Pull).await?;
    let bytes = match session.get_manifest(&reference).await {
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
        let payload = fetch_small_blob(session, &reference, &layer_digest, layer.size(), "a signature's payload").await?;
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
        let reference = Reference::with_tag(repository.host.clone(), repository.repository.clone(), signature_tag(digest));
        session.authenticate(&reference, RegistryOperation::Push).await?;
        let mut all = stored_signatures(&session, repository, digest).await?;
        if !all.contains(&signature) {
            all.push(signature);
        }
        let mut layers = Vec::new();
        for s in &all {
            let payload_digest = Digest::of(&s.payload);
            ensure_blob(&session, &reference, &s.payload, "a signature's payload").await?;
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
        ensure_blob(&session, &reference, &config, "the signature's config").await?;
        let manifest = oci_spec::image::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(oci_spec::image::Descriptor::new(MediaType::ImageConfig, config.len() as u64, oci_spec::image::Digest::from(config_digest)))
            .layers(layers)
            .build()
            .expect("every required manifest field is set");
        let body = bytes::Bytes::from(strata_oci::canonical::canonical_json(&manifest));
        let content_type = reqwest_header(MediaType::ImageManifest.to_string());
        session.retry("uploading the signature", || session.client.push_manifest_raw(&reference, body.clone(), content_type.clone())).await?;
        Ok(())
    })
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| matches!(e.code, oci_client::errors::OciErrorCode::ManifestUnknown | oci_client::errors::OciErrorCode::NameUnknown))
        }
        _ => false,
    }
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
        let at = |tag: String| Reference::with_tag(repository.host.clone(), repository.repository.clone(), tag);
        let reference = at(referrers_tag(subject_digest));
        session.authenticate(&reference, RegistryOperation::Push).await?;
        let descriptor = |media_type: MediaType, bytes: &[u8]| {
            oci_spec::image::Descriptor::new(media_type, bytes.len() as u64, oci_spec::image::Digest::from(Digest::of(bytes)))
        };
        for blob in [EMPTY_CONFIG, content.as_slice()] {
            ensure_blob(&session, &reference, blob, "an artifact's blob").await?;
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
        let by_digest = Reference::with_digest(repository.host.clone(), repository.repository.clone(), digest.to_string());
        let body = bytes::Bytes::from(bytes.clone());
        let content_type = reqwest_header(MediaType::ImageManifest.to_string());
        session.retry("uploading the artifact", || session.client.push_manifest_raw(&by_digest, body.clone(), content_type.clone())).await?;
        let referrer = Referrer { digest, size: bytes.len() as u64, artifact_type: Some(artifact_type.to_owned()) };
        let listed = referrers_of(&session, repository, subject_digest).await?;
        if listed.iter().any(|r| r.digest == digest) {
            return Ok(referrer);
        }
        // The referrers tag schema: the index at the subject's tag, with the artifact added.
        let mut entries: Vec<oci_spec::image::Descriptor> = match session.get_manifest(&reference).await {
            Ok((bytes, _)) => serde_json::from_slice::<ImageIndex>(&bytes).map(|i| i.manifests().clone()).unwrap_or_default(),
            Err(e) if not_found(&e) => vec![],
            Err(e) => return Err(session.error("reading the referrers index", &e)),
        };
        let mut entry = oci_spec::image::Descriptor::new(MediaType::ImageManifest, referrer.size, oci_spec::image::Digest::from(digest));
        entry.set_artifact_type(Some(MediaType::Other(artifact_type.to_owned())));
        entries.push(entry);
        let index =
            oci_spec::image::ImageIndexBuilder::default().schema_version(2u32).media_type(MediaType::ImageIndex).manifests(entries).build().expect("an index");
        let body = bytes::Bytes::from(strata_oci::canonical::canonical_json(&index));
        let content_type = reqwest_header(MediaType::ImageIndex.to_string());
        session.retry("uploading the referrers index", || session.client.push_manifest_raw(&reference, body.clone(), content_type.clone())).await?;
        Ok(referrer)
    })
}

/// What is attached to the manifest `digest` in `repository`: the registry's referrers API,
/// else (where it answers 404) the referrers tag schema's index, else nothing.
async fn referrers_of(session: &Session, repository: &RegistryRef, digest: &Digest) -> Result<Vec<Referrer>, RegistryError> {
    let subject = Reference::with_digest(repository.host.clone(), repository.repository.clone(), digest.to_string());
    let tagged = Reference::with_tag(repository.host.clone(), repository.repository.clone(), referrers_tag(digest));
    let listed = session
        .retry("reading the referrers", || async {
            match session.get_bounded(&subject, &format!("referrers/{digest}"), MediaType::ImageIndex.as_ref()).await {
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
