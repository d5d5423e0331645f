//! The image spec: what a user declares, read from TOML (written by people) or JSON (written by
//! the Nix library). Both formats have the same structure; unknown keys and wrong types are
//! errors that name the key, and [`Spec::validate`] checks what serde cannot (store paths,
//! octal modes, regexes, the layer budget) and names the offending key too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use strata_oci::bounded::{read_file, read_text, MAX_INPUT_SIZE};
use strata_oci::platform::Platform;
use strata_oci::time::parse_rfc3339;

use crate::store::StorePath;

/// dockerTools' default: one second past the epoch, so that tools showing "created" don't hide it.
pub const DEFAULT_CREATED: &str = "1970-01-01T00:00:01Z";
/// dockerTools' default layer budget.
pub const DEFAULT_MAX_LAYERS: usize = 100;
/// overlayfs stacks at most 128 lower directories; docker and podman refuse more than that.
pub const MAX_MAX_LAYERS: usize = 125;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("spec {path}: unknown format (expected a .toml or .json file)")]
    Format { path: PathBuf },
    #[error("spec {}", path.display())]
    Invalid { path: PathBuf, source: KeyError },
}

/// What is wrong with one key of a spec (or of a manifest with the spec's structure): its
/// dotted path (`config.Entrypoint`, `roots[0]`, `(syntax)` for TOML that does not parse)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError { key: key.into(), message: message.into() }
    }

    /// The same error, its key inside `section` (`name` in `container` is `container.name`).
    pub fn within(self, section: &str) -> KeyError {
        KeyError { key: format!("{section}.{}", self.key), message: self.message }
    }
}

/// A whole image spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Image name, as in `name:tag`.
    pub name: String,
    /// Default: derived from the image content.
    pub tag: Option<String>,
    /// RFC 3339 time or `"now"`; also the mtime of every file. Default [`DEFAULT_CREATED`].
    pub created: Option<String>,
    /// The mtime of every file, if it is not `created` (RFC 3339 or `"now"`).
    pub mtime: Option<String>,
    /// OCI architecture (`amd64`, `arm64`, …). Default: the host's.
    pub architecture: Option<String>,
    pub max_layers: Option<usize>,
    /// At most this many layers for the store paths outside the explicit layers (the split
    /// closure), whatever `max_layers` leaves: dockerTools' and nix2container's `maxLayers`,
    /// which count neither the base image's layers nor the explicit ones.
    pub max_store_layers: Option<usize>,
    /// A base image (`docker-archive:PATH`, `oci:DIR[:TAG]`, `oci-archive:PATH[:TAG]`): its
    /// layers come first, and its config is merged with `config`.
    pub from_image: Option<String>,
    /// Closure roots: their closures go into the store layers.
    #[serde(default)]
    pub roots: Vec<String>,
    /// Store paths whose trees are laid over `/` in a final layer.
    #[serde(default)]
    pub copy_to_root: Vec<String>,
    /// Store paths linked from `/`, as dockerTools' `contents` (symlinkJoin): in the store with
    /// their closures, and in a final layer their trees' directories made under `/` and every
    /// other entry a symlink into the store.
    #[serde(default)]
    pub link_to_root: Vec<String>,
    /// Files (store paths) listing modes of paths laid over `/`, a line each: `MODE PATH` or
    /// `MODE UID GID PATH`, the mode octal, the path absolute (what dockerTools'
    /// `extraCommands` and `fakeRootCommands` left, recorded before the store made every
    /// file read-only and owned by the builder). Applied before `perms`, which win.
    #[serde(default)]
    pub modes_files: Vec<String>,
    /// Explicit layers, first and in order.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// Owner and mode overrides, applied in order (a later rule wins).
    #[serde(default)]
    pub perms: Vec<PermSpec>,
    #[serde(default)]
    pub config: ImageConfigSpec,
    /// Add a last layer with a Nix database registering every store path of the image.
    #[serde(default)]
    pub initialize_nix_database: bool,
    /// The owner of the Nix database and of `/nix/store` (nix2container's `nixUid`/`nixGid`:
    /// a user other than root can then run Nix in the container). Needs
    /// `initialize_nix_database`.
    pub nix_uid: Option<u32>,
    pub nix_gid: Option<u32>,
    /// Whether the store paths (the closure) are in the image; `false` leaves only what is
    /// laid over and linked from `/` (dockerTools' `includeStorePaths`: the commands that
    /// shaped the root copied what it needs).
    #[serde(default = "yes")]
    pub include_store_paths: bool,
    /// Lay each `copy_to_root` tree over the ones before it as `rsync --keep-dirlinks` does
    /// (dockerTools' `keepContentsDirlinks`): a link to a directory stays, and what a later
    /// tree has under its name goes into that directory.
    #[serde(default)]
    pub keep_contents_dirlinks: bool,
    /// What the store paths named in `Entrypoint`, `Cmd` and `Env` are: `"roots"` (closure
    /// roots, each an error if the closure does not have it) or `"referenced"` (roots where
    /// the closure graph has them, text elsewhere: the Nix library's, whose graph holds the
    /// config's references as Nix found them, as dockerTools takes them).
    #[serde(default)]
    pub config_paths: ConfigPaths,
}

