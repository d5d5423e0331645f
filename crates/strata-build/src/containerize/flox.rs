//! flox's manifest, `.flox/env/manifest.toml`, read as flox users write it (version 1, and
//! the `schema-version` manifests that replaced it), into a [`Definition`]:
//!
//! - `[install]`: each package descriptor, by its shape: `pkg-path` (an attribute path in
//!   nixpkgs, built from the nixpkgs flake given, `nixpkgs#<pkg-path>`; flox resolves it in
//!   its catalog, which strata does not have), `flake` (an installable), or `store-path`;
//!   with `priority`, `version` (checked against what was built), `systems` (a package for
//!   other systems is left out) and `outputs` (`"all"` or a list); `pkg-group` is accepted
//!   (it groups catalog resolution, which strata does not do);
//! - `[vars]`; `[hook] on-activate`, run before the command, as `flox activate` runs it;
//! - `[profile]`: `common`, then `bash` (strata's shells are POSIX or bash), read by
//!   interactive shells;
//! - `[options]`: `systems` (an environment for other systems is refused); the rest
//!   (`allow`, `semver`, `cuda-detection`, `activate`) governs flox's own resolution and
//!   activation, and is accepted as it is;
//! - `[containerize.config]`: `user`, `exposed-ports`, `cmd`, `volumes`, `working-dir`,
//!   `labels`, `stop-signal`.
//!
//! `[services]`, `[build]` and `[include]` are flox features with no meaning in an image;
//! they are accepted and left out, with a warning.
//!
//! The image is named after the environment: `.flox/env.json`'s `name`, else the directory
//! holding `.flox`, in lower case (image names are); tag `latest`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::{Definition, PackageDef, DEFAULT_PRIORITY};
use crate::spec::{parse_toml, ImageConfigSpec, KeySet};

