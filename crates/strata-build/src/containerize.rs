//! Environments as containers (`strata containerize`): a manifest of packages, variables and
//! a start hook, turned into an image the way flox users expect.
//!
//! Two manifest formats are read: flox's own `.flox/env/manifest.toml` ([`flox`]), and
//! strata's (`[install]` of store paths or flake installables, `[vars]`, `[hook]`,
//! `[container]` with the image's name and config). Both become one [`Definition`], which
//! becomes a [`ValidSpec`] (the packages' store paths are closure roots, the variables go
//! into `Env`, the hook becomes an entrypoint wrapper) plus one environment layer that strata
//! makes itself:
//!
//! - the merged profile at [`PROFILE`]: a symlink tree over all packages, as nixpkgs'
//!   `buildEnv` makes it (a directory only one package has is one link to it; directories
//!   several packages share are real directories, merged recursively; on a clash the package
//!   with the lowest `priority` wins, then the install name that sorts first, with a
//!   warning); its `bin` is on `PATH`;
//! - `/tmp` (mode 1777), `/root`, the user's home, and `/etc/passwd` and `/etc/group`
//!   naming root, the user (uid/gid 1000) and nobody;
//! - the profile scripts (flox's `[profile]`) at [`PROFILE_SCRIPT`], which interactive shells
//!   read (`ENV` for POSIX shells, `~/.bashrc` for bash).
//!
//! The hook runs as `sh -c '<hook>; exec "$@"' strata-activate CMD...`: it runs first, in
//! the container's environment, then the command replaces the shell so signals reach it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use strata_oci::image::Image;

use crate::assemble::{assemble, AssembleError, ClosureSource};
use crate::layer::{Entry, LayerRecipe};
use crate::spec::{parse_toml, ImageConfigSpec, Spec, ValidSpec, DEFAULT_MAX_LAYERS};
use crate::store::{package_and_version, StorePath};

pub mod flox;

/// Where the merged profile lives in the image: Nix's default profile.
pub const PROFILE: &str = "/nix/var/nix/profiles/default";
/// The profile scripts interactive shells read.
pub const PROFILE_SCRIPT: &str = "/etc/strata-profile.sh";
const USER_ID: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ContainerizeError {
    #[error("cannot read manifest {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("manifest {path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

/// strata's manifest, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Install name -> a store path, or a flake installable such as `.#hello`.
    #[serde(default)]
    pub install: BTreeMap<String, String>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub hook: Hook,
    pub container: ContainerSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    #[serde(rename = "on-activate")]
    pub on_activate: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    pub name: String,
    pub tag: Option<String>,
    pub created: Option<String>,
    pub max_layers: Option<usize>,
    /// A non-root user to run as.
    pub user: Option<String>,
    #[serde(default)]
    pub config: ImageConfigSpec,
}

/// An environment as either manifest format says it, its packages not yet resolved.
#[derive(Debug, Clone)]
pub struct Definition {
    pub packages: Vec<PackageDef>,
    pub vars: BTreeMap<String, String>,
    pub on_activate: Option<String>,
    /// Shell code interactive shells read at start.
    pub profile: Option<String>,
    pub name: String,
    pub tag: Option<String>,
    pub created: Option<String>,
    pub max_layers: Option<usize>,
    /// A non-root user to run as.
    pub user: Option<String>,
    pub config: ImageConfigSpec,
    /// Where relative flake references are resolved.
    pub dir: PathBuf,
}

/// One package of the environment.
#[derive(Debug, Clone)]
pub struct PackageDef {
    /// Its key in the manifest, for messages (`install.hello`).
    pub key: String,
    /// A store path (`/nix/…`) or a flake installable (`nixpkgs#hello`, `.#tool^out,man`).
    pub source: String,
    /// On a clash in the profile, the lowest wins (flox's default: 5).
    pub priority: u64,
    /// A version the package must have (flox's `version`), checked once it is built.
    pub version: Option<String>,
}

