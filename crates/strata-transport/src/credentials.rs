//! Registry credentials: `--creds USER:PASSWORD`, else what `podman login` and `docker login`
//! stored, looked up as containers/image does (containers-auth.json(5)):
//!
//! 1. `$REGISTRY_AUTH_FILE` if set, else `$XDG_RUNTIME_DIR/containers/auth.json` (podman's),
//!    else `/run/containers/$UID/auth.json` (podman's without `XDG_RUNTIME_DIR`; on macOS,
//!    `~/.config/containers/auth.json`): the file `strata login` writes too ([`login_file`]);
//! 2. `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`;
//! 3. Docker's `config.json` (in `$DOCKER_CONFIG`, else `~/.docker`).
//!
//! The first file with an entry for the repository wins; a file that is missing or has no
//! entry is passed over. In a file, the most specific key wins: for `quay.io/team/app`, the
//! key `quay.io/team/app`, then `quay.io/team`, then the registry's own (what `podman login
//! quay.io/team` writes is found first). Each file is read by the `docker_credential` crate,
//! so an entry may be an `auth` (base64 of `USER:PASSWORD`), a `username` and `password`, or
//! a credential helper (`credHelpers`, `credsStore`), or an `identitytoken` (an OAuth2
//! refresh token, as `az acr login` stores; exchanged at the registry's token service), and
//! Docker Hub's
//! `https://index.docker.io/v1/` key answers for `docker.io`. That crate looks registries up,
//! not repositories: the scoped key is picked here ([`scoped_key`]) and handed to it.
//!
//! Secrets never reach an error, a log line or a `Debug` output: [`Credentials`] redacts, and
//! a broken file is reported by its path and the place of the fault, never by its content.

use std::fmt;
use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};

/// A user name and a secret that no formatting ever shows.
#[derive(Clone)]
pub struct Credentials {
    /// Empty for an identity token, which names no user.
    pub user: String,
    pub(crate) secret: Secret,
}

#[derive(Clone)]
pub(crate) enum Secret {
    /// Sent as Basic authentication, to the registry or its token service.
    Password(String),
    /// An OAuth2 refresh token, exchanged at the token service for access tokens (Docker's
    /// `identitytoken`); a registry of Basic authentication cannot take it.
    IdentityToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.user)
    }
}

impl Credentials {
    /// A user name and a password.
    pub fn new(user: String, password: String) -> Credentials {
        Credentials { user, secret: Secret::Password(password) }
    }
}

