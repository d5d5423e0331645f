//! A registry's own TLS settings, kept as containers-certs.d(5) says (podman's, skopeo's,
//! buildah's; Docker's `/etc/docker/certs.d` is the same layout): a directory named after
//! the registry's `HOST[:PORT]`, exactly as references spell it, in
//! `~/.config/containers/certs.d`, `/etc/containers/certs.d` or `/etc/docker/certs.d` (the
//! first that has one), or the directory `--cert-dir` names (skopeo's flag). In it:
//!
//! - each `*.crt`: authorities trusted for this registry, besides the system's;
//! - `NAME.cert` and `NAME.key`: a client certificate and its key, for a registry that asks
//!   for one (mutual TLS). A certificate without its key, or a key without its certificate,
//!   is an error, as in containers/image; of several pairs, the first by name is used.
//!
//! Files are read in the order of their names, each to at most [`MAX_CERTIFICATE_SIZE`].

use std::path::{Path, PathBuf};

use reqwest::{Certificate, Identity};

/// The most a certificate or key file may hold: a bundle of a few hundred authorities.
const MAX_CERTIFICATE_SIZE: u64 = 1 << 20;

/// The directories searched, in order, for a directory named after the registry.
const SYSTEM_DIRS: [&str; 2] = ["/etc/containers/certs.d", "/etc/docker/certs.d"];

#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", path.display())]
pub struct CertificateError {
    pub path: PathBuf,
    pub why: String,
}

/// What a registry's directory holds.
#[derive(Default)]
pub(crate) struct RegistryTls {
    /// Authorities trusted besides the system's.
    pub roots: Vec<Certificate>,
    /// The client certificate and key, as one PEM.
    pub identity: Option<Identity>,
}

/// The settings for the registry `host` (`HOST[:PORT]`): from `cert_dir` if given, else from
/// its directory in the usual places; none if there is none.
pub(crate) fn for_registry(host: &str, cert_dir: Option<&Path>) -> Result<RegistryTls, CertificateError> {
    let dir = match cert_dir {
        Some(dir) => dir.to_owned(),
        None => {
            let home = std::env::var_os("HOME").map(|home| Path::new(&home).join(".config/containers/certs.d"));
            let found = home.into_iter().chain(SYSTEM_DIRS.iter().map(PathBuf::from)).map(|d| d.join(host)).find(|d| d.is_dir());
            match found {
                Some(dir) => dir,
                None => return Ok(RegistryTls::default()),
            }
        }
    };
    read_dir(&dir)
}

fn read_dir(dir: &Path) -> Result<RegistryTls, CertificateError> {
    let fail = |path: &Path, why: String| CertificateError { path: path.to_owned(), why };
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(dir).and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect()).map_err(|e| fail(dir, e.to_string()))?;
    names.sort();
    let read = |path: &Path| strata_oci::bounded::read_file(path, MAX_CERTIFICATE_SIZE).map_err(|e| fail(path, e.to_string()));
    let has = |path: &Path, ext: &str| path.extension().is_some_and(|e| e == ext);
    let mut tls = RegistryTls::default();
    for path in &names {
        if has(path, "crt") {
            let bundle = Certificate::from_pem_bundle(&read(path)?).map_err(|e| fail(path, format!("not PEM certificates: {e}")))?;
            if bundle.is_empty() {
                return Err(fail(path, "holds no certificate".into()));
            }
            tls.roots.extend(bundle);
        } else if has(path, "cert") {
            let key = path.with_extension("key");
            if !names.contains(&key) {
                return Err(fail(path, format!("a client certificate without its key {}", key.display())));
            }
            if tls.identity.is_none() {
                let pem = [read(path)?, read(&key)?].concat();
                tls.identity = Some(Identity::from_pem(&pem).map_err(|e| fail(path, format!("not a PEM certificate and key: {e}")))?);
            }
        } else if has(path, "key") && !names.contains(&path.with_extension("cert")) {
            return Err(fail(path, format!("a client key without its certificate {}", path.with_extension("cert").display())));
        }
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_no_settings_and_half_a_pair_is_an_error() {
        let none = for_registry("strata-test.invalid:1", None).unwrap();
        assert!(none.roots.is_empty() && none.identity.is_none());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client.key"), "").unwrap();
        let err = for_registry("x", Some(dir.path())).err().unwrap().to_string();
        assert!(err.contains("client.key: a client key without its certificate"), "{err}");
        std::fs::rename(dir.path().join("client.key"), dir.path().join("client.cert")).unwrap();
        let err = for_registry("x", Some(dir.path())).err().unwrap().to_string();
        assert!(err.contains("client.cert: a client certificate without its key"), "{err}");
        std::fs::remove_file(dir.path().join("client.cert")).unwrap();
        std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
        let err = for_registry("x", Some(dir.path())).err().unwrap().to_string();
        assert!(err.contains("ca.crt: holds no certificate") || err.contains("ca.crt: not PEM"), "{err}");
        let err = for_registry("x", Some(&dir.path().join("missing"))).err().unwrap().to_string();
        assert!(err.contains("missing: No such file"), "{err}");
    }
}