impl Manifest {
    fn into_definition(self, dir: &Path) -> Definition {
        let c = self.container;
        Definition {
            packages: self
                .install
                .into_iter()
                .map(|(name, source)| PackageDef { key: format!("install.{name}"), source, priority: DEFAULT_PRIORITY, version: None })
                .collect(),
            vars: self.vars,
            on_activate: self.hook.on_activate,
            profile: None,
            name: c.name,
            tag: c.tag,
            created: c.created,
            max_layers: c.max_layers,
            user: c.user,
            config: c.config,
            dir: dir.to_owned(),
        }
    }
}

/// flox's default package priority.
pub const DEFAULT_PRIORITY: u64 = 5;

/// How `strata containerize` was asked to read the manifest.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The image tag, over the manifest's.
    pub tag: Option<String>,
    /// Labels added to the config (flox's `--label`).
    pub labels: BTreeMap<String, String>,
    /// The nixpkgs flake a flox manifest's `pkg-path`s are resolved in (default `nixpkgs`,
    /// the flake registry's entry).
    pub nixpkgs: Option<String>,
}

/// A manifest made ready for the pipeline: the spec, and the environment layer to add on top.
pub struct Environment {
    pub spec: ValidSpec,
    entries: Vec<Entry>,
    flox: bool,
}

impl Environment {
    /// Reads `manifest`, flox's format or strata's (told apart by flox's top-level `version`
    /// or `schema-version`), builds the packages it names with Nix, and prepares the image.
    pub fn load(manifest: &Path, options: &LoadOptions) -> Result<Environment, ContainerizeError> {
        let invalid = |key: &str, message: String| ContainerizeError::Invalid { path: manifest.to_owned(), key: key.to_owned(), message };
        let text = strata_oci::bounded::read_text(manifest, strata_oci::bounded::MAX_INPUT_SIZE)
            .map_err(|source| ContainerizeError::Read { path: manifest.to_owned(), source })?;
        let table: toml::Table = parse_toml(&text).map_err(|e| invalid(&e.key, e.message))?;
        let is_flox = table.contains_key("version") || table.contains_key("schema-version");
        let definition = if is_flox {
            flox::definition(&text, manifest, options.nixpkgs.as_deref().unwrap_or("nixpkgs")).map_err(|(key, message)| invalid(&key, message))?
        } else {
            let dir = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            parse_toml::<Manifest>(&text).map_err(|e| invalid(&e.key, e.message))?.into_definition(dir)
        };
        let mut environment = Environment::of(definition, options).map_err(|(key, message)| invalid(&key, message))?;
        environment.flox = is_flox;
        Ok(environment)
    }

    /// Whether the manifest was flox's.
    pub fn is_flox(&self) -> bool {
        self.flox
    }