/// See [`Spec::config_paths`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigPaths {
    #[default]
    Roots,
    Referenced,
}

fn yes() -> bool {
    true
}

/// An explicit layer: the closure of its roots (minus what earlier explicit layers hold, and
/// minus `ignore`) and its `copy_to_root` trees.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    #[serde(default)]
    pub roots: Vec<String>,
    #[serde(default)]
    pub copy_to_root: Vec<String>,
    /// Store paths left out of this layer (nix2container's `ignore`), though in the closure.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Split into up to this many layers, as the rest of the closure is (nix2container's
    /// buildLayer `maxLayers`); 1 by default.
    pub max_layers: Option<usize>,
    /// The layer's history entry (nix2container's `metadata`); strata's when not given.
    pub created_by: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
}

/// What an explicit layer's history entry says, where it is not strata's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerMetadata {
    pub created_by: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
}

/// Sets mode and/or owner of the image paths it matches: `path` matches one path exactly,
/// `regex` matches whole paths (it is anchored at both ends).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermSpec {
    pub path: Option<String>,
    pub regex: Option<String>,
    /// nix2container's rules: `regex` is searched (not anchored) in the store path of each
    /// file of this store path, whether it is in the image's store or its tree is laid over `/`.
    pub store_path: Option<String>,
    /// Octal, as a string: `"0755"`.
    pub mode: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The owner's names in the tar headers.
    pub uname: Option<String>,
    pub gname: Option<String>,
}

/// The OCI image config, with Docker's key names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ImageConfigSpec {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Option<KeySet>,
    pub volumes: Option<KeySet>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    // Docker's keys beyond OCI's, passed through into the config as they are: the Docker
    // engine reads them (dockerTools' images set them).
    pub healthcheck: Option<serde_json::Value>,
    pub on_build: Option<Vec<String>>,
    pub shell: Option<Vec<String>>,
    pub args_escaped: Option<bool>,
    pub domainname: Option<String>,
    pub hostname: Option<String>,
    pub mac_address: Option<String>,
    pub network_disabled: Option<bool>,
    pub attach_stdin: Option<bool>,
    pub attach_stdout: Option<bool>,
    pub attach_stderr: Option<bool>,
    pub tty: Option<bool>,
    pub open_stdin: Option<bool>,
    pub stdin_once: Option<bool>,
    pub image: Option<String>,
}