impl std::str::FromStr for Credentials {
    type Err = CredentialsError;
    fn from_str(s: &str) -> Result<Credentials, CredentialsError> {
        let (user, password) = s.split_once(':').ok_or(CredentialsError::BadCreds)?;
        Ok(Credentials::new(user.to_owned(), password.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("--creds: expected USER:PASSWORD")]
    BadCreds,
    #[error("cannot read credentials from {path}: {why}")]
    File { path: PathBuf, why: String },
}

/// A credentials file bigger than this is refused: `podman login` writes a few hundred bytes.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// The stored credentials for `repository` (`team/app`) on `host`, if any file has them.
pub fn stored(host: &str, repository: &str) -> Result<Option<Credentials>, CredentialsError> {
    for path in files() {
        if let Some((key, credentials)) = from_file(&path, host, repository)? {
            tracing::debug!("credentials for {host}/{repository} from {} (key {key})", path.display());
            return Ok(Some(credentials));
        }
    }
    Ok(None)
}

/// The environment variable `name`, if set and not empty, as a path.
fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The files to look in, in order.
fn files() -> Vec<PathBuf> {
    let home = var("HOME");
    let config_home = var("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
    let docker = var("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")));
    let mut files = vec![login_file()];
    files.extend(config_home.map(|d| d.join("containers/auth.json")));
    files.extend(docker.map(|d| d.join("config.json")));
    files
}

/// The most specific key of `auths` in `text` scoped to a part of `repository` on `host`
/// (`host/team/app`, then `host/team`); `None` if there is none, or `text` has no `auths`
/// object (the file is then read for the registry's key, and judged, by `docker_credential`).
fn scoped_key(text: &[u8], host: &str, repository: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Keys {
        auths: std::collections::HashMap<String, serde::de::IgnoredAny>,
    }
    let keys = serde_json::from_slice::<Keys>(text).ok()?.auths;
    let mut scope = format!("{host}/{repository}");
    loop {
        if keys.contains_key(&scope) {
            return Some(scope);
        }
        scope.truncate(scope.rfind('/')?);
        if scope.len() <= host.len() {
            return None;
        }
    }
}

/// The credentials for `repository` on `host` in the file at `path`, with the key they are
/// under: `None` where the file is missing or has no entry for them.
fn from_file(path: &Path, host: &str, repository: &str) -> Result<Option<(String, Credentials)>, CredentialsError> {
    let fault = |why: String| CredentialsError::File { path: path.to_owned(), why };
    let text = match strata_oci::bounded::read_file(path, MAX_FILE_SIZE) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // Behind a directory this user may not enter (root's `/run/containers`, seen by a
        // Nix build user): not this user's file.
        Err(_) if std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => return Err(fault(format!("{e}, more than a credentials file holds"))),
        result => result.map_err(|e| fault(e.to_string()))?,
    };
    // docker_credential says only that a file is unreadable: serde_json, asked to skip every
    // value, says where (its messages name a place, never the text there).
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&text) {
        return Err(fault(not_json(&e)));
    }
    // A scoped key is looked up as it is written (a helper is asked for it only if its entry
    // holds no credentials).
    let key = scoped_key(&text, host, repository).unwrap_or_else(|| host.to_owned());
    let host = key.as_str(); // what the messages below name
    match docker_credential::get_credential_from_reader(text.as_slice(), host) {
        Ok(DockerCredential::UsernamePassword(user, password)) => Ok(Some((key.clone(), Credentials::new(user, password)))),
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some((key.clone(), Credentials { user: String::new(), secret: Secret::IdentityToken(token) }))),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(CredentialRetrievalError::ConfigReadError) => Err(fault("not an auth file: a key holds a value of the wrong type".into())),
        Err(CredentialRetrievalError::CredentialDecodingError) => Err(fault(format!("the entry for {host} is not base64 of USER:PASSWORD"))),
        Err(CredentialRetrievalError::CredentialMismatchError) => {
            Err(fault(format!("the entry for {host} has an `auth` that disagrees with its `username` and `password`")))
        }
        // As without credentials, a registry that wants them says so; a helper's output may
        // hold secrets, so only its failure is said.
        Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
            tracing::debug!("the credential helper {helper} (named in {}) has no credentials for {host}", path.display());
            Ok(None)
        }
        Err(e @ (CredentialRetrievalError::HelperCommunicationError | CredentialRetrievalError::MalformedHelperResponse)) => {
            tracing::warn!("{}: the credential helper for {host}: {e}; going on without credentials", path.display());
            Ok(None)
        }
        Err(CredentialRetrievalError::ConfigNotFound) => Ok(None),
    }
}

/// Why a file is not JSON, by the place of the fault: serde_json's messages name a place,
/// never the text there (which may be a secret).
fn not_json(e: &serde_json::Error) -> String {
    format!("not valid JSON ({:?} error at line {}, column {})", e.classify(), e.line(), e.column())
}

/// The primary auth file, the first [`stored`] reads and the one `strata login` writes, as
/// podman's: `$REGISTRY_AUTH_FILE`; else, on Linux, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// or `/run/containers/$UID/auth.json` without `XDG_RUNTIME_DIR` (where podman, skopeo and
/// buildah keep it for root's logins under sudo, cron or CI); elsewhere (macOS),
/// `~/.config/containers/auth.json`.
pub fn login_file() -> PathBuf {
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        return file;
    }
    if cfg!(target_os = "linux") {
        var("XDG_RUNTIME_DIR")
            .map(|d| d.join("containers/auth.json"))
            .unwrap_or_else(|| PathBuf::from(format!("/run/containers/{}/auth.json", rustix::process::getuid().as_raw())))
    } else {
        var("HOME").unwrap_or_default().join(".config/containers/auth.json")
    }
}