    /// The image of a definition: its packages built, the spec and the environment layer.
    fn of(d: Definition, options: &LoadOptions) -> Result<Environment, (String, String)> {
        let mut packages = Vec::new();
        for package in &d.packages {
            for path in resolve_package(&package.source, &d.dir).map_err(|message| (package.key.clone(), message))? {
                check_version(&path, package.version.as_deref()).map_err(|message| (format!("{}.version", package.key), message))?;
                packages.push((package.key.clone(), package.priority, path));
            }
        }
        // The profile's winner on a clash comes first: lowest priority, then install name.
        packages.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let profile_bin = |name: &str| packages.iter().find(|(_, _, p)| Path::new(p.as_str()).join("bin").join(name).exists());
        let shell = profile_bin("sh").or_else(|| profile_bin("bash")).map(|(_, _, p)| {
            let sh = Path::new(p.as_str()).join("bin/sh");
            if sh.exists() {
                sh.display().to_string()
            } else {
                format!("{p}/bin/bash")
            }
        });

        let mut config = d.config.clone();
        let mut env = vec![format!("PATH={PROFILE}/bin:{PROFILE}/sbin")];
        env.extend(d.vars.iter().map(|(k, v)| format!("{k}={v}")));
        if d.profile.is_some() {
            env.push(format!("ENV={PROFILE_SCRIPT}"));
        }
        env.extend(config.env.take().unwrap_or_default());
        config.env = Some(merge_env(env));
        if !options.labels.is_empty() {
            config.labels.get_or_insert_with(BTreeMap::new).extend(options.labels.clone());
        }
        if config.cmd.is_none() && config.entrypoint.is_none() {
            config.cmd = shell.clone().map(|sh| vec![sh]);
        }
        let needs_shell =
            |key: &str| (key.to_owned(), format!("{key} needs a shell, and no package installed has bin/sh or bin/bash: install one (bash, busybox, dash)"));
        if let Some(hook) = &d.on_activate {
            let Some(sh) = &shell else { return Err(needs_shell("hook.on-activate")) };
            let mut entrypoint = vec![sh.clone(), "-c".to_owned(), format!("{hook}\nexec \"$@\""), "strata-activate".to_owned()];
            entrypoint.extend(config.entrypoint.take().unwrap_or_default());
            config.entrypoint = Some(entrypoint);
        }
        if d.profile.is_some() && shell.is_none() {
            return Err(needs_shell("profile"));
        }
        // A user name gets a home and an /etc/passwd entry; root and numeric ids
        // (`1000`, `1000:1000`) are the config's alone.
        let named_user = match d.user.as_deref() {
            None => None,
            Some(user) if user == "root" || user.split(':').all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())) => {
                config.user = Some(user.to_owned());
                None
            }
            Some(user) if valid_user_name(user) => {
                config.user = Some(user.to_owned());
                Some(user)
            }
            Some(user) => return Err(("container.user".to_owned(), format!("{user:?} is not a valid user name, nor a uid[:gid]"))),
        };
        let max_layers = d.max_layers.unwrap_or(DEFAULT_MAX_LAYERS);
        if max_layers < 2 {
            return Err(("container.max_layers".to_owned(), format!("{max_layers} is too small: an environment needs at least 2 layers")));
        }

        let spec = Spec {
            name: d.name.clone(),
            tag: options.tag.clone().or_else(|| d.tag.clone()),
            created: d.created.clone(),
            mtime: None,
            architecture: None,
            // One layer is the environment layer.
            max_layers: Some(max_layers - 1),
            from_image: None,
            roots: packages.iter().map(|(_, _, p)| p.to_string()).collect(),
            copy_to_root: vec![],
            link_to_root: vec![],
            modes_files: vec![],
            layers: vec![],
            perms: vec![],
            config,
            initialize_nix_database: false,
            nix_uid: None,
            nix_gid: None,
            max_store_layers: None,
            include_store_paths: true,
            keep_contents_dirlinks: false,
            config_paths: Default::default(),
        };
        // The spec's image keys live in the manifest's [container] table.
        let spec = spec.validate().map_err(|e| {
            let e = if matches!(e.key.as_str(), "name" | "tag" | "created") || e.key.starts_with("config") { e.within("container") } else { e };
            (e.key, e.message)
        })?;
        let resolved: Vec<(String, StorePath)> = packages.into_iter().map(|(key, _, path)| (key, path)).collect();
        let entries = environment_entries(&resolved, named_user, shell.as_deref(), d.profile.as_deref()).map_err(|e| ("install".to_owned(), e))?;
        Ok(Environment { spec, entries, flox: false })
    }

    /// Plans the image: the packages' closures, then the environment layer on top.
    pub fn plan(self, source: &ClosureSource) -> Result<Image<LayerRecipe>, AssembleError> {
        let mtime = self.spec.mtime;
        let mut image = assemble(self.spec, source, None, &[])?;
        image.layers.push(LayerRecipe::new(vec![], self.entries, &[], mtime, format!("environment: profile at {PROFILE}, /etc, /tmp"))?);
        Ok(image)
    }
}

