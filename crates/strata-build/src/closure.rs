//! The closure: the set of store paths an image needs and the reference graph between them.
//!
//! Two sources give the same [`Closure`]:
//! - the Nix installation: its database read directly ([`Closure::from_nix_database`], one
//!   recursive query, read-only), else `nix path-info --json --recursive` (one process for
//!   the whole graph, validity included). Both answer from the same database; the direct read
//!   spares starting `nix`, about 40 ms (a third of a warm build), and steps aside (`None`)
//!   whenever it cannot answer for sure: no readable database, another schema, a root not
//!   registered, a store other than the local one. (SQLite reads a database in WAL mode only
//!   through its `-shm` file: a user who may not create it, as in a multi-user install, can
//!   read the database only while Nix has it open.) `nix` then answers, with its own errors.
//!   The same read gives the SBOM what the store registered of each path ([`registrations`]);
//! - a closure graph file, for use inside a Nix build where no daemon is reachable: the
//!   format `exportReferencesGraph` writes (path, deriver, reference count, references), the
//!   same with NAR hash and size before the deriver (`closureInfo`'s `registration`,
//!   `nix-store --dump-db`), or the JSON that `nix path-info --json` and structured attrs
//!   produce.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use strata_oci::digest::Digest;

use crate::store::{StorePath, STORE_DIR};

#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error("{key}: store path {path} does not exist")]
    Missing { key: String, path: StorePath },
    #[error("{key}: store path {path} is not valid (not registered in the Nix database)")]
    NotValid { key: String, path: StorePath },
    #[error("{key}: store path {path} is not in the closure graph {}", file.display())]
    NotInGraph { key: String, path: StorePath, file: PathBuf },
    #[error("Nix is needed to compute closures, but `nix` could not be run; install Nix, or pass a closure graph file (--closure-graph)")]
    NixMissing(#[source] std::io::Error),
    #[error("`nix path-info` failed: {0}")]
    NixFailed(String),
    #[error("cannot read closure graph {}", file.display())]
    ReadGraph { file: PathBuf, source: std::io::Error },
    #[error("closure graph {}, {}: {message}", file.display(), if *line == 0 { "as a whole".to_owned() } else { format!("line {line}") })]
    BadGraph { file: PathBuf, line: usize, message: String },
}

/// A reference graph over store paths. Every path it lists has all its references listed too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    references: BTreeMap<StorePath, BTreeSet<StorePath>>,
    /// Where the graph came from, for error messages: `None` for the Nix database.
    graph_file: Option<PathBuf>,
}

/// One entry of `nix path-info --json`: older Nix writes a list of these, newer an object
/// keyed by path (without the `path` field), the newest references without the store dir.
#[derive(Deserialize)]
struct PathInfo {
    path: Option<String>,
    #[serde(default)]
    references: Vec<String>,
    valid: Option<bool>,
}

impl Closure {
    /// The closure of `roots` (each given with the spec key that named it) in the local Nix
    /// store: from its database, else from `nix path-info`.
    pub fn from_nix(roots: &[(String, StorePath)]) -> Result<Closure, ClosureError> {
        if roots.is_empty() {
            return Ok(Closure::default());
        }
        for (key, path) in roots {
            if std::fs::symlink_metadata(path).is_err() {
                return Err(ClosureError::Missing { key: key.clone(), path: path.clone() });
            }
        }
        let unique: Vec<&StorePath> = roots.iter().map(|(_, p)| p).collect::<BTreeSet<_>>().into_iter().collect();
        if let Some(database) = local_nix_database() {
            if let Some(closure) = Closure::from_nix_database(&database, &unique) {
                return Ok(closure);
            }
            tracing::debug!("the Nix database {} did not answer; asking `nix path-info`", database.display());
        }
        Closure::from_nix_path_info(roots, &unique)
    }