impl ImageConfigSpec {
    /// Docker's keys beyond OCI's that are set, by their names in the config.
    pub fn docker_keys(&self) -> BTreeMap<String, serde_json::Value> {
        let keys: [(&str, Option<serde_json::Value>); 15] = [
            ("Healthcheck", self.healthcheck.clone()),
            ("OnBuild", self.on_build.as_ref().map(|v| serde_json::json!(v))),
            ("Shell", self.shell.as_ref().map(|v| serde_json::json!(v))),
            ("ArgsEscaped", self.args_escaped.map(serde_json::Value::Bool)),
            ("Domainname", self.domainname.as_ref().map(|v| serde_json::json!(v))),
            ("Hostname", self.hostname.as_ref().map(|v| serde_json::json!(v))),
            ("MacAddress", self.mac_address.as_ref().map(|v| serde_json::json!(v))),
            ("NetworkDisabled", self.network_disabled.map(serde_json::Value::Bool)),
            ("AttachStdin", self.attach_stdin.map(serde_json::Value::Bool)),
            ("AttachStdout", self.attach_stdout.map(serde_json::Value::Bool)),
            ("AttachStderr", self.attach_stderr.map(serde_json::Value::Bool)),
            ("Tty", self.tty.map(serde_json::Value::Bool)),
            ("OpenStdin", self.open_stdin.map(serde_json::Value::Bool)),
            ("StdinOnce", self.stdin_once.map(serde_json::Value::Bool)),
            ("Image", self.image.as_ref().map(|v| serde_json::json!(v))),
        ];
        keys.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect()
    }
}

