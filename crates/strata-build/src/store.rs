//! Nix store paths.
//!
//! A store path is `/nix/store/<32 base-32 chars>-<name>`. Users hand us store paths, paths
//! inside them (`/nix/store/…-hello/bin/hello`), and strings that merely mention them (an
//! `Env` value such as `PATH=/nix/store/…-hello/bin`); this module recognises all three.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// The store directory. strata only handles the default store.
pub const STORE_DIR: &str = "/nix/store";

/// Nix's base-32 alphabet (no e, o, u, t) and the characters a store name may hold.
static STORE_PATH_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+").expect("static regex"));

/// A path directly below the store directory, e.g. `/nix/store/…-hello-2.12`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

/// Why a string is not a store path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path:?} is not in the Nix store ({STORE_DIR})")]
pub struct NotInStore {
    pub path: String,
}

impl StorePath {
    /// The store path that `path` is, or lies inside of.
    pub fn containing(path: &str) -> Result<StorePath, NotInStore> {
        let not_in_store = || NotInStore { path: path.to_owned() };
        let found = STORE_PATH_RE.find(path).ok_or_else(not_in_store)?;
        let rest = &path[found.end()..];
        if found.start() != 0 || !(rest.is_empty() || rest.starts_with('/')) {
            return Err(not_in_store());
        }
        Ok(StorePath(found.as_str().to_owned()))
    }

    /// The store path that `path` is exactly (not a file inside one), if it is one.
    pub fn exactly(path: &str) -> Option<StorePath> {
        StorePath::containing(path).ok().filter(|p| p.as_str() == path)
    }

    /// Every store path mentioned anywhere in `text`, in order of appearance.
    pub fn find_all(text: &str) -> impl Iterator<Item = StorePath> + '_ {
        STORE_PATH_RE.find_iter(text).map(|m| StorePath(m.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `hello-2.12` for `/nix/store/<hash>-hello-2.12`.
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1 + 33..]
    }

    /// `<hash>-hello-2.12`: the path's entry below the store directory.
    pub fn base_name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..]
    }
}

/// A store path's name (`hello-2.12`, without the hash) as Nix's `parseDrvName` splits it:
/// the package name, and the version, which starts at the first `-` followed by something
/// other than a letter (`glibc-2.36-bin`: `glibc`, `2.36-bin`).
pub fn package_and_version(name: &str) -> (&str, Option<&str>) {
    let bytes = name.as_bytes();
    match (0..bytes.len()).find(|&i| bytes[i] == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic())) {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::path::Path> for StorePath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "/nix/store/r7815vi79spcjkiidy1ypiwdj6xynisz-hello-2.12";

    #[test]
    fn accepts_store_paths_and_paths_inside_them() {
        assert_eq!(StorePath::containing(HELLO).unwrap().as_str(), HELLO);
        let inner = StorePath::containing(&format!("{HELLO}/bin/hello")).unwrap();
        assert_eq!(inner.as_str(), HELLO);
        assert_eq!(inner.name(), "hello-2.12");
        assert_eq!(inner.base_name(), "r7815vi79spcjkiidy1ypiwdj6xynisz-hello-2.12");
    }

    #[test]
    fn names_split_into_package_and_version_as_nix_does() {
        for (name, package, version) in [
            ("hello-2.12", "hello", Some("2.12")),
            ("glibc-2.36-bin", "glibc", Some("2.36-bin")),
            ("bench-app-1", "bench-app", Some("1")),
            ("source", "source", None),
            ("xz-utils-5.4", "xz-utils", Some("5.4")),
        ] {
            assert_eq!(package_and_version(name), (package, version), "{name}");
        }
    }

    #[test]
    fn rejects_paths_outside_the_store() {
        for bad in ["/usr/bin/hello", "nix/store/x", "/nix/store", "/nix/store/tooshort-hello", &format!("/tmp{HELLO}"), &format!("{HELLO}~x")] {
            assert!(StorePath::containing(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn finds_store_paths_inside_strings() {
        let env = format!("PATH={HELLO}/bin:/nix/store/m7ddklsgygm9fbhf3a15jzqsm6iwcrvg-glibc-2.36/lib");
        let found: Vec<_> = StorePath::find_all(&env).map(|p| p.name().to_owned()).collect();
        assert_eq!(found, ["hello-2.12", "glibc-2.36"]);
    }
}