    /// The closure of `roots` read from the Nix database file `database` (read-only, as
    /// SQLite lets a reader share a database that Nix writes), or `None` if it cannot answer:
    /// the file is missing or unreadable, its tables are not Nix's, a root is not registered.
    pub fn from_nix_database(database: &Path, roots: &[&StorePath]) -> Option<Closure> {
        let db = open_read_only(database)?;
        let placeholders = vec!["?"; roots.len()].join(",");
        // Every path reachable from the roots, then each with its references (none: NULL).
        let query = format!(
            "WITH RECURSIVE closure(id) AS (
                 SELECT id FROM ValidPaths WHERE path IN ({placeholders})
                 UNION SELECT Refs.reference FROM Refs JOIN closure ON Refs.referrer = closure.id)
             SELECT p.path, r.path FROM closure
                 JOIN ValidPaths p ON p.id = closure.id
                 LEFT JOIN Refs ON Refs.referrer = closure.id
                 LEFT JOIN ValidPaths r ON r.id = Refs.reference"
        );
        let mut statement = db.prepare(&query).ok()?;
        let rows = statement
            .query_map(rusqlite::params_from_iter(roots.iter().map(|p| p.as_str())), |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?)))
            .ok()?;
        let mut references: BTreeMap<StorePath, BTreeSet<StorePath>> = BTreeMap::new();
        for row in rows {
            let (path, reference) = row.ok()?;
            let refs = references.entry(StorePath::exactly(&path)?).or_default();
            if let Some(reference) = reference {
                refs.insert(StorePath::exactly(&reference)?);
            }
        }
        let complete = roots.iter().all(|r| references.contains_key(*r)) && references.values().flatten().all(|r| references.contains_key(r));
        complete.then_some(Closure { references, graph_file: None })
    }

    /// The closure of `roots` (`unique`: the same, once each) as `nix path-info` gives it.
    fn from_nix_path_info(roots: &[(String, StorePath)], unique: &[&StorePath]) -> Result<Closure, ClosureError> {
        let mut closure = Closure::default();
        let args: Vec<&str> = ["path-info", "--json", "--recursive"].into_iter().chain(unique.iter().map(|p| p.as_str())).collect();
        let output = crate::nix::run(&args, None).map_err(ClosureError::NixMissing)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // Name the root Nix complained about, with the key that named it.
            for (key, path) in roots {
                if stderr.contains(path.as_str()) && stderr.contains("is not valid") {
                    return Err(ClosureError::NotValid { key: key.clone(), path: path.clone() });
                }
            }
            return Err(ClosureError::NixFailed(stderr.trim().to_owned()));
        }
        let infos = parse_path_info_json(&output.stdout).map_err(|e| ClosureError::NixFailed(format!("unexpected output: {e}")))?;
        for (path, info) in infos {
            if info.valid == Some(false) {
                let key = roots.iter().find(|(_, p)| *p == path).map_or_else(|| "closure".to_owned(), |(k, _)| k.clone());
                return Err(ClosureError::NotValid { key, path });
            }
            closure.insert(path, &info.references);
        }
        Ok(closure)
    }

    /// Reads a closure graph file (registration format or `path-info` JSON).
    pub fn from_graph_file(file: &Path) -> Result<Closure, ClosureError> {
        let text = strata_oci::bounded::read_text(file, strata_oci::bounded::MAX_INPUT_SIZE)
            .map_err(|source| ClosureError::ReadGraph { file: file.to_owned(), source })?;
        Closure::from_graph_text(&text, file)
    }

    /// Reads a closure graph from `text`; `file` names where it came from, for errors. Every
    /// count in it is checked against what follows, and nothing is allocated from a count.
    pub fn from_graph_text(text: &str, file: &Path) -> Result<Closure, ClosureError> {
        let bad = |line: usize, message: String| ClosureError::BadGraph { file: file.to_owned(), line, message };
        let mut closure = Closure { graph_file: Some(file.to_owned()), ..Closure::default() };
        if matches!(text.trim_start().chars().next(), Some('[' | '{')) {
            for (path, info) in parse_path_info_json(text.as_bytes()).map_err(|e| bad(1, e))? {
                closure.insert(path, &info.references);
            }
        } else {
            let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
            while let Some((n, line)) = lines.next() {
                if line.is_empty() {
                    continue;
                }
                let path = StorePath::containing(line).map_err(|e| bad(n, e.to_string()))?;
                let (_, mut deriver) = lines.next().ok_or_else(|| bad(n + 1, "missing deriver line".into()))?;
                // `--dump-db`/closureInfo put the NAR hash and size before the deriver.
                if !deriver.is_empty() && !deriver.starts_with('/') {
                    lines.next().ok_or_else(|| bad(n + 2, "missing NAR size".into()))?;
                    deriver = lines.next().ok_or_else(|| bad(n + 3, "missing deriver line".into()))?.1;
                }
                let _ = deriver;
                let (n, count) = lines.next().ok_or_else(|| bad(n + 2, "missing reference count".into()))?;
                let count: usize = count.trim().parse().map_err(|_| bad(n, format!("{count:?} is not a reference count")))?;
                let mut refs = Vec::new();
                for _ in 0..count {
                    let (n, r) = lines.next().ok_or_else(|| bad(n, "fewer references than counted".into()))?;
                    StorePath::containing(r).map_err(|e| bad(n, e.to_string()))?;
                    refs.push(r.to_owned());
                }
                closure.insert(path, &refs);
            }
        }
        for (path, refs) in &closure.references {
            if let Some(missing) = refs.iter().find(|r| !closure.references.contains_key(*r)) {
                return Err(bad(0, format!("{path} references {missing}, which the graph does not list")));
            }
        }
        Ok(closure)
    }

    /// Every path of the graph with its direct references.
    pub fn graph(&self) -> &BTreeMap<StorePath, BTreeSet<StorePath>> {
        &self.references
    }

    fn insert(&mut self, path: StorePath, references: &[String]) {
        let refs = references
            .iter()
            .filter_map(|r| {
                let full = if r.starts_with('/') { r.clone() } else { format!("{STORE_DIR}/{r}") };
                StorePath::containing(&full).ok()
            })
            .collect();
        self.references.insert(path, refs);
    }

    /// Checks that `path` is in the graph; `key` names where it came from.
    pub fn check_root(&self, key: &str, path: &StorePath) -> Result<(), ClosureError> {
        if self.references.contains_key(path) {
            return Ok(());
        }
        Err(match &self.graph_file {
            Some(file) => ClosureError::NotInGraph { key: key.to_owned(), path: path.clone(), file: file.clone() },
            None => ClosureError::Missing { key: key.to_owned(), path: path.clone() },
        })
    }

    /// The direct references of `path` (possibly including itself).
    pub fn references(&self, path: &StorePath) -> &BTreeSet<StorePath> {
        static EMPTY: BTreeSet<StorePath> = BTreeSet::new();
        self.references.get(path).unwrap_or(&EMPTY)
    }

    /// Every path reachable from `roots`, the roots included.
    pub fn requisites<'a>(&self, roots: impl IntoIterator<Item = &'a StorePath>) -> BTreeSet<StorePath> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&StorePath> = roots.into_iter().collect();
        while let Some(p) = stack.pop() {
            if seen.insert(p.clone()) {
                stack.extend(self.references(p).iter().filter(|r| !seen.contains(*r)));
            }
        }
        seen
    }

    /// For each path of `set`, how many paths of `set` need it (itself included). The most
    /// needed paths are the best candidates for layers of their own.
    pub fn popularity(&self, set: &BTreeSet<StorePath>) -> BTreeMap<StorePath, usize> {
        let mut counts: BTreeMap<StorePath, usize> = set.iter().map(|p| (p.clone(), 0)).collect();
        for p in set {
            for r in self.requisites([p]) {
                if let Some(c) = counts.get_mut(&r) {
                    *c += 1;
                }
            }
        }
        counts
    }
}

