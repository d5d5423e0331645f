//! What containers-registries.conf(5) says of a registry (the file podman, skopeo and buildah
//! read), of which strata honours these settings of a `[[registry]]`:
//!
//! - `insecure = true`: TLS not verified, plain HTTP allowed, as `--tls-verify=false`
//!   (which, given either way, overrides the file, as in skopeo);
//! - `blocked = true`: no image is read from it (pushes are not blocked, as in
//!   containers/image);
//! - `location`, and `[[registry.mirror]]` tables (each a `location`, `insecure` and
//!   `pull-from-mirror`, with the registry's `mirror-by-digest-only`): where an image is
//!   read from ([`RegistriesConf::pull_sources`]): each mirror that takes the reference (by
//!   digest, by tag) in the file's order, then the registry's `location`, the reference's
//!   `prefix` replaced by it. As in containers/image, only pulls go there: a push, a
//!   signature and a referrer go to the reference as written.
//!
//! An entry applies to the references its `prefix` (else its `location`) begins, at a `/`, `:`
//! or `@` (`*.example.com` applies to every host under `example.com`); of several, the
//! longest, and of equal ones, the last read. Version 1's `[registries.insecure]` and
//! `[registries.block]` lists are read as entries for whole registries. Aliases and search
//! registries are not used: strata's references are complete.
//!
//! The files: `$CONTAINERS_REGISTRIES_CONF`, else `~/.config/containers/registries.conf` if
//! there is one, else `/etc/containers/registries.conf`; then the drop-ins, `*.conf` of
//! `/etc/containers/registries.conf.d` and `~/.config/containers/registries.conf.d`, each
//! directory in the order of names. Each is read to at most 1 MiB; one that is not TOML, or
//! whose mirrors are malformed, is an error naming it, as in podman.

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
    /// Where the references under `prefix` are; none: where they say (a `*.` prefix without
    /// a location, or a version 1 list's registry).
    pub location: Option<String>,
    pub insecure: bool,
    pub blocked: bool,
    pub mirrors: Vec<Mirror>,
    /// Mirrors serve references by digest only.
    pub mirror_by_digest_only: bool,
    /// The file it is in, for messages.
    pub file: PathBuf,
}

/// One `[[registry.mirror]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from: PullFrom,
}

/// Which references a mirror serves (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

/// A place to read an image from: a registry's repository (`HOST/REPOSITORY`), and whether
/// TLS is optional there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PullSource {
    pub name: String,
    pub insecure: bool,
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
            conf.add(parsed, file).map_err(fail)?;
        }
        Ok(conf)
    }

    fn add(&mut self, parsed: File, file: &Path) -> Result<(), String> {
        let entry = |prefix: String, insecure, blocked| Entry {
            prefix,
            location: None,
            insecure,
            blocked,
            mirrors: Vec::new(),
            mirror_by_digest_only: false,
            file: file.to_owned(),
        };
        for registry in parsed.registry {
            // As containers/image checks them: a file podman refuses is refused here too.
            let location = registry.location.filter(|l| !l.is_empty());
            let prefix = match (registry.prefix.filter(|p| !p.is_empty()), &location) {
                (Some(prefix), None) if !prefix.starts_with("*.") => {
                    return Err(format!("[[registry]] {prefix:?} has no location (only a prefix of the form *.DOMAIN may go without)"))
                }
                (Some(prefix), _) => prefix,
                (None, Some(location)) => location.clone(),
                (None, None) => return Err("a [[registry]] has neither a prefix nor a location".into()),
            };
            let mut mirrors = Vec::new();
            for mirror in registry.mirror {
                let bad = |why: &str| format!("[[registry]] {prefix:?}: a mirror {why}");
                if mirror.location.is_empty() {
                    return Err(bad("has no location"));
                }
                let pull_from = match mirror.pull_from_mirror.as_deref() {
                    Some(v) if !v.is_empty() && registry.mirror_by_digest_only => {
                        return Err(bad("has pull-from-mirror where the registry has mirror-by-digest-only"))
                    }
                    None | Some("" | "all") => PullFrom::All,
                    Some("digest-only") => PullFrom::DigestOnly,
                    Some("tag-only") => PullFrom::TagOnly,
                    Some(other) => return Err(bad(&format!("has pull-from-mirror {other:?}, not all, digest-only or tag-only"))),
                };
                mirrors.push(Mirror { location: mirror.location, insecure: mirror.insecure, pull_from });
            }
            self.entries.push(Entry {
                location,
                mirrors,
                mirror_by_digest_only: registry.mirror_by_digest_only,
                ..entry(prefix, registry.insecure, registry.blocked)
            });
        }
        let v1 = parsed.registries;
        self.entries.extend(v1.insecure.registries.into_iter().map(|r| entry(r, true, false)));
        self.entries.extend(v1.block.registries.into_iter().map(|r| entry(r, false, true)));
        Ok(())
    }

    /// The entry for `reference` (`HOST/REPOSITORY`), if any.
    pub(crate) fn find(&self, reference: &str) -> Option<&Entry> {
        self.find_with_length(reference).map(|(entry, _)| entry)
    }

    /// The entry for `reference`, and how many of its bytes its prefix covers.
    fn find_with_length(&self, reference: &str) -> Option<(&Entry, usize)> {
        let mut best: Option<(&Entry, usize)> = None;
        for entry in &self.entries {
            if let Some(covered) = matching(reference, &entry.prefix) {
                if best.is_none_or(|(longest, _)| entry.prefix.len() >= longest.prefix.len()) {
                    best = Some((entry, covered));
                }
            }
        }
        best
    }

    /// Where to read `reference` (`HOST/REPOSITORY`, named `by_digest` or by tag) from, in
    /// order: the mirrors that serve it, then its registry's location. Without an entry, the
    /// reference itself.
    pub(crate) fn pull_sources(&self, reference: &str, by_digest: bool) -> Vec<PullSource> {
        let Some((entry, covered)) = self.find_with_length(reference) else {
            return vec![PullSource { name: reference.to_owned(), insecure: false }];
        };
        let rest = &reference[covered..];
        let serves = |mirror: &Mirror| match mirror.pull_from {
            PullFrom::All => by_digest || !entry.mirror_by_digest_only,
            PullFrom::DigestOnly => by_digest,
            PullFrom::TagOnly => !by_digest,
        };
        let mirrors = entry.mirrors.iter().filter(|m| serves(m)).map(|m| PullSource { name: format!("{}{rest}", m.location), insecure: m.insecure });
        let primary = PullSource { name: entry.location.as_ref().map_or_else(|| reference.to_owned(), |l| format!("{l}{rest}")), insecure: entry.insecure };
        mirrors.chain(std::iter::once(primary)).collect()
    }
}