/// A store path as given, or the outputs of a flake installable built with Nix in `dir`.
fn resolve_package(value: &str, dir: &Path) -> Result<Vec<StorePath>, String> {
    if value.starts_with('/') {
        let path = StorePath::containing(value).map_err(|e| e.to_string())?;
        if std::fs::symlink_metadata(path.as_str()).is_err() {
            return Err(format!("store path {path} does not exist"));
        }
        return Ok(vec![path]);
    }
    let outputs = match crate::nix::build_outputs(value, Some(dir)) {
        Err(e) => return Err(format!("building {value:?} needs Nix, which could not be run ({e})")),
        Ok(Err(stderr)) => {
            let why = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_owned();
            return Err(format!("cannot build {value:?} in {}: {why}", dir.display()));
        }
        Ok(Ok(outputs)) => outputs,
    };
    outputs.iter().map(|out| StorePath::containing(&out.to_string_lossy()).map_err(|e| e.to_string())).collect()
}

/// A package built must have the version the manifest asks for: a plain version (`2.12`)
/// matches that version and its refinements (`2.12.1`); a semver range (`^2`, `>=1.4`) is
/// left to flox's catalog, which strata does not have: it is not checked, with a warning.
fn check_version(path: &StorePath, wanted: Option<&str>) -> Result<(), String> {
    let Some(wanted) = wanted else { return Ok(()) };
    if wanted.contains(['^', '~', '<', '>', '=', '*', ' ', '|']) {
        tracing::warn!("{}: the version range {wanted:?} is not checked (strata resolves packages in nixpkgs, not in flox's catalog)", path.name());
        return Ok(());
    }
    let (_, version) = package_and_version(path.name());
    match version {
        Some(v) if v == wanted || v.starts_with(&format!("{wanted}.")) || v.starts_with(&format!("{wanted}-")) => Ok(()),
        v => Err(format!("{wanted:?} was asked for, but the package built is {} (version {})", path.name(), v.unwrap_or("none"))),
    }
}

/// Later definitions of a variable replace earlier ones, in the earlier one's place.
fn merge_env(vars: Vec<String>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for var in vars {
        let key = var.split('=').next().unwrap_or_default().to_owned();
        if values.insert(key.clone(), var).is_none() {
            order.push(key);
        }
    }
    order.into_iter().map(|k| values.remove(&k).expect("every key has a value")).collect()
}

fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// The environment layer's entries: profile, /etc files, /tmp and homes.
fn environment_entries(packages: &[(String, StorePath)], user: Option<&str>, shell: Option<&str>, profile: Option<&str>) -> Result<Vec<Entry>, String> {
    let login_shell = if shell.is_some() { format!("{PROFILE}/bin/sh") } else { "/sbin/nologin".to_owned() };
    let mut passwd = format!("root:x:0:0:root:/root:{login_shell}\n");
    let mut group = "root:x:0:\n".to_owned();
    let mut entries = vec![Entry::directory(b"etc", 0o755), Entry::directory(b"root", 0o700), Entry::directory(b"tmp", 0o1777)];
    if let Some(user) = user {
        passwd += &format!("{user}:x:{USER_ID}:{USER_ID}::/home/{user}:{login_shell}\n");
        group += &format!("{user}:x:{USER_ID}:\n");
        entries.push(Entry::directory(b"home", 0o755));
        let mut home = Entry::directory(format!("home/{user}").as_bytes(), 0o755);
        (home.uid, home.gid) = (USER_ID, USER_ID);
        entries.push(home);
    }
    passwd += "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
    group += "nogroup:x:65534:\n";
    entries.push(Entry::contents(b"etc/passwd", passwd.into_bytes(), 0o644));
    entries.push(Entry::contents(b"etc/group", group.into_bytes(), 0o644));
    if let Some(profile) = profile {
        entries.push(Entry::contents(PROFILE_SCRIPT.trim_start_matches('/').as_bytes(), format!("{profile}\n").into_bytes(), 0o644));
        let source = format!(". {PROFILE_SCRIPT}\n").into_bytes();
        entries.push(Entry::contents(b"root/.bashrc", source.clone(), 0o644));
        if let Some(user) = user {
            let mut rc = Entry::contents(format!("home/{user}/.bashrc").as_bytes(), source, 0o644);
            (rc.uid, rc.gid) = (USER_ID, USER_ID);
            entries.push(rc);
        }
    }

    let profile = PROFILE.trim_start_matches('/');
    let mut parent = String::new();
    for component in profile.split('/') {
        parent = if parent.is_empty() { component.to_owned() } else { format!("{parent}/{component}") };
        entries.push(Entry::directory(parent.as_bytes(), 0o755));
    }
    let sources: Vec<PathBuf> = packages.iter().map(|(_, p)| PathBuf::from(p.as_str())).filter(|p| p.is_dir()).collect();
    link_tree(&mut entries, profile, &sources)?;
    Ok(entries)
}