/// What the local Nix database registered of a store path: the derivation that made it (if
/// it has one), its NAR hash (the one `nix-store --query --hash` prints) and its references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub deriver: Option<String>,
    pub nar_hash: Digest,
    pub references: BTreeSet<StorePath>,
}

/// The registrations of `paths` in the local Nix database, read-only as
/// [`Closure::from_nix_database`] reads it; `None` whenever it cannot answer for every path
/// (no readable database, another schema, a path not registered, a hash not Nix's SHA-256).
pub fn registrations(paths: &[&StorePath]) -> Option<BTreeMap<StorePath, Registration>> {
    let db = open_read_only(&local_nix_database()?)?;
    let mut found: BTreeMap<StorePath, Registration> = BTreeMap::new();
    // In batches: SQLite bounds the parameters of one statement.
    for batch in paths.chunks(500) {
        let placeholders = vec!["?"; batch.len()].join(",");
        let query = format!(
            "SELECT p.path, p.hash, p.deriver, r.path FROM ValidPaths p
                 LEFT JOIN Refs ON Refs.referrer = p.id
                 LEFT JOIN ValidPaths r ON r.id = Refs.reference
             WHERE p.path IN ({placeholders})"
        );
        let mut statement = db.prepare(&query).ok()?;
        let rows = statement
            .query_map(rusqlite::params_from_iter(batch.iter().map(|p| p.as_str())), |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, Option<String>>(2)?, row.get::<_, Option<String>>(3)?))
            })
            .ok()?;
        for row in rows {
            let (path, hash, deriver, reference) = row.ok()?;
            let path = StorePath::exactly(&path)?;
            let registration = match found.entry(path) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    // Nix keeps `sha256:` and 64 hexadecimal digits.
                    e.insert(Registration { deriver: deriver.filter(|d| !d.is_empty()), nar_hash: hash.parse().ok()?, references: BTreeSet::new() })
                }
            };
            if let Some(reference) = reference {
                registration.references.insert(StorePath::exactly(&reference)?);
            }
        }
    }
    paths.iter().all(|p| found.contains_key(*p)).then_some(found)
}

/// A Nix database opened read-only, waiting a little while Nix writes it; `None` if it cannot
/// be opened.
fn open_read_only(database: &Path) -> Option<rusqlite::Connection> {
    use rusqlite::{Connection, OpenFlags};
    let db = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).ok()?;
    db.busy_timeout(std::time::Duration::from_millis(100)).ok()?;
    Some(db)
}