/// Docker writes `ExposedPorts`/`Volumes` as `{"80/tcp": {}}`; a plain list is accepted too.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeySet {
    List(Vec<String>),
    Map(BTreeMap<String, EmptyObject>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyObject {}

impl KeySet {
    pub fn keys(&self) -> Vec<String> {
        match self {
            KeySet::List(v) => v.clone(),
            KeySet::Map(m) => m.keys().cloned().collect(),
        }
    }
}

/// A perm rule with its pattern compiled and its mode parsed.
#[derive(Debug, Clone)]
pub struct PermRule {
    pub matcher: PathMatcher,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub uname: Option<String>,
    pub gname: Option<String>,
}

impl PermRule {
    /// Sets what the rule sets on `entry`.
    pub fn apply(&self, entry: &mut crate::layer::Entry) {
        if let Some(mode) = self.mode {
            entry.mode = mode;
        }
        entry.uid = self.uid.unwrap_or(entry.uid);
        entry.gid = self.gid.unwrap_or(entry.gid);
        if let Some(uname) = &self.uname {
            entry.uname = uname.clone();
        }
        if let Some(gname) = &self.gname {
            entry.gname = gname.clone();
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathMatcher {
    Exact(String),
    Regex(regex::Regex),
    /// nix2container's: files of `store_path` whose store path (`/nix/store/<it>/…`) the
    /// regex finds something in.
    Source {
        store_path: StorePath,
        regex: regex::Regex,
    },
}

impl PathMatcher {
    /// `image_path` is absolute, as seen inside the container (`/nix/store/…`). Source rules
    /// match no image path: they are applied where a file's store path is known, as the
    /// store paths and trees are scanned ([`PathMatcher::matches_source`]).
    pub fn matches(&self, image_path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => p == image_path,
            PathMatcher::Regex(r) => r.is_match(image_path),
            PathMatcher::Source { .. } => false,
        }
    }

    /// Whether a file of `store_path` whose own path in the store is `source` matches.
    pub fn matches_source(&self, store_path: &StorePath, source: &str) -> bool {
        matches!(self, PathMatcher::Source { store_path: p, regex } if p == store_path && regex.is_match(source))
    }
}

/// An explicit layer after validation.
#[derive(Debug, Clone, Default)]
pub struct ExplicitLayer {
    pub roots: Vec<StorePath>,
    pub copy_to_root: Vec<StorePath>,
    pub ignore: Vec<StorePath>,
    pub metadata: LayerMetadata,
    /// At least 1.
    pub max_layers: usize,
}

/// A spec after validation: store paths parsed, defaults filled in.
#[derive(Debug, Clone)]
pub struct ValidSpec {
    pub name: String,
    pub tag: Option<String>,
    pub created: String,
    /// Seconds since the epoch of `created`: every file's mtime.
    pub mtime: u64,
    pub architecture: String,
    pub max_layers: usize,
    pub max_store_layers: Option<usize>,
    pub from_image: Option<strata_oci::reference::ImageRef>,
    /// Closure roots, each with the key it came from (for error messages).
    pub roots: Vec<(String, StorePath)>,
    pub copy_to_root: Vec<(String, StorePath)>,
    pub link_to_root: Vec<(String, StorePath)>,
    pub layers: Vec<ExplicitLayer>,
    pub perms: Vec<PermRule>,
    pub config: ImageConfigSpec,
    pub initialize_nix_database: bool,
    /// The owner (uid, gid) of the Nix database and `/nix/store`; root's when `None`.
    pub nix_owner: Option<(u32, u32)>,
    pub include_store_paths: bool,
    pub keep_contents_dirlinks: bool,
    pub config_paths: ConfigPaths,
}

impl Spec {
    /// Reads a spec from a `.toml` or `.json` file.
    pub fn from_file(path: &Path) -> Result<Spec, SpecError> {
        let parse = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Spec::from_toml,
            Some("json") => Spec::from_json,
            _ => return Err(SpecError::Format { path: path.to_owned() }),
        };
        let text = read_text(path, MAX_INPUT_SIZE).map_err(|source| SpecError::Read { path: path.to_owned(), source })?;
        parse(&text).map_err(|source| SpecError::Invalid { path: path.to_owned(), source })
    }

    /// Parses TOML; on error, the dotted key path and the message.
    pub fn from_toml(text: &str) -> Result<Spec, KeyError> {
        parse_toml(text)
    }

    /// Parses JSON; on error, the dotted key path and the message.
    pub fn from_json(text: &str) -> Result<Spec, KeyError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| KeyError::new(key_of(e.path()), e.into_inner().to_string()))
    }

    /// Checks everything serde cannot and fills in defaults. Store paths are checked for form
    /// here; whether they exist is the closure's business.
    pub fn validate(self) -> Result<ValidSpec, KeyError> {
        let err = |key: &str, message: String| Err(KeyError::new(key, message));
        strata_oci::reference::check_name(&self.name).map_err(|m| KeyError::new("name", m))?;
        if let Some(tag) = &self.tag {
            strata_oci::reference::check_tag(tag).map_err(|m| KeyError::new("tag", m))?;
        }
        let time = |key: &str, value: Option<&str>| -> Result<(String, u64), KeyError> {
            match value {
                None => parse_rfc3339(DEFAULT_CREATED),
                Some("now") => parse_rfc3339(&strata_oci::time::now()),
                Some(t) => parse_rfc3339(t),
            }
            .map_err(|message| KeyError::new(key, message))
        };
        let (created, created_secs) = time("created", self.created.as_deref())?;
        let mtime = match self.mtime.as_deref() {
            None => created_secs,
            Some(m) => time("mtime", Some(m))?.1,
        };
        let max_layers = self.max_layers.unwrap_or(DEFAULT_MAX_LAYERS);
        if !(1..=MAX_MAX_LAYERS).contains(&max_layers) {
            return err("max_layers", format!("{max_layers} is out of range (1 to {MAX_MAX_LAYERS})"));
        }
        let explicit_needed = self.layers.iter().map(|l| l.max_layers.unwrap_or(1).max(1)).sum::<usize>()
            + usize::from(!self.copy_to_root.is_empty())
            + usize::from(!self.link_to_root.is_empty())
            + usize::from(self.initialize_nix_database);
        if explicit_needed > max_layers {
            return err("max_layers", format!("{max_layers} is less than the {explicit_needed} layers the spec asks for explicitly"));
        }
        if self.max_store_layers == Some(0) {
            return err("max_store_layers", "must be at least 1".to_owned());
        }
        let nix_owner = match (self.nix_uid, self.nix_gid) {
            (None, None) => None,
            _ if !self.initialize_nix_database => {
                return err(if self.nix_uid.is_some() { "nix_uid" } else { "nix_gid" }, "needs `initialize_nix_database = true`".to_owned())
            }
            (uid, gid) => Some((uid.unwrap_or(0), gid.unwrap_or(0))),
        };
        let store_paths = |key: &str, paths: &[String]| -> Result<Vec<(String, StorePath)>, KeyError> {
            paths
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let key = format!("{key}[{i}]");
                    StorePath::containing(p).map(|sp| (key.clone(), sp)).map_err(|e| KeyError::new(key, e.to_string()))
                })
                .collect()
        };
        let from_image = match &self.from_image {
            None => None,
            Some(r) => Some(r.parse().map_err(|e: strata_oci::reference::BadReference| KeyError::new("from_image", e.to_string()))?),
        };
        let roots = store_paths("roots", &self.roots)?;
        let copy_to_root = store_paths("copy_to_root", &self.copy_to_root)?;
        let link_to_root = store_paths("link_to_root", &self.link_to_root)?;
        for ((key, path), given) in copy_to_root.iter().chain(&link_to_root).zip(self.copy_to_root.iter().chain(&self.link_to_root)) {
            if given != path.as_str() {
                return err(key, format!("{path} must be a store path itself, not a path inside one"));
            }
        }
        let mut layers = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let strip = |v: Vec<(String, StorePath)>| v.into_iter().map(|(_, p)| p).collect();
            layers.push(ExplicitLayer {
                roots: strip(store_paths(&format!("layers[{i}].roots"), &layer.roots)?),
                copy_to_root: strip(store_paths(&format!("layers[{i}].copy_to_root"), &layer.copy_to_root)?),
                ignore: strip(store_paths(&format!("layers[{i}].ignore"), &layer.ignore)?),
                max_layers: match layer.max_layers {
                    Some(0) => return err(&format!("layers[{i}].max_layers"), "must be at least 1".to_owned()),
                    n => n.unwrap_or(1),
                },
                metadata: LayerMetadata { created_by: layer.created_by.clone(), author: layer.author.clone(), comment: layer.comment.clone() },
            });
        }
        let mut perms = Vec::new();
        for (i, file) in self.modes_files.iter().enumerate() {
            let key = format!("modes_files[{i}]");
            StorePath::containing(file).map_err(|e| KeyError::new(&key, e.to_string()))?;
            perms.extend(modes_of(Path::new(file)).map_err(|m| KeyError::new(&key, m))?);
        }
        for (i, p) in self.perms.iter().enumerate() {
            let key = format!("perms[{i}]");
            let regex = |re: &str, anchored: bool| {
                let pattern = if anchored { format!("^(?:{re})$") } else { re.to_owned() };
                // The regex crate's message draws a caret under the pattern; its last line says why.
                regex::Regex::new(&pattern)
                    .map_err(|e| KeyError::new(format!("{key}.regex"), format!("invalid regex {re:?}: {}", e.to_string().lines().last().unwrap_or_default())))
            };
            let matcher = match (&p.path, &p.regex, &p.store_path) {
                (Some(path), None, None) => PathMatcher::Exact(path.trim_end_matches('/').to_owned()),
                (None, Some(re), None) => PathMatcher::Regex(regex(re, true)?),
                (None, re, Some(store_path)) => {
                    let path = StorePath::containing(store_path).map_err(|e| KeyError::new(format!("{key}.store_path"), e.to_string()))?;
                    PathMatcher::Source { store_path: path, regex: regex(re.as_deref().unwrap_or(""), false)? }
                }
                _ => return err(&key, "needs exactly one of `path`, `regex`, or `store_path` (with an optional `regex`)".to_owned()),
            };
            let mode = match &p.mode {
                None => None,
                Some(m) => match u32::from_str_radix(m, 8) {
                    Ok(v) if v <= 0o7777 => Some(v),
                    _ => return err(&format!("{key}.mode"), format!("{m:?} is not an octal mode such as \"0755\"")),
                },
            };
            if mode.is_none() && p.uid.is_none() && p.gid.is_none() && p.uname.is_none() && p.gname.is_none() {
                return err(&key, "sets none of `mode`, `uid`, `gid`, `uname`, `gname`".to_owned());
            }
            for (field, name) in [("uname", &p.uname), ("gname", &p.gname)] {
                if name.as_ref().is_some_and(|n| n.len() > 31 || !n.bytes().all(|b| b.is_ascii_graphic())) {
                    return err(&format!("{key}.{field}"), "a name of at most 31 printable ASCII characters (a tar header's field)".to_owned());
                }
            }
            perms.push(PermRule { matcher, mode, uid: p.uid, gid: p.gid, uname: p.uname.clone(), gname: p.gname.clone() });
        }
        Ok(ValidSpec {
            name: self.name,
            tag: self.tag,
            created,
            mtime,
            architecture: self.architecture.unwrap_or_else(|| Platform::host().architecture),
            max_layers,
            max_store_layers: self.max_store_layers,
            from_image,
            roots,
            copy_to_root,
            link_to_root,
            layers,
            perms,
            config: self.config,
            initialize_nix_database: self.initialize_nix_database,
            nix_owner,
            include_store_paths: self.include_store_paths,
            keep_contents_dirlinks: self.keep_contents_dirlinks,
            config_paths: self.config_paths,
        })
    }
}

