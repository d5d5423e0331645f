//! What containers-registries.conf(5) says of a registry (the file podman, skopeo and buildah
//! read), of which strata honours two settings of a `[[registry]]`:
//!
//! - `insecure = true`: TLS not verified, plain HTTP allowed, as `--tls-verify=false`
//!   (which, given either way, overrides the file, as in skopeo);
//! - `blocked = true`: no image is read from it (pushes are not blocked, as in
//!   containers/image).
//!
//! An entry applies to the references its `prefix` (else its `location`) begins, at a `/`, `:`
//! or `@` (`*.example.com` applies to every host under `example.com`); of several, the
//! longest, and of equal ones, the last read. Version 1's `[registries.insecure]` and
//! `[registries.block]` lists are read as entries for whole registries. Mirrors, aliases and
//! search registries are not used: strata's references are complete.
//!
//! The files: `$CONTAINERS_REGISTRIES_CONF`, else `~/.config/containers/registries.conf` if
//! there is one, else `/etc/containers/registries.conf`; then the drop-ins, `*.conf` of
//! `/etc/containers/registries.conf.d` and `~/.config/containers/registries.conf.d`, each
//! directory in the order of names. Each is read to at most 1 MiB; one that is not TOML is
//! an error naming it, as in podman.

use std::path::{Path, PathBuf};

/// The most a registries.conf file may hold: the system's, with its comments, is 4 KiB.
const MAX_CONF_SIZE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", path.display())]
pub struct ConfError {
    pub path: PathBuf,
    pub why: String,
}

/// One `[[registry]]` (or a version 1 list's registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub prefix: String,
    pub insecure: bool,
    pub blocked: bool,
    /// The file it is in, for messages.
    pub file: PathBuf,
}

/// Every entry read, in the order read.
#[derive(Debug, Default)]
pub(crate) struct RegistriesConf {
    entries: Vec<Entry>,
}

impl RegistriesConf {
    /// The entries of the usual files (see the module's essay).
    pub(crate) fn load() -> Result<RegistriesConf, ConfError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let user = var("HOME").map(|home| home.join(".config/containers"));
        let main = var("CONTAINERS_REGISTRIES_CONF").unwrap_or_else(|| {
            user.as_ref().map(|u| u.join("registries.conf")).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("/etc/containers/registries.conf"))
        });
        let mut files = vec![main];
        for dir in std::iter::once(PathBuf::from("/etc/containers/registries.conf.d")).chain(user.map(|u| u.join("registries.conf.d"))) {
            let mut dropins: Vec<PathBuf> =
                std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "conf")).collect();
            dropins.sort();
            files.extend(dropins);
        }
        RegistriesConf::read(&files)
    }

    /// The entries of `files`, in order; a file that is missing has none.
    pub(crate) fn read(files: &[PathBuf]) -> Result<RegistriesConf, ConfError> {
        let mut conf = RegistriesConf::default();
        for file in files {
            let fail = |why: String| ConfError { path: file.clone(), why };
            let text = match strata_oci::bounded::read_text(file, MAX_CONF_SIZE) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.map_err(|e| fail(e.to_string()))?,
            };
            let parsed: File = toml::from_str(&text).map_err(|e| fail(format!("not a registries.conf: {}", e.message())))?;
            conf.add(parsed, file);
        }
        Ok(conf)
    }

    fn add(&mut self, parsed: File, file: &Path) {
        let entry = |prefix: String, insecure, blocked| Entry { prefix, insecure, blocked, file: file.to_owned() };
        for registry in parsed.registry {
            if let Some(prefix) = registry.prefix.or(registry.location).filter(|p| !p.is_empty()) {
                self.entries.push(entry(prefix, registry.insecure, registry.blocked));
            }
        }
        let v1 = parsed.registries;
        self.entries.extend(v1.insecure.registries.into_iter().map(|r| entry(r, true, false)));
        self.entries.extend(v1.block.registries.into_iter().map(|r| entry(r, false, true)));
    }

    /// The entry for `reference` (`HOST/REPOSITORY`), if any.
    pub(crate) fn find(&self, reference: &str) -> Option<&Entry> {
        let mut best: Option<(usize, &Entry)> = None;
        for entry in &self.entries {
            if let Some(length) = matching(reference, &entry.prefix) {
                if best.is_none_or(|(longest, _)| length >= longest) {
                    best = Some((length, entry));
                }
            }
        }
        best.map(|(_, entry)| entry)
    }
}

/// How much of `reference` `prefix` matches, if it does: all of it, or up to a `/`, `:` or
/// `@`; a `*.` prefix, any host under it.
fn matching(reference: &str, prefix: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = reference.split('/').next().unwrap_or_default();
        return host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1).then_some(prefix.len());
    }
    let rest = reference.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(['/', ':', '@'])).then_some(prefix.len())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct File {
    registry: Vec<RegistryTable>,
    registries: V1,
}

#[derive(serde::Deserialize)]
struct RegistryTable {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct V1 {
    insecure: V1List,
    block: V1List,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct V1List {
    registries: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_and_the_last_file_win() {
        let dir = tempfile::tempdir().unwrap();
        let (main, dropin, missing) = (dir.path().join("registries.conf"), dir.path().join("50-dropin.conf"), dir.path().join("missing.conf"));
        std::fs::write(
            &main,
            "unqualified-search-registries = [\"docker.io\"]\n[aliases]\n\"x\" = \"docker.io/library/x\"\n\
             [[registry]]\nlocation = \"reg.example:5000\"\ninsecure = true\n\
             [[registry]]\nprefix = \"reg.example:5000/private\"\nlocation = \"reg.example:5000/private\"\nblocked = true\n\
             [[registry]]\nprefix = \"*.corp.example\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"mirror.example\"\n",
        )
        .unwrap();
        std::fs::write(&dropin, "[registries.block]\nregistries = [\"bad.example\"]\n[[registry]]\nlocation = \"reg.example:5000\"\n").unwrap();
        let conf = RegistriesConf::read(&[main, dropin.clone(), missing]).unwrap();
        let find = |r: &str| conf.find(r).map(|e| (e.insecure, e.blocked));
        assert_eq!(find("reg.example:5000/app"), Some((false, false)), "the drop-in, read last, wins");
        assert_eq!(find("reg.example:5000/private/app"), Some((false, true)), "the longest prefix wins");
        assert_eq!(find("reg.example:5000/privateer"), Some((false, false)), "prefixes end at a / : or @");
        assert_eq!(find("build.corp.example/app"), Some((true, false)));
        assert_eq!(find("corp.example/app"), None, "a wildcard is for hosts under it");
        assert_eq!(find("bad.example/app"), Some((false, true)));
        assert_eq!(find("reg.example:50001/app"), None);

        std::fs::write(&dropin, "[[registry]\nlocation = 1").unwrap();
        let err = RegistriesConf::read(&[dropin]).unwrap_err().to_string();
        assert!(err.contains("50-dropin.conf: not a registries.conf"), "{err}");
    }
}
