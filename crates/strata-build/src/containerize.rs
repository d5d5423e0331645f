//! Environments as containers (`strata containerize`): a manifest of packages, variables and
//! a start hook, turned into an image the way flox users expect.
//!
//! This is a second front end to the pipeline. The manifest becomes a [`ValidSpec`] (the
//! packages' store paths are closure roots, `[vars]` go into `Env`, the hook becomes an
//! entrypoint wrapper) plus one environment layer that strata makes itself:
//!
//! - the merged profile at [`PROFILE`]: a symlink tree over all packages, as nixpkgs'
//!   `buildEnv` makes it (a directory only one package has is one link to it; directories
//!   several packages share are real directories, merged recursively; on a clash the
//!   package whose install name sorts first wins, with a warning); its `bin` is on `PATH`;
//! - `/tmp` (mode 1777), `/root`, the user's home, and `/etc/passwd` and `/etc/group`
//!   naming root, the user (uid/gid 1000) and nobody.
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
use crate::store::StorePath;

/// Where the merged profile lives in the image: Nix's default profile.
pub const PROFILE: &str = "/nix/var/nix/profiles/default";
const USER_ID: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ContainerizeError {
    #[error("cannot read manifest {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("manifest {path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
    #[error("cannot read {path} while merging the profile")]
    Profile { path: PathBuf, source: std::io::Error },
}

/// The manifest, as written.
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

/// A manifest made ready for the pipeline: the spec, and the environment layer to add on top.
pub struct Environment {
    pub spec: ValidSpec,
    entries: Vec<Entry>,
}

impl Environment {
    /// Reads `manifest` (building flake installables with Nix, relative to its directory) and
    /// prepares the image. `tag` overrides the manifest's tag.
    pub fn load(manifest: &Path, tag: Option<&str>) -> Result<Environment, ContainerizeError> {
        let invalid = |key: &str, message: String| ContainerizeError::Invalid { path: manifest.to_owned(), key: key.to_owned(), message };
        let text = std::fs::read_to_string(manifest).map_err(|source| ContainerizeError::Read { path: manifest.to_owned(), source })?;
        let m: Manifest = parse_toml(&text).map_err(|e| invalid(&e.key, e.message))?;
        let dir = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));

        let mut packages = Vec::new();
        for (name, value) in &m.install {
            let key = format!("install.{name}");
            let path = resolve_package(value, dir).map_err(|message| invalid(&key, message))?;
            packages.push((key, path));
        }
        let profile_bin = |name: &str| packages.iter().find(|(_, p)| Path::new(p.as_str()).join("bin").join(name).exists());
        let shell = profile_bin("sh").map(|(_, p)| format!("{p}/bin/sh"));

        let c = &m.container;
        let mut config = c.config.clone();
        let mut env = vec![format!("PATH={PROFILE}/bin:{PROFILE}/sbin")];
        env.extend(m.vars.iter().map(|(k, v)| format!("{k}={v}")));
        env.extend(config.env.take().unwrap_or_default());
        config.env = Some(merge_env(env));
        if config.cmd.is_none() && config.entrypoint.is_none() {
            config.cmd = shell.clone().map(|sh| vec![sh]);
        }
        if let Some(hook) = &m.hook.on_activate {
            let Some(sh) = &shell else {
                return Err(invalid(
                    "hook.on-activate",
                    "a hook needs a shell, and no package in [install] has bin/sh: install one (busybox, bash, dash)".to_owned(),
                ));
            };
            let mut entrypoint = vec![sh.clone(), "-c".to_owned(), format!("{hook}\nexec \"$@\""), "strata-activate".to_owned()];
            entrypoint.extend(config.entrypoint.take().unwrap_or_default());
            config.entrypoint = Some(entrypoint);
        }
        if let Some(user) = &c.user {
            if !valid_user_name(user) || user == "root" {
                return Err(invalid("container.user", format!("{user:?} is not a valid non-root user name")));
            }
            config.user = Some(user.clone());
        }
        let max_layers = c.max_layers.unwrap_or(DEFAULT_MAX_LAYERS);
        if max_layers < 2 {
            return Err(invalid("container.max_layers", format!("{max_layers} is too small: an environment needs at least 2 layers")));
        }

        let spec = Spec {
            name: c.name.clone(),
            tag: tag.map(str::to_owned).or_else(|| c.tag.clone()),
            created: c.created.clone(),
            mtime: None,
            architecture: None,
            // One layer is the environment layer.
            max_layers: Some(max_layers - 1),
            from_image: None,
            roots: packages.iter().map(|(_, p)| p.to_string()).collect(),
            copy_to_root: vec![],
            layers: vec![],
            perms: vec![],
            config,
            initialize_nix_database: false,
        };
        // The spec's image keys live in the manifest's [container] table.
        let spec = spec.validate().map_err(|e| {
            let e = if matches!(e.key.as_str(), "name" | "tag" | "created") || e.key.starts_with("config") { e.within("container") } else { e };
            invalid(&e.key, e.message)
        })?;
        let entries = environment_entries(&packages, c.user.as_deref(), shell.as_deref())?;
        Ok(Environment { spec, entries })
    }

    /// Plans the image: the packages' closures, then the environment layer on top.
    pub fn plan(self, source: &ClosureSource) -> Result<Image<LayerRecipe>, AssembleError> {
        let mtime = self.spec.mtime;
        let mut image = assemble(self.spec, source, None, &[])?;
        image.layers.push(LayerRecipe::new(vec![], self.entries, &[], mtime, format!("environment: profile at {PROFILE}, /etc, /tmp")));
        Ok(image)
    }
}

/// A store path as given, or the output of a flake installable built with Nix in `dir`.
fn resolve_package(value: &str, dir: &Path) -> Result<StorePath, String> {
    if value.starts_with('/') {
        let path = StorePath::containing(value).map_err(|e| e.to_string())?;
        if std::fs::symlink_metadata(path.as_str()).is_err() {
            return Err(format!("store path {path} does not exist"));
        }
        return Ok(path);
    }
    let out = match crate::nix::build(value, Some(dir)) {
        Err(e) => return Err(format!("building {value:?} needs Nix, which could not be run ({e})")),
        Ok(Err(stderr)) => {
            let why = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_owned();
            return Err(format!("cannot build {value:?} in {}: {why}", dir.display()));
        }
        Ok(Ok(out)) => out,
    };
    StorePath::containing(&out.to_string_lossy()).map_err(|e| e.to_string())
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
fn environment_entries(packages: &[(String, StorePath)], user: Option<&str>, shell: Option<&str>) -> Result<Vec<Entry>, ContainerizeError> {
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
fn link_tree(out: &mut Vec<Entry>, image_dir: &str, sources: &[PathBuf]) -> Result<(), ContainerizeError> {
    let mut children: BTreeMap<OsString, Vec<(PathBuf, bool)>> = BTreeMap::new();
    for source in sources {
        let read_err = |e| ContainerizeError::Profile { path: source.clone(), source: e };
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