/// The rules of a modes file (see [`Spec::modes_files`]): one exact-path rule a line,
/// `MODE PATH` or `MODE UID GID PATH` (a path is absolute, so the forms cannot be mistaken).
fn modes_of(file: &Path) -> Result<Vec<PermRule>, String> {
    let bad = |why: String| format!("{}: {why}", file.display());
    // Names need not be UTF-8: they are matched as perm rules match image paths (lossily).
    let bytes = read_file(file, MAX_INPUT_SIZE).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(n, line)| {
            let at = |why: String| bad(format!("line {}: {why}", n + 1));
            let (mode, rest) = line.split_once(' ').ok_or_else(|| at("expected MODE PATH or MODE UID GID PATH".to_owned()))?;
            let mode = u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| at(format!("{mode:?} is not an octal mode")))?;
            let (owner, path) = if rest.starts_with('/') {
                (None, rest)
            } else {
                let mut fields = rest.splitn(3, ' ');
                let mut id = |what: &str| {
                    let field = fields.next().unwrap_or_default();
                    field.parse::<u32>().map_err(|_| at(format!("{field:?} is not a {what}")))
                };
                let (uid, gid) = (id("uid")?, id("gid")?);
                (Some((uid, gid)), fields.next().unwrap_or_default())
            };
            if !path.starts_with('/') {
                return Err(at(format!("{path:?} is not absolute")));
            }
            Ok(PermRule {
                matcher: PathMatcher::Exact(path.trim_end_matches('/').to_owned()),
                mode: Some(mode),
                uid: owner.map(|o| o.0),
                gid: owner.map(|o| o.1),
                uname: None,
                gname: None,
            })
        })
        .collect()
}

