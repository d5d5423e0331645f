//! The distribution API over HTTP: the few requests strata makes of a registry (read a
//! manifest, write one, check, mount, upload and download a blob), and the authentication
//! they need, written here on reqwest.
//!
//! Why not oci-client, the crate made for this: it reads whatever body a registry or its
//! token service sends, whole. Measured with a scripted registry: a token endpoint answering
//! without end took strata to 2 GB of memory in 5 s, and so would the body of any error. It
//! offers no way to bound either, nor to reuse its authentication in requests of one's own.
//! So every body is read here to a bound: a manifest to [`crate::blobs::MAX_METADATA_SIZE`],
//! a token to [`MAX_TOKEN_SIZE`], an error to [`MAX_ERROR_SIZE`] (the rest is not read), a
//! blob to the size its descriptor declares (by the caller).
//!
//! Authentication is the distribution spec's and Docker's token spec's, as containers/image
//! and go-containerregistry do it:
//!
//! 1. [`Client::authenticate`] asks `GET /v2/` without credentials. No challenge: nothing
//!    is needed. `Basic`: the user's password goes with every request. `Bearer realm=…,
//!    service=…`: a token is asked of the realm for the repository's scope
//!    (`repository:NAME:pull` or `:pull,push`), by a `GET` with the user's password if
//!    there is one, or by the `POST` of an OAuth2 refresh-token grant for a stored identity
//!    token; it goes with every request.
//! 2. A request answered 401 is answered by its own challenge (a token expired during a long
//!    push, a scope the registry wants widened) and sent once more; a second 401 is the
//!    caller's error, "authentication failed".
//! 3. Credentials and tokens go only to the registry's own origin (an upload's `Location` or
//!    a blob's redirect elsewhere gets none: reqwest drops the header across origins) and to
//!    the realm it names, never to a plain-HTTP realm unless TLS is not verified.
//!
//! The connection: HTTPS, verified against the system's authorities and the registry's own
//! ([`super::certs`]); where TLS is not verified, HTTPS without checks, else plain HTTP (as
//! skopeo). Docker Hub (`docker.io`) is reached where its API is, `registry-1.docker.io`.
//!
//! The challenge is parsed by the http-auth crate; the rest is a handful of requests, each
//! named by the spec (`end-1` … `end-13`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};

use strata_oci::bounded::human_size;
use strata_oci::digest::Digest;

use super::certs::RegistryTls;
use super::Credentials;
use crate::credentials::Secret;

/// The most a token service's answer may hold: tokens are JWTs of a few KiB.
pub(crate) const MAX_TOKEN_SIZE: u64 = 1 << 20;
/// The most of an error's body read for its message; the rest is left unread.
pub(crate) const MAX_ERROR_SIZE: u64 = 64 << 10;
/// How long a connection may take to open, and how long a registry may stay silent, before
/// its answer or within it (by default: `RegistryOptions::read_timeout`). Not for an upload's `PUT`: reqwest counts its silence from the
/// request's start, while the body is still being sent (an hour for a big layer on a slow
/// link), and a registry answers only once it has checked the blob's digest.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    /// An answer other than the one the request expects; `message` is what the body said.
    #[error("{url} answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status { url: String, status: StatusCode, message: String },
    /// `what`: the bound, for people (`the most a manifest may have`).
    #[error("{url} sends more than {}, {what}", human_size(*limit))]
    TooLarge { url: String, limit: u64, what: &'static str },
    #[error("the token service {realm}: {why}")]
    Token { realm: String, why: String },
    #[error("{url}: {why}")]
    Protocol { url: String, why: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HttpError {
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            HttpError::Transport(e) => e.status(),
            _ => None,
        }
    }
}

/// What the registry asked for, as learnt from its challenges.
#[derive(Clone)]
enum Auth {
    /// No challenge seen yet, or the registry needs nothing.
    Anonymous,
    /// The user's credentials with every request.
    Basic,
    /// A token of the realm with every request.
    Bearer { realm: Url, service: Option<String>, token: String },
}

/// Access asked of one repository.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Access {
    Pull,
    Push,
}

/// A client of one repository of one registry.
pub(crate) struct Client {
    http: reqwest::Client,
    /// `http`, without its read timeout: for the requests that carry a blob.
    uploads: reqwest::Client,
    /// `https://HOST/`, or `http://HOST/` for a registry that does not speak HTTPS when TLS
    /// is not verified (found by [`Client::authenticate`]).
    base: Mutex<Url>,
    tls_verify: bool,
    repository: String,
    creds: Option<Credentials>,
    /// The most asked of the repository so far: a token for pushing serves reads too.
    access: Mutex<Access>,
    auth: Mutex<Auth>,
}