/// Stores `creds` under `key` (`HOST[/NAMESPACE]`) in the auth file `file`, as `podman
/// login` does (an `auth`, base64 of `USER:PASSWORD`; an identity token as Docker stores
/// one), keeping every other entry.
pub fn store(file: &Path, key: &str, creds: &Credentials) -> Result<(), CredentialsError> {
    use base64::Engine;
    let auth = |user: &str, password: &str| base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let entry = match &creds.secret {
        Secret::Password(password) => serde_json::json!({ "auth": auth(&creds.user, password) }),
        Secret::IdentityToken(token) => serde_json::json!({ "auth": auth("<token>", ""), "identitytoken": token }),
    };
    edit(file, |auths| {
        auths.insert(key.to_owned(), entry);
    })
}

/// Removes the entry `key` from the auth file `file` (every entry if `None`), keeping the
/// rest of the file; how many there were.
pub fn forget(file: &Path, key: Option<&str>) -> Result<usize, CredentialsError> {
    if std::fs::symlink_metadata(file).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(0); // nothing to forget, and no file to make
    }
    let mut removed = 0;
    edit(file, |auths| match key {
        Some(key) => removed = usize::from(auths.remove(key).is_some()),
        None => removed = std::mem::take(auths).len(),
    })?;
    Ok(removed)
}