/// The database of the local store `nix` would use, if it is the one at /nix/store: `None`
/// when `NIX_REMOTE` names another store (`ssh://…`, `local?root=…`). `NIX_STATE_DIR`
/// moves it, as it moves Nix's.
fn local_nix_database() -> Option<PathBuf> {
    let remote = std::env::var("NIX_REMOTE").unwrap_or_default();
    if !matches!(remote.as_str(), "" | "daemon" | "local" | "auto" | "unix:///nix/var/nix/daemon-socket/socket") {
        return None;
    }
    let state = std::env::var_os("NIX_STATE_DIR").map_or_else(|| PathBuf::from("/nix/var/nix"), PathBuf::from);
    Some(state.join("db/db.sqlite"))
}

fn parse_path_info_json(bytes: &[u8]) -> Result<Vec<(StorePath, PathInfo)>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Infos {
        List(Vec<PathInfo>),
        Map(BTreeMap<String, Option<PathInfo>>),
        /// Structured attrs: `{"closure": [...]}` (any key holding a list).
        Attrs(BTreeMap<String, serde_json::Value>),
    }
    let infos: Infos = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let with_path = |path: Option<String>, info: PathInfo| -> Result<(StorePath, PathInfo), String> {
        let path = path.or_else(|| info.path.clone()).ok_or("an entry has no \"path\"")?;
        Ok((StorePath::containing(&path).map_err(|e| e.to_string())?, info))
    };
    match infos {
        Infos::List(list) => list.into_iter().map(|i| with_path(None, i)).collect(),
        Infos::Map(map) => {
            map.into_iter().map(|(path, info)| with_path(Some(path), info.unwrap_or(PathInfo { path: None, references: vec![], valid: Some(false) }))).collect()
        }
        Infos::Attrs(attrs) => {
            let mut out = Vec::new();
            for value in attrs.into_values().filter(|v| v.is_array()) {
                let list: Vec<PathInfo> = serde_json::from_value(value).map_err(|e| e.to_string())?;
                for info in list {
                    out.push(with_path(None, info)?);
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str) -> StorePath {
        StorePath::containing(&format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
    }

    #[test]
    fn reads_registration_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("graph");
        let (app, lib) = (sp("app"), sp("lib"));
        std::fs::write(&file, format!("{app}\n/nix/store/x.drv\n2\n{app}\n{lib}\n{lib}\n\n0\n")).unwrap();
        let c = Closure::from_graph_file(&file).unwrap();
        std::fs::write(&file, format!("{app}\nabc123\n42\n/nix/store/x.drv\n2\n{app}\n{lib}\n{lib}\nabc\n1\n\n0\n")).unwrap();
        assert_eq!(Closure::from_graph_file(&file).unwrap().references, c.references, "with hash and size");
        assert_eq!(c.requisites([&app]).len(), 2);
        assert!(c.references(&app).contains(&app), "self-reference kept");
        let pop = c.popularity(&c.requisites([&app]));
        assert_eq!((pop[&lib], pop[&app]), (2, 1));
        assert!(matches!(c.check_root("roots[0]", &sp("other")), Err(ClosureError::NotInGraph { .. })));
    }

    #[test]
    fn reads_path_info_json_in_all_shapes() {
        let (app, lib) = (sp("app"), sp("lib"));
        let dir = tempfile::tempdir().unwrap();
        let shapes = [
            format!(r#"[{{"path":"{app}","references":["{lib}"]}},{{"path":"{lib}","references":[]}}]"#),
            format!(r#"{{"{app}":{{"references":["{}"]}},"{lib}":{{"references":[]}}}}"#, lib.base_name()),
            format!(r#"{{"closure":[{{"path":"{app}","references":["{lib}"]}},{{"path":"{lib}","references":[]}}]}}"#),
        ];
        for (i, text) in shapes.iter().enumerate() {
            let file = dir.path().join(format!("g{i}.json"));
            std::fs::write(&file, text).unwrap();
            let c = Closure::from_graph_file(&file).unwrap();
            assert_eq!(c.requisites([&app]), [app.clone(), lib.clone()].into(), "shape {i}");
        }
    }

    #[test]
    fn rejects_incomplete_graphs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("graph");
        std::fs::write(&file, format!("{}\n\n1\n{}\n", sp("app"), sp("lib"))).unwrap();
        let err = Closure::from_graph_file(&file).unwrap_err().to_string();
        assert!(err.contains("does not list"), "{err}");
        std::fs::write(&file, format!("{}\n\nmany\n", sp("app"))).unwrap();
        assert!(Closure::from_graph_file(&file).unwrap_err().to_string().contains("line 3"));
        // A count far beyond the file is an error, not an allocation that aborts.
        std::fs::write(&file, format!("{}\n\n99999999999999999\n{}\n", sp("app"), sp("app"))).unwrap();
        assert!(Closure::from_graph_file(&file).unwrap_err().to_string().contains("fewer references than counted"));
    }
}