impl Client {
    /// A client of `repository` at `host`, trusting the system's authorities and `tls`'s
    /// (and showing its client certificate, if any).
    pub(crate) fn new(
        host: &str,
        repository: &str,
        creds: Option<Credentials>,
        tls_verify: bool,
        tls: RegistryTls,
        read_timeout: Duration,
    ) -> Result<Client, HttpError> {
        let base = Url::parse(&format!("https://{}/", api_host(host))).map_err(|e| HttpError::Protocol { url: host.to_owned(), why: e.to_string() })?;
        let builder = || {
            let mut http = reqwest::Client::builder().danger_accept_invalid_certs(!tls_verify);
            for root in &tls.roots {
                http = http.add_root_certificate(root.clone());
            }
            if let Some(identity) = &tls.identity {
                http = http.identity(identity.clone());
            }
            http.user_agent(concat!("strata/", env!("CARGO_PKG_VERSION"))).connect_timeout(CONNECT_TIMEOUT)
        };
        let (http, uploads) = (builder().read_timeout(read_timeout).build()?, builder().build()?);
        let (access, auth) = (Mutex::new(Access::Pull), Mutex::new(Auth::Anonymous));
        Ok(Client { http, uploads, base: Mutex::new(base), tls_verify, repository: repository.to_owned(), creds, access, auth })
    }

    fn base(&self) -> Url {
        self.base.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn auth(&self) -> std::sync::MutexGuard<'_, Auth> {
        self.auth.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The API's root, `…/v2/`, which answers whether and how to authenticate.
    fn root(&self) -> String {
        format!("{}v2/", self.base())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}/{path}", self.root(), self.repository)
    }

    /// Learns what the registry asks for (`end-1`) and gets a token for `access` if it
    /// wants one. Where TLS is not verified, a registry that does not answer in HTTPS is
    /// spoken to in plain HTTP from then on, as skopeo does.
    pub(crate) async fn authenticate(&self, access: Access) -> Result<(), HttpError> {
        {
            let mut asked = self.access.lock().unwrap_or_else(PoisonError::into_inner);
            *asked = (*asked).max(access);
        }
        let ping = || self.http.get(self.root()).send();
        let response = match ping().await {
            Err(_) if !self.tls_verify && self.base().scheme() == "https" => {
                self.base.lock().unwrap_or_else(PoisonError::into_inner).set_scheme("http").expect("http is a scheme for any https URL");
                ping().await?
            }
            answered => answered?,
        };
        match response.status() {
            StatusCode::UNAUTHORIZED => {
                self.answer(&response, None).await?;
                Ok(())
            }
            status if status.is_success() => Ok(()),
            _ => Err(status_error(response).await),
        }
    }

    /// Checks the credentials, as `docker login` does: the registry answers `GET /v2/` with
    /// 200 given them (or the token they got).
    pub(crate) async fn login(&self) -> Result<(), HttpError> {
        self.authenticate(Access::Pull).await?;
        let root = self.root();
        expect(self.send(None, || Ok(self.http.get(&root))).await?, &[StatusCode::OK]).await.map(drop)
    }

    /// Sends the request `build` makes, with the credentials or token the registry asked
    /// for; answered 401, it meets the challenge and sends it once more. `also` is another
    /// repository the request needs to read (a mount's source).
    async fn send(&self, also: Option<&str>, build: impl Fn() -> Result<RequestBuilder, HttpError>) -> Result<Response, HttpError> {
        let mut renewed = false;
        loop {
            let request = build()?;
            // Cloned first: the lock is never held across an await (a token being fetched).
            let auth = self.auth().clone();
            let request = match (auth, also) {
                (Auth::Anonymous, _) => request,
                (Auth::Basic, _) => self.with_basic(request),
                (Auth::Bearer { realm, service, .. }, Some(other)) => request.bearer_auth(self.token(&realm, service.as_deref(), Some(other)).await?),
                (Auth::Bearer { token, .. }, None) => request.bearer_auth(token),
            };
            let response = request.send().await?;
            if response.status() != StatusCode::UNAUTHORIZED || renewed || !self.answer(&response, also).await? {
                return Ok(response);
            }
            renewed = true;
        }
    }

    /// `request` with the user's password, if there is one.
    fn with_basic(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.creds {
            Some(Credentials { user, secret: Secret::Password(password) }) => request.basic_auth(user, Some(password)),
            _ => request,
        }
    }