/// What is wrong, and with which key.
type Invalid = (String, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FloxManifest {
    version: Option<u8>,
    schema_version: Option<String>,
    minimum_cli_version: Option<toml::Value>,
    #[serde(default)]
    install: BTreeMap<String, toml::Value>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    hook: FloxHook,
    #[serde(default)]
    profile: FloxProfile,
    #[serde(default)]
    options: FloxOptions,
    services: Option<toml::Value>,
    build: Option<toml::Value>,
    include: Option<toml::Value>,
    #[serde(default)]
    containerize: FloxContainerize,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FloxHook {
    on_activate: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloxProfile {
    common: Option<String>,
    bash: Option<String>,
    zsh: Option<String>,
    fish: Option<String>,
    tcsh: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FloxOptions {
    systems: Option<Vec<String>>,
    // The rest is flox's resolution and activation, kept as written.
    #[serde(flatten)]
    _rest: BTreeMap<String, toml::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloxContainerize {
    #[serde(default)]
    config: FloxContainerConfig,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FloxContainerConfig {
    user: Option<String>,
    exposed_ports: Option<BTreeSet<String>>,
    cmd: Option<Vec<String>>,
    volumes: Option<BTreeSet<String>>,
    working_dir: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
}

/// A package descriptor, whichever of its three shapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Descriptor {
    pkg_path: Option<String>,
    flake: Option<String>,
    store_path: Option<String>,
    pkg_group: Option<String>,
    priority: Option<u64>,
    version: Option<String>,
    systems: Option<Vec<String>>,
    outputs: Option<Outputs>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Outputs {
    /// `"all"`
    All(String),
    List(Vec<String>),
}

/// This machine's system in Nix's spelling (`x86_64-linux`).
fn host_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// The definition of the flox manifest `text` read from `path`, `pkg-path`s resolved in the
/// flake `nixpkgs`.
pub fn definition(text: &str, path: &Path, nixpkgs: &str) -> Result<Definition, Invalid> {
    let m: FloxManifest = parse_toml(text).map_err(|e| (e.key, e.message))?;
    match (m.version, &m.schema_version) {
        (Some(1), None) | (None, Some(_)) => {}
        (Some(v), None) => return Err(("version".to_owned(), format!("version {v} is not a manifest version strata reads (1)"))),
        _ => return Err(("version".to_owned(), "a manifest has `version` or `schema-version`, not both".to_owned())),
    }
    let _ = &m.minimum_cli_version;
    let system = host_system();
    if let Some(systems) = &m.options.systems {
        if !systems.contains(&system) {
            return Err(("options.systems".to_owned(), format!("the environment is for {}, not for this machine ({system})", systems.join(", "))));
        }
    }
    for (section, present) in [("services", m.services.is_some()), ("build", m.build.is_some()), ("include", m.include.is_some())] {
        if present {
            tracing::warn!("{}: [{section}] has no meaning in an image and is left out", path.display());
        }
    }
    for (shell, present) in [("zsh", m.profile.zsh.is_some()), ("fish", m.profile.fish.is_some()), ("tcsh", m.profile.tcsh.is_some())] {
        if present {
            tracing::warn!("{}: profile.{shell} is left out: the image's shells are POSIX sh or bash", path.display());
        }
    }

    let mut packages = Vec::new();
    for (id, value) in m.install {
        let key = format!("install.{id}");
        let d: Descriptor = value.try_into().map_err(|e: toml::de::Error| (key.clone(), e.message().to_owned()))?;
        if d.systems.as_ref().is_some_and(|s| !s.contains(&system)) {
            tracing::info!("{key} is not for {system}: left out");
            continue;
        }
        let _ = &d.pkg_group;
        let outputs = match &d.outputs {
            None => String::new(),
            Some(Outputs::All(all)) if all == "all" => "^*".to_owned(),
            Some(Outputs::All(other)) => return Err((format!("{key}.outputs"), format!("{other:?}: expected \"all\" or a list of outputs"))),
            Some(Outputs::List(list)) if !list.is_empty() => format!("^{}", list.join(",")),
            Some(Outputs::List(_)) => return Err((format!("{key}.outputs"), "an empty list of outputs".to_owned())),
        };
        let source = match (d.pkg_path, d.flake, d.store_path) {
            (Some(pkg_path), None, None) => {
                if pkg_path.is_empty() || !pkg_path.split('.').all(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "_-'+".contains(c))) {
                    return Err((format!("{key}.pkg-path"), format!("{pkg_path:?} is not an attribute path such as hello or python3Packages.pip")));
                }
                format!("{nixpkgs}#{pkg_path}{outputs}")
            }
            (None, Some(flake), None) => format!("{flake}{outputs}"),
            (None, None, Some(store_path)) if outputs.is_empty() => store_path,
            (None, None, Some(_)) => return Err((format!("{key}.outputs"), "a store-path package has no outputs to choose".to_owned())),
            _ => return Err((key, "expected exactly one of pkg-path, flake or store-path".to_owned())),
        };
        packages.push(PackageDef { key, source, priority: d.priority.unwrap_or(DEFAULT_PRIORITY), version: d.version });
    }

    let c = m.containerize.config;
    let config = ImageConfigSpec {
        cmd: c.cmd,
        working_dir: c.working_dir,
        exposed_ports: c.exposed_ports.map(|p| KeySet::List(p.into_iter().map(|port| if port.contains('/') { port } else { format!("{port}/tcp") }).collect())),
        volumes: c.volumes.map(|v| KeySet::List(v.into_iter().collect())),
        labels: c.labels,
        stop_signal: c.stop_signal,
        ..ImageConfigSpec::default()
    };
    let profile: Vec<String> = [m.profile.common, m.profile.bash].into_iter().flatten().collect();
    let env_dir = environment_dir(path);
    Ok(Definition {
        packages,
        vars: m.vars,
        on_activate: m.hook.on_activate,
        profile: (!profile.is_empty()).then(|| profile.join("\n")),
        name: environment_name(&env_dir),
        tag: Some("latest".to_owned()),
        created: None,
        max_layers: None,
        // flox takes any user (a name or a uid); strata makes a named one a home and an
        // /etc/passwd entry, and puts a numeric one in the config as it is.
        user: c.user,
        config,
        dir: env_dir,
    })
}

/// The directory holding `.flox`, for a manifest at `<dir>/.flox/env/manifest.toml`; else the
/// manifest's own directory.
fn environment_dir(manifest: &Path) -> std::path::PathBuf {
    let parent = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let is_flox_env = parent.file_name().is_some_and(|n| n == "env") && parent.parent().and_then(Path::file_name).is_some_and(|n| n == ".flox");
    match parent.parent().and_then(Path::parent) {
        Some(dir) if is_flox_env => {
            if dir.as_os_str().is_empty() {
                Path::new(".").to_owned()
            } else {
                dir.to_owned()
            }
        }
        _ => parent.to_owned(),
    }
}

/// `.flox/env.json`'s `name`, else the environment directory's name; as an image name.
fn environment_name(env_dir: &Path) -> String {
    #[derive(Deserialize)]
    struct EnvJson {
        name: Option<String>,
    }
    // A small file flox writes; read no more than 64 KiB of it whatever it holds.
    let read = |path: std::path::PathBuf| -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(std::fs::File::open(path).ok()?, 64 << 10), &mut bytes).ok()?;
        Some(bytes)
    };
    let from_json = read(env_dir.join(".flox/env.json")).and_then(|bytes| serde_json::from_slice::<EnvJson>(&bytes).ok()).and_then(|e| e.name);
    let dir_name = || {
        let named = |d: &Path| d.file_name().map(|n| n.to_string_lossy().into_owned());
        named(env_dir).or_else(|| std::fs::canonicalize(env_dir).ok().as_deref().and_then(named))
    };
    let name = from_json.or_else(dir_name).unwrap_or_else(|| "environment".to_owned());
    let name: String = name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    name.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Definition, Invalid> {
        definition(text, Path::new("/work/My App/.flox/env/manifest.toml"), "path:/np")
    }

    #[test]
    fn reads_what_flox_writes() {
        let d = parse(
            r#"
version = 1
[install]
hello.pkg-path = "hello"
pip = { pkg-path = "python310Packages.pip", priority = 3, version = "23.1" }
tool.flake = "github:o/r#tool"
docs = { pkg-path = "hello", outputs = ["out", "man"] }
fixed.store-path = "/nix/store/r7815vi79spcjkiidy1ypiwdj6xynisz-hello-2.12"
other = { pkg-path = "hello", systems = ["riscv64-linux"] }
[vars]
GREETING = "hi"
[hook]
on-activate = "echo hook"
[profile]
common = "alias ll='ls -l'"
bash = "export IN_BASH=1"
[options]
allow.unfree = true
[containerize.config]
user = "app"
exposed-ports = ["8080", "53/udp"]
cmd = ["hello"]
working-dir = "/srv"
stop-signal = "SIGINT"
labels = { team = "web" }
"#,
        )
        .unwrap();
        let sources: Vec<(&str, &str, u64)> = d.packages.iter().map(|p| (p.key.as_str(), p.source.as_str(), p.priority)).collect();
        assert_eq!(
            sources,
            [
                ("install.docs", "path:/np#hello^out,man", 5),
                ("install.fixed", "/nix/store/r7815vi79spcjkiidy1ypiwdj6xynisz-hello-2.12", 5),
                ("install.hello", "path:/np#hello", 5),
                ("install.pip", "path:/np#python310Packages.pip", 3),
                ("install.tool", "github:o/r#tool", 5),
            ]
        );
        assert_eq!(d.packages[3].version.as_deref(), Some("23.1"));
        assert_eq!((d.name.as_str(), d.tag.as_deref(), d.dir.as_path()), ("my-app", Some("latest"), Path::new("/work/My App")));
        assert_eq!(d.profile.as_deref(), Some("alias ll='ls -l'\nexport IN_BASH=1"));
        assert_eq!(d.config.exposed_ports.unwrap().keys(), ["53/udp", "8080/tcp"]);
        assert_eq!((d.user.as_deref(), d.config.working_dir.as_deref(), d.config.stop_signal.as_deref()), (Some("app"), Some("/srv"), Some("SIGINT")));
    }

    #[test]
    fn bad_manifests_name_the_key() {
        for (text, key) in [
            ("version = 2", "version"),
            ("version = 1\n[install]\nx = { pkg-path = \"a\", flake = \"b\" }", "install.x"),
            ("version = 1\n[install]\nx.pkg-path = \"a b\"", "install.x.pkg-path"),
            ("version = 1\n[install]\nx = { pkg-path = \"a\", colour = 1 }", "install.x"),
            ("version = 1\n[install]\nx = { pkg-path = \"a\", outputs = \"some\" }", "install.x.outputs"),
            ("version = 1\n[containerize.config]\nentrypoint = [\"sh\"]", "containerize.config"),
            ("version = 1\n[options]\nsystems = [\"riscv64-linux\"]", "options.systems"),
        ] {
            let (got, message) = parse(text).err().unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(got.starts_with(key), "{text}: {got}: {message}");
        }
    }
}