/// Merges the directories `sources` into `image_dir` as a symlink tree (see the module doc).
fn link_tree(out: &mut Vec<Entry>, image_dir: &str, sources: &[PathBuf]) -> Result<(), String> {
    let mut children: BTreeMap<OsString, Vec<(PathBuf, bool)>> = BTreeMap::new();
    for source in sources {
        let read_err = |e: std::io::Error| format!("cannot read {} while merging the profile: {e}", source.display());
        for item in std::fs::read_dir(source).map_err(read_err)? {
            let item = item.map_err(read_err)?;
            let is_dir = item.file_type().map_err(read_err)?.is_dir();
            children.entry(item.file_name()).or_default().push((item.path(), is_dir));
        }
    }
    for (name, providers) in children {
        let path = format!("{image_dir}/{}", String::from_utf8_lossy(name.as_bytes()));
        let dirs: Vec<PathBuf> = providers.iter().filter(|(_, d)| *d).map(|(p, _)| p.clone()).collect();
        if providers.len() > 1 && dirs.len() == providers.len() {
            out.push(Entry::directory(path.as_bytes(), 0o755));
            link_tree(out, &path, &dirs)?;
            continue;
        }
        let (winner, _) = &providers[0];
        if providers.len() > 1 {
            let others: BTreeSet<String> = providers[1..].iter().map(|(p, _)| p.display().to_string()).collect();
            tracing::warn!("/{path}: {} wins over {}", winner.display(), others.into_iter().collect::<Vec<_>>().join(", "));
        }
        out.push(Entry::symlink(path.as_bytes(), winner.as_os_str().as_bytes()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_variables_win_in_place() {
        let merged = merge_env(vec!["PATH=/a".into(), "X=1".into(), "PATH=/b".into(), "Y=2".into()]);
        assert_eq!(merged, ["PATH=/b", "X=1", "Y=2"]);
    }

    #[test]
    fn profiles_merge_shared_directories_and_link_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for (pkg, file) in [(&a, "bin/one"), (&b, "bin/two"), (&a, "share/a/doc"), (&b, "bin/one")] {
            std::fs::create_dir_all(pkg.join(file).parent().unwrap()).unwrap();
            std::fs::write(pkg.join(file), b"").unwrap();
        }
        let mut out = Vec::new();
        link_tree(&mut out, "p", &[a.clone(), b.clone()]).unwrap();
        let got: Vec<(String, Option<String>)> = out
            .iter()
            .map(|e| {
                let target = match &e.kind {
                    crate::layer::EntryKind::Symlink { target } => Some(String::from_utf8_lossy(target).into_owned()),
                    _ => None,
                };
                (String::from_utf8_lossy(&e.path).into_owned(), target)
            })
            .collect();
        let link = |p: &Path| Some(p.display().to_string());
        assert_eq!(
            got,
            [
                ("p/bin".to_owned(), None),
                ("p/bin/one".to_owned(), link(&a.join("bin/one"))),
                ("p/bin/two".to_owned(), link(&b.join("bin/two"))),
                ("p/share".to_owned(), link(&a.join("share"))),
            ]
        );
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("app") && valid_user_name("_svc-1"));
        assert!(!valid_user_name("App") && !valid_user_name("1x") && !valid_user_name("a b") && !valid_user_name(""));
    }
}