    /// Meets the challenge of a 401 `response`: whether there is anything new to try.
    async fn answer(&self, response: &Response, also: Option<&str>) -> Result<bool, HttpError> {
        let url = response.url().to_string();
        let challenges = response.headers().get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ");
        let parsed = http_auth::parse_challenges(&challenges).unwrap_or_default();
        let param = |c: &http_auth::ChallengeRef<'_>, name: &str| c.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_unescaped());
        if let Some(bearer) = parsed.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer")) {
            let realm = param(bearer, "realm").ok_or_else(|| HttpError::Protocol { url: url.clone(), why: "a Bearer challenge without a realm".into() })?;
            let realm = Url::parse(&realm).map_err(|e| HttpError::Token { realm: realm.clone(), why: format!("not a URL: {e}") })?;
            if realm.scheme() != "https" && (realm.scheme() != "http" || self.tls_verify) {
                let why = "tokens are asked for over HTTPS only, unless --tls-verify=false".into();
                return Err(HttpError::Token { realm: realm.to_string(), why });
            }
            let service = param(bearer, "service");
            let token = self.token(&realm, service.as_deref(), also).await?;
            *self.auth() = Auth::Bearer { realm, service, token };
            return Ok(true);
        }
        let basic = parsed.iter().any(|c| c.scheme.eq_ignore_ascii_case("basic"));
        let mut auth = self.auth();
        let password = matches!(self.creds, Some(Credentials { secret: Secret::Password(_), .. }));
        if basic && password && !matches!(*auth, Auth::Basic) {
            *auth = Auth::Basic;
            return Ok(true);
        }
        Ok(false)
    }

    /// A token of `realm` for the repository (and read access to `also`): asked for with a
    /// `GET` (with the user's password, if any), or, given an identity token, the `POST` of
    /// an OAuth2 refresh-token grant (Docker's token spec, `oauth.md`).
    async fn token(&self, realm: &Url, service: Option<&str>, also: Option<&str>) -> Result<String, HttpError> {
        let access = *self.access.lock().unwrap_or_else(PoisonError::into_inner);
        let actions = if access == Access::Push { "pull,push" } else { "pull" };
        let mut params: Vec<(&str, String)> = service.map(|s| ("service", s.to_owned())).into_iter().collect();
        // A login names no repository: its token is for the registry alone.
        if !self.repository.is_empty() {
            params.push(("scope", format!("repository:{}:{actions}", self.repository)));
        }
        params.extend(also.map(|other| ("scope", format!("repository:{other}:pull"))));
        let request = match &self.creds {
            Some(Credentials { secret: Secret::IdentityToken(refresh), .. }) => {
                params.extend([("grant_type", "refresh_token".to_owned()), ("client_id", "strata".to_owned()), ("refresh_token", refresh.clone())]);
                self.http.post(realm.clone()).form(&params)
            }
            _ => self.with_basic(self.http.get(realm.clone()).query(&params)),
        };
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(status_error(response).await);
        }
        let body = read_bounded(response, MAX_TOKEN_SIZE, "the most a token may have").await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| HttpError::Token { realm: realm.to_string(), why: format!("not a token: {e}") })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| HttpError::Token { realm: realm.to_string(), why: "no token in its answer".into() })
    }

    /// `GET` of `path` in the repository (`manifests/REF`, `referrers/DIGEST`: `end-3`,
    /// `end-12a`): the body, read to at most `limit` bytes, and the digest the registry
    /// says it has.
    pub(crate) async fn get_bounded(&self, path: &str, accept: &str, limit: u64, what: &'static str) -> Result<(Vec<u8>, Option<String>), HttpError> {
        let url = self.url(path);
        let response = self.send(None, || Ok(self.http.get(&url).header(ACCEPT, accept))).await?;
        let response = expect(response, &[StatusCode::OK]).await?;
        let said = response.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok((read_bounded(response, limit, what).await?, said))
    }

    /// `PUT` of a manifest or index at `reference`, a tag or a digest (`end-7`).
    pub(crate) async fn put_manifest(&self, reference: &str, media_type: &str, body: &[u8]) -> Result<(), HttpError> {
        let url = self.url(&format!("manifests/{reference}"));
        let send = || Ok(self.http.put(&url).header(CONTENT_TYPE, media_type).body(body.to_vec()));
        expect(self.send(None, send).await?, &[StatusCode::CREATED, StatusCode::OK]).await.map(drop)
    }

    /// Whether the repository has the blob `digest` (`HEAD`, `end-2`).
    pub(crate) async fn has_blob(&self, digest: &Digest) -> Result<bool, HttpError> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send(None, || Ok(self.http.head(&url))).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        expect(response, &[StatusCode::OK]).await.map(|_| true)
    }

    /// The blob `digest`, its body still to be read (`end-2`); the caller bounds it.
    pub(crate) async fn get_blob(&self, digest: &Digest) -> Result<Response, HttpError> {
        let url = self.url(&format!("blobs/{digest}"));
        expect(self.send(None, || Ok(self.http.get(&url))).await?, &[StatusCode::OK]).await
    }

    /// Mounts the blob `digest` from the repository `from` of the same registry (`end-11`):
    /// whether the registry did.
    pub(crate) async fn mount(&self, digest: &Digest, from: &str) -> Result<bool, HttpError> {
        let mut url = Url::parse(&self.url("blobs/uploads/")).map_err(|e| HttpError::Protocol { url: self.url("blobs/uploads/"), why: e.to_string() })?;
        url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", from);
        let response = self.send(Some(from), || Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, 0))).await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            // An upload was started instead; it is left to the registry to expire.
            StatusCode::ACCEPTED => Ok(false),
            _ => Err(status_error(response).await),
        }
    }

    /// Uploads the blob `digest` of `size` bytes, whose bytes `body` gives (asked again if
    /// the upload has to be sent again): an upload opened by `POST` and completed by one
    /// `PUT` (`end-4a`, `end-6`).
    pub(crate) async fn upload(&self, digest: &Digest, size: u64, body: impl Fn() -> std::io::Result<reqwest::Body>) -> Result<(), HttpError> {
        let url = self.url("blobs/uploads/");
        let opened = expect(self.send(None, || Ok(self.http.post(&url).header(CONTENT_LENGTH, 0))).await?, &[StatusCode::ACCEPTED]).await?;
        let location = opened.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mut put =
            opened.url().join(location).map_err(|e| HttpError::Protocol { url: url.clone(), why: format!("the upload's location {location:?}: {e}") })?;
        put.query_pairs_mut().append_pair("digest", &digest.to_string());
        let own = put.origin() == self.base().origin();
        let send = || {
            let request = self.uploads.put(put.clone()).header(CONTENT_TYPE, "application/octet-stream").header(CONTENT_LENGTH, size).body(body()?);
            Ok(request)
        };
        let response = if own { self.send(None, send).await? } else { send()?.send().await? };
        expect(response, &[StatusCode::CREATED]).await.map(drop)
    }
}