impl ValidSpec {
    /// Reads and validates a spec file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<ValidSpec, SpecError> {
        Spec::from_file(path)?.validate().map_err(|source| SpecError::Invalid { path: path.to_owned(), source })
    }

    /// Store paths named in `Entrypoint`, `Cmd` and `Env` values: closure roots too, as in
    /// dockerTools. Each comes with the key that names it.
    pub fn config_roots(&self) -> Vec<(String, StorePath)> {
        let c = &self.config;
        let fields = [("Entrypoint", &c.entrypoint), ("Cmd", &c.cmd), ("Env", &c.env)];
        let mut out = Vec::new();
        for (field, values) in fields {
            for (i, value) in values.iter().flatten().enumerate() {
                for path in StorePath::find_all(value) {
                    out.push((format!("config.{field}[{i}]"), path));
                }
            }
        }
        out
    }
}

/// Deserialises TOML; on error, the dotted path of the offending key and the message.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, KeyError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let at = e.span().map_or_else(String::new, |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            format!("line {line}, column {column}: ")
        });
        KeyError::new("(syntax)", format!("{at}{}", e.message()))
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| KeyError::new(key_of(e.path()), e.into_inner().message()))
}

fn key_of(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        "(top level)".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "/nix/store/r7815vi79spcjkiidy1ypiwdj6xynisz-hello-2.12";

    fn toml_err(text: &str) -> (String, String) {
        let e = toml_key_err(text);
        (e.key, e.message)
    }

    fn toml_key_err(text: &str) -> KeyError {
        Spec::from_toml(text).and_then(Spec::validate).unwrap_err()
    }

    #[test]
    fn toml_and_json_read_the_same_spec() {
        let toml = format!("name = \"hello\"\nroots = [\"{HELLO}\"]\n[config]\nEntrypoint = [\"{HELLO}/bin/hello\"]\nExposedPorts = {{ \"80/tcp\" = {{}} }}\n");
        let json = format!(r#"{{"name":"hello","roots":["{HELLO}"],"config":{{"Entrypoint":["{HELLO}/bin/hello"],"ExposedPorts":{{"80/tcp":{{}}}}}}}}"#);
        let a = Spec::from_toml(&toml).unwrap().validate().unwrap();
        let b = Spec::from_json(&json).unwrap().validate().unwrap();
        assert_eq!(format!("{:?}", a.config), format!("{:?}", b.config));
        assert_eq!(a.roots, b.roots);
        assert_eq!(a.max_layers, DEFAULT_MAX_LAYERS);
        assert_eq!(a.created, DEFAULT_CREATED);
        assert_eq!(a.mtime, 1);
        assert_eq!(a.config_roots()[0].0, "config.Entrypoint[0]");
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(toml_err("name = \"x\"\nbogus = 1").0, "bogus");
        let (key, msg) = toml_err("name = \"x\"\nroots = [\n  \"a\" \"b\"]\n");
        assert_eq!(key, "(syntax)");
        assert!(msg.starts_with("line 3, column 7: "), "{msg}");
        let (key, msg) = toml_err("name = \"x\"\n[config]\nEntrypoint = \"/bin/sh\"");
        assert_eq!(key, "config.Entrypoint");
        assert!(msg.contains("invalid type"), "{msg}");
        assert_eq!(toml_err("name = \"x\"\n[config]\nEntrypnt = []").0, "config.Entrypnt");
        assert_eq!(toml_err("name = \"x\"\nroots = [\"/usr/bin\"]").0, "roots[0]");
        assert_eq!(toml_err("name = \"x\"\n[[layers]]\nroots = [\"/tmp/x\"]").0, "layers[0].roots[0]");
        assert_eq!(toml_err("name = \"x\"\n[[perms]]\npath = \"/a\"\nmode = \"999\"").0, "perms[0].mode");
        assert_eq!(toml_err("name = \"x\"\nmax_layers = 0").0, "max_layers");
        assert_eq!(toml_err("name = \"Hello World\"").0, "name");
        assert_eq!(toml_err("name = \"x\"\ncreated = \"yesterday\"").0, "created");
        assert_eq!(toml_err("name = \"x\"\nmax_layers = -1").0, "max_layers");
        let json = Spec::from_json(r#"{"name":"x","roots":"oops"}"#).unwrap_err();
        assert_eq!(json.key, "roots");
        assert_eq!(toml_err("name = \"x\"\nmax_store_layers = 0").0, "max_store_layers");
        assert_eq!(toml_err("name = \"x\"\nnix_gid = 100").0, "nix_gid");
        assert_eq!(toml_err("name = \"x\"\nconfig_paths = \"maybe\"").0, "config_paths");
    }

    /// A modes file's lines, with and without an owner, and the line a bad one is on.
    #[test]
    fn modes_files_set_modes_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("modes");
        std::fs::write(&file, "1777 /tmp\n0750 1000 100 /var/lib/app dir/\n").unwrap();
        let rules = modes_of(&file).unwrap();
        assert!(matches!(&rules[0].matcher, PathMatcher::Exact(p) if p == "/tmp"));
        assert_eq!((rules[0].mode, rules[0].uid, rules[0].gid), (Some(0o1777), None, None));
        assert!(matches!(&rules[1].matcher, PathMatcher::Exact(p) if p == "/var/lib/app dir"));
        assert_eq!((rules[1].mode, rules[1].uid, rules[1].gid), (Some(0o750), Some(1000), Some(100)));
        for (text, why) in [
            ("0755 x /a\n", "line 1: \"x\" is not a uid"),
            ("0755 /a\n0755 1 2 a\n", "line 2: \"a\" is not absolute"),
            ("9 /a", "line 1: \"9\" is not an octal mode"),
        ] {
            std::fs::write(&file, text).unwrap();
            let message = modes_of(&file).unwrap_err();
            assert!(message.ends_with(why) && message.starts_with(&file.display().to_string()), "{message}");
        }
    }
}