/// How many bytes of `reference` `prefix` covers, if it matches: all of it, or up to a `/`,
/// `:` or `@`; a `*.` prefix, the host, if it is under the prefix's domain.
fn matching(reference: &str, prefix: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = reference.split('/').next().unwrap_or_default();
        return host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1).then_some(host.len());
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
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
    #[serde(default)]
    mirror_by_digest_only: bool,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
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

    #[test]
    fn pulls_go_to_the_mirrors_that_serve_them_then_to_the_location() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registries.conf");
        std::fs::write(
            &file,
            "[[registry]]\nlocation = \"docker.io\"\n\
             [[registry.mirror]]\nlocation = \"all.example\"\n\
             [[registry.mirror]]\nlocation = \"digests.example/hub\"\npull-from-mirror = \"digest-only\"\n\
             [[registry.mirror]]\nlocation = \"tags.example:5000\"\ninsecure = true\npull-from-mirror = \"tag-only\"\n\
             [[registry]]\nprefix = \"example.com/foo\"\nlocation = \"internal.example/bar\"\ninsecure = true\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = \"cache.example/foo\"\n\
             [[registry]]\nprefix = \"*.corp.example\"\n[[registry.mirror]]\nlocation = \"corp-mirror.example\"\n",
        )
        .unwrap();
        let conf = RegistriesConf::read(&[file]).unwrap();
        let sources = |reference: &str, by_digest: bool| -> Vec<(String, bool)> {
            conf.pull_sources(reference, by_digest).into_iter().map(|s| (s.name, s.insecure)).collect()
        };
        let s = |name: &str, insecure: bool| (name.to_owned(), insecure);
        assert_eq!(
            sources("docker.io/library/alpine", false),
            [s("all.example/library/alpine", false), s("tags.example:5000/library/alpine", true), s("docker.io/library/alpine", false)]
        );
        assert_eq!(
            sources("docker.io/library/alpine", true),
            [s("all.example/library/alpine", false), s("digests.example/hub/library/alpine", false), s("docker.io/library/alpine", false)]
        );
        assert_eq!(sources("example.com/foo/app", false), [s("internal.example/bar/app", true)], "mirror-by-digest-only: a tag goes to the location");
        assert_eq!(sources("example.com/foo/app", true), [s("cache.example/foo/app", false), s("internal.example/bar/app", true)]);
        assert_eq!(sources("example.com/foobar/app", true), [s("example.com/foobar/app", false)], "no entry: the reference itself");
        assert_eq!(
            sources("build.corp.example/team/app", false),
            [s("corp-mirror.example/team/app", false), s("build.corp.example/team/app", false)],
            "a wildcard's mirror takes the host's place; without a location, the reference is its own"
        );
    }

    /// What containers/image refuses in a registries.conf is refused, naming the file.
    #[test]
    fn malformed_mirrors_and_locations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.conf");
        for (text, why) in [
            ("[[registry]]\nprefix = \"example.com/foo\"\n", "has no location"),
            ("[[registry]]\ninsecure = true\n", "neither a prefix nor a location"),
            ("[[registry]]\nlocation = \"example.com\"\n[[registry.mirror]]\ninsecure = true\n", "a mirror has no location"),
            ("[[registry]]\nlocation = \"example.com\"\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"sometimes\"\n", "\"sometimes\""),
            (
                "[[registry]]\nlocation = \"example.com\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"all\"\n",
                "where the registry has mirror-by-digest-only",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = RegistriesConf::read(std::slice::from_ref(&file)).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: ", file.display())) && err.contains(why), "{text}: {err}");
        }
    }
}