/// Where the API of the registry `host` (as references name it) is served: Docker Hub's is
/// named `docker.io` but served at `registry-1.docker.io`, as Docker and containers/image
/// resolve it; any other registry, at its own name.
fn api_host(host: &str) -> &str {
    if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    }
}

/// `response` if its status is one of `wanted`, else its error.
async fn expect(response: Response, wanted: &[StatusCode]) -> Result<Response, HttpError> {
    if wanted.contains(&response.status()) {
        Ok(response)
    } else {
        Err(status_error(response).await)
    }
}

/// The error a response stands for: its status, and what its body says (the distribution
/// spec's `{"errors": [{"code", "message"}]}`, else a short line of text), of which at most
/// [`MAX_ERROR_SIZE`] is read.
async fn status_error(mut response: Response) -> HttpError {
    let (status, url) = (response.status(), without_query(response.url()));
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_SIZE as usize - body.len())]);
        if body.len() as u64 >= MAX_ERROR_SIZE {
            break;
        }
    }
    HttpError::Status { url, status, message: error_message(&body) }
}

/// What an error body says, for people.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body) {
        let entries = envelope.errors.iter().map(|e| match (&e.code, &e.message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (code, message) => code.clone().or(message.clone()).unwrap_or_default(),
        });
        return entries.filter(|e| !e.is_empty()).collect::<Vec<_>>().join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let line = text.trim().lines().next().unwrap_or_default();
    if line.len() <= 200 && !line.starts_with('<') && line.chars().all(|c| !c.is_control()) {
        line.to_owned()
    } else {
        String::new()
    }
}

/// `url` without its query, which may hold an upload's state or a signed URL's secret.
fn without_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// The body of `response`, failing past `limit` bytes (at once if it says it is longer).
pub(crate) async fn read_bounded(mut response: Response, limit: u64, what: &'static str) -> Result<Vec<u8>, HttpError> {
    let too_large = |response: &Response| HttpError::TooLarge { url: without_query(response.url()), limit, what };
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(too_large(&response));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large(&response));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_is_reached_where_its_api_is() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn error_bodies_are_told_briefly() {
        let envelope = br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{}},{"code":"TAG_INVALID"}]}"#;
        assert_eq!(error_message(envelope), "MANIFEST_INVALID: manifest invalid; TAG_INVALID");
        assert_eq!(error_message(b"blob unknown to registry\n"), "blob unknown to registry");
        assert_eq!(error_message(b"<html><body>502 Bad Gateway</body></html>"), "");
        assert_eq!(error_message(&[b'x'; 300]), "");
    }
}