/// Changes the `auths` of the auth file `file` (made if missing, with its directory, for its
/// owner only): read, changed and written whole under a lock on its directory, so that
/// logins running at once each keep the other's entry; written only by its owner (mode
/// 0600), and a link to it stays a link.
fn edit(file: &Path, change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Result<(), CredentialsError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fault = |why: String| CredentialsError::File { path: file.to_owned(), why };
    let dir = strata_scratch::parent_of(file);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| fault(format!("cannot make its directory: {e}")))?;
    let lock = std::fs::File::open(dir).map_err(|e| fault(e.to_string()))?;
    lock.lock().map_err(|e| fault(format!("cannot lock its directory: {e}")))?;
    let mut config = match strata_oci::bounded::read_file(file, MAX_FILE_SIZE) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(fault(e.to_string())),
        Ok(text) => serde_json::from_slice(&text).map_err(|e| fault(not_json(&e)))?,
    };
    let not_auth_file = || fault("not an auth file: it or its `auths` is not an object".into());
    let auths = config.as_object_mut().ok_or_else(not_auth_file)?.entry("auths").or_insert_with(|| serde_json::json!({}));
    change(auths.as_object_mut().ok_or_else(not_auth_file)?);
    let mut text = serde_json::to_vec_pretty(&config).expect("JSON values serialize");
    text.push(b'\n');
    let write = || -> std::io::Result<()> {
        let output = strata_scratch::OutputFile::create(file)?;
        if !output.in_place() {
            output.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        std::io::Write::write_all(&mut output.as_file(), &text)?;
        output.commit()
    };
    write().map_err(|e| fault(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret of `c`, an identity token marked as one.
    fn secret(c: &Credentials) -> String {
        match &c.secret {
            Secret::Password(password) => password.clone(),
            Secret::IdentityToken(token) => format!("identity token {token}"),
        }
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c: Credentials = "user:s3cret:with:colons".parse().unwrap();
        assert_eq!(secret(&c), "s3cret:with:colons");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!("nocolon".parse::<Credentials>().is_err());
    }

    fn lookup(text: &str, host: &str) -> Result<Option<(String, String)>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, text).unwrap();
        from_file(&path, host, "team/app").map(|c| c.map(|(_, c)| (c.user.clone(), secret(&c)))).map_err(|e| e.to_string())
    }

    /// Logins at once into one file each keep the other's entry (the file is changed under a
    /// lock), and what they store is read back.
    #[test]
    fn logins_at_once_keep_each_others_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("containers/auth.json");
        std::thread::scope(|s| {
            for i in 0..8 {
                let file = &file;
                s.spawn(move || store(file, &format!("reg{i}.example"), &Credentials::new(format!("u{i}"), format!("p:{i}"))).unwrap());
            }
        });
        for i in 0..8 {
            let (_, c) = from_file(&file, &format!("reg{i}.example"), "app").unwrap().unwrap();
            assert_eq!((c.user.clone(), secret(&c)), (format!("u{i}"), format!("p:{i}")));
        }
        assert_eq!(forget(&file, Some("reg3.example")).unwrap(), 1);
        assert_eq!(forget(&file, Some("reg3.example")).unwrap(), 0);
        assert_eq!(forget(&file, None).unwrap(), 7);
        let missing = dir.path().join("missing/auth.json");
        assert_eq!(forget(&missing, None).unwrap(), 0);
        assert!(!missing.parent().unwrap().exists(), "a logout makes no file");
    }

    /// As containers-auth.json(5) says: `reg.example/team/app`, then `reg.example/team`, then
    /// `reg.example`; whole path segments only.
    #[test]
    fn the_most_specific_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // base64 of "team:1", "app:2", "all:3".
        let (team, app, all) =
            (r#""reg.example/team":{"auth":"dGVhbTox"}"#, r#""reg.example/team/app":{"auth":"YXBwOjI="}"#, r#""reg.example":{"auth":"YWxsOjM="}"#);
        let user = |entries: &[&str], repository: &str| {
            std::fs::write(&path, format!(r#"{{"auths":{{{}}}}}"#, entries.join(","))).unwrap();
            from_file(&path, "reg.example", repository).unwrap().map(|(_, c)| c.user)
        };
        assert_eq!(user(&[team, app, all], "team/app").as_deref(), Some("app"));
        assert_eq!(user(&[team, app, all], "team/app/sub").as_deref(), Some("app"));
        assert_eq!(user(&[team, app, all], "team/other").as_deref(), Some("team"));
        assert_eq!(user(&[team, app, all], "team").as_deref(), Some("team"));
        assert_eq!(user(&[team, app, all], "teamx/app").as_deref(), Some("all"));
        assert_eq!(user(&[team, app], "other/app"), None);
        assert_eq!(user(&[app, all], "team/other").as_deref(), Some("all"));
    }

    #[test]
    fn entries_are_found_in_every_spelling_logins_write() {
        let pair = Some(("u".to_owned(), "p:w".to_owned()));
        // base64 of "u:p:w"
        assert_eq!(lookup(r#"{"auths":{"reg.example:5000":{"auth":"dTpwOnc="}}}"#, "reg.example:5000"), Ok(pair.clone()));
        assert_eq!(lookup(r#"{"auths":{"https://reg.example/v2/":{"auth":"dTpwOnc="}}}"#, "reg.example"), Ok(pair.clone()));
        assert_eq!(lookup(r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpwOnc="}}}"#, "docker.io"), Ok(pair.clone()));
        assert_eq!(lookup(r#"{"auths":{"reg.example":{"username":"u","password":"p:w"}}}"#, "reg.example"), Ok(pair));
        let token = Some((String::new(), "identity token r3fresh".to_owned()));
        let acr = r#"{"auths":{"reg.example":{"auth":"MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwOg==","identitytoken":"r3fresh"}}}"#;
        assert_eq!(lookup(acr, "reg.example"), Ok(token));
        assert_eq!(lookup(r#"{"auths":{"other.example":{"auth":"dTpwOnc="}}}"#, "reg.example"), Ok(None));
        assert_eq!(lookup(r#"{}"#, "reg.example"), Ok(None));
        // A helper that is not installed (Docker Desktop's `credsStore` on another machine).
        assert_eq!(lookup(r#"{"credsStore":"strata-test-absent","credHelpers":{"reg.example":"strata-test-absent"}}"#, "reg.example"), Ok(None));
    }

    #[test]
    fn broken_files_are_named_without_their_secrets() {
        let secret = "c3RyYXRhOnMzY3JldA==";
        for text in [
            format!(r#"{{"auths":{{"reg.example":{{"auth":"{secret}" "oops"}}}}}}"#),
            format!(r#"{{"auths":{{"reg.example":{{"auth":{{"nested":"{secret}"}}}}}}}}"#),
            r#"{"auths":{"reg.example":{"auth":"%%% not base64"}}}"#.to_owned(),
        ] {
            let message = lookup(&text, "reg.example").unwrap_err();
            assert!(message.contains("auth.json") && !message.contains(secret) && !message.contains("%%%"), "{message}");
        }
        let big = format!(r#"{{"auths":{{}}, "pad": "{}"}}"#, "x".repeat(2 << 20));
        assert!(lookup(&big, "reg.example").unwrap_err().contains("more than a credentials file holds"));
    }
}
