//! Assembly: a validated spec to an image of layer recipes. The closure is computed, the
//! layers planned, the store scanned once, and the config made: the spec's config merged into
//! the base image's, when there is one. The base image arrives opened (the caller reads it,
//! from wherever it is, for the spec's platform); nothing here writes bytes: sinks do.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use oci_spec::image::{Arch, ImageConfiguration, Os};
use strata_oci::image::{ConfigRecipe, DockerKeys, Image, SourceImage};

use crate::closure::{Closure, ClosureError};
use crate::layer::{scan_tree, Entry, LayerError, LayerRecipe};
use crate::plan::{plan_layers, NoRoomForStorePaths, PlanInput, PlannedLayer};
use crate::spec::{ConfigPaths, ImageConfigSpec, PathMatcher, PermRule, ValidSpec};
use crate::store::{StorePath, STORE_DIR};

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Closure(#[from] ClosureError),
    #[error(transparent)]
    Plan(#[from] NoRoomForStorePaths),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("initialize_nix_database")]
    NixDb(#[from] crate::nixdb::NixDbError),
    #[error("max_layers = {max_layers} is too small for the base image's {base} layers and the explicit ones")]
    BaseTooBig { max_layers: usize, base: usize },
}

/// Where the closure comes from.
#[derive(Debug, Clone)]
pub enum ClosureSource {
    /// Ask the Nix installation.
    Nix,
    /// A closure graph file (`exportReferencesGraph`, `closureInfo`, `nix path-info --json`).
    GraphFile(PathBuf),
    /// Such a graph already read (from a stream script, say).
    Graph(Closure),
}

/// Computes the closure, plans the layers, scans the store for their entries and makes the
/// config: the image `spec` describes, over `base` (its `from_image`, opened by the caller).
///
/// `previous` is an earlier build's layers of store paths ([`previous_layers`]): those that
/// still hold are kept (see `plan`); empty for none.
pub fn assemble(spec: ValidSpec, source: &ClosureSource, base: Option<SourceImage>, previous: &[Vec<String>]) -> Result<Image<LayerRecipe>, AssembleError> {
    let base_layers = base.as_ref().map_or(0, |b| b.layers.len());
    let links = usize::from(!spec.link_to_root.is_empty());
    if base_layers + spec.layers.len() + usize::from(!spec.copy_to_root.is_empty()) + links > spec.max_layers {
        return Err(AssembleError::BaseTooBig { max_layers: spec.max_layers, base: base_layers });
    }
    let graph = match source {
        ClosureSource::Nix => None,
        ClosureSource::Graph(closure) => Some(closure.clone()),
        ClosureSource::GraphFile(file) => Some(Closure::from_graph_file(file)?),
    };
    let mut config_roots = spec.config_roots();
    // With `config_paths = "referenced"`, the closure graph says which of the config's store
    // paths are references (the Nix library's: Nix decides, as for dockerTools; a nix-shell
    // image's `out` is text); the others are left as text.
    if let (ConfigPaths::Referenced, Some(closure)) = (spec.config_paths, &graph) {
        config_roots.retain(|(key, path)| closure.check_root(key, path).is_ok());
    }
    let mut keyed_roots: Vec<(String, StorePath)> = spec.roots.iter().cloned().chain(config_roots.iter().cloned()).collect();
    keyed_roots.extend(spec.copy_to_root.iter().cloned());
    keyed_roots.extend(spec.link_to_root.iter().cloned());
    for (i, layer) in spec.layers.iter().enumerate() {
        let keyed = |key: &str, paths: &[StorePath]| paths.iter().enumerate().map(|(j, p)| (format!("layers[{i}].{key}[{j}]"), p.clone())).collect::<Vec<_>>();
        keyed_roots.extend(keyed("roots", &layer.roots));
        keyed_roots.extend(keyed("copy_to_root", &layer.copy_to_root));
    }
    let closure = match graph {
        None => Closure::from_nix(&keyed_roots)?,
        Some(closure) => {
            for (key, path) in &keyed_roots {
                closure.check_root(key, path)?;
                if std::fs::symlink_metadata(path).is_err() {
                    return Err(ClosureError::Missing { key: key.clone(), path: path.clone() }.into());
                }
            }
            closure
        }
    };

    // Trees linked from / are in the store themselves, with their closures.
    let roots: Vec<StorePath> = spec.roots.iter().chain(&config_roots).chain(&spec.link_to_root).map(|(_, p)| p.clone()).collect();
    let copy_to_root: Vec<StorePath> = spec.copy_to_root.iter().map(|(_, p)| p.clone()).collect();
    let max_layers = spec.max_layers.saturating_sub(base_layers + usize::from(spec.initialize_nix_database) + links);
    let input = PlanInput {
        closure: &closure,
        explicit: &spec.layers,
        roots: roots.clone(),
        copy_to_root,
        max_layers,
        max_store_layers: spec.max_store_layers,
        previous,
    };

    // Scan every store path once, on every core; the plan needs their sizes, the recipes
    // their entries.
    let all_roots = roots.iter().chain(input.copy_to_root.iter().flat_map(|t| closure.references(t)));
    let explicit_roots = spec.layers.iter().flat_map(|l| l.roots.iter().chain(l.copy_to_root.iter().flat_map(|t| closure.references(t))));
    let requisites: Vec<StorePath> = closure.requisites(all_roots.chain(explicit_roots)).into_iter().collect();
    let scanned: BTreeMap<StorePath, (Vec<Entry>, u64)> = requisites
        .into_par_iter()
        .map(|path| {
            let prefix = format!("nix/store/{}", path.base_name());
            let (mut entries, size) = scan_tree(path.as_ref(), prefix.as_bytes())?;
            // In the store, a file's path in the image is its store path.
            apply_source_perms(&spec.perms, &path, &mut entries, |e| format!("/{}", String::from_utf8_lossy(&e.path)));
            Ok((path, (entries, size)))
        })
        .collect::<Result<_, LayerError>>()?;
    let mut planned = plan_layers(&input, |p| scanned.get(p).map_or(0, |(_, size)| *size))?;
    if !spec.include_store_paths {
        planned.retain_mut(|layer| {
            layer.store_paths.clear();
            !layer.root_trees.is_empty()
        });
    }
    let database = if spec.initialize_nix_database {
        let paths = planned.iter().flat_map(|l| l.store_paths.iter().cloned()).collect();
        Some(crate::nixdb::database_entries(&closure, &paths, spec.mtime, spec.nix_owner)?)
    } else {
        None
    };

    // Each layer's recipe (reading the files that could be duplicates), on every core.
    let recipe = |layer: PlannedLayer| -> Result<LayerRecipe, AssembleError> {
        let store_entries = layer.store_paths.iter().flat_map(|p| scanned[p].0.iter().cloned()).collect();
        let mut root_entries = Vec::new();
        for tree in &layer.root_trees {
            let mut entries = scan_tree(tree.as_ref(), b"")?.0;
            apply_source_perms(&spec.perms, tree, &mut entries, |e| format!("{tree}/{}", String::from_utf8_lossy(&e.path)));
            if spec.keep_contents_dirlinks {
                entries = crate::layer::through_dirlinks(&root_entries, entries);
            }
            root_entries.extend(entries);
        }
        let comment = describe(&layer.store_paths, &layer.root_trees);
        let mut recipe = LayerRecipe::new(store_entries, root_entries, &spec.perms, spec.mtime, comment)?;
        recipe.root_trees = layer.root_trees;
        recipe.explicit = layer.explicit;
        if let Some(meta) = layer.explicit.map(|i| &spec.layers[i].metadata) {
            recipe.comment = meta.comment.clone().unwrap_or(recipe.comment);
            recipe.created_by = meta.created_by.clone();
            recipe.author = meta.author.clone();
        }
        Ok(recipe)
    };
    let mut layers: Vec<LayerRecipe> = planned.into_par_iter().map(recipe).collect::<Result<_, _>>()?;
    if links == 1 {
        let trees: Vec<StorePath> = spec.link_to_root.iter().map(|(_, p)| p.clone()).collect();
        let names: Vec<&str> = trees.iter().map(StorePath::name).collect();
        let comment = format!("linked from /: {}", names.join(", "));
        layers.push(LayerRecipe::new(vec![], crate::layer::link_trees(&trees)?, &spec.perms, spec.mtime, comment)?);
    }
    if let Some(entries) = database {
        layers.push(LayerRecipe::new(vec![], entries, &[], spec.mtime, "Nix database: /nix/var/nix/db".to_owned())?);
    }
    let config = config_of(&spec.config, base.as_ref(), &spec.created, &spec.architecture);
    let docker = docker_keys_of(&spec.config, base.as_ref());
    Ok(Image {
        name: spec.name,
        tag: spec.tag,
        mtime: spec.mtime,
        config: ConfigRecipe::Built(Box::new(config), docker),
        base,
        layers,
        recode: None,
        recorded: None,
        previous: None,
    })
}

/// Applies nix2container-style perm rules (`store_path`) to the entries of `store_path`, each
/// file's own path in the store given by `source`.
fn apply_source_perms(perms: &[PermRule], store_path: &StorePath, entries: &mut [Entry], source: impl Fn(&Entry) -> String) {
    for rule in perms.iter().filter(|r| matches!(&r.matcher, PathMatcher::Source { store_path: p, .. } if p == store_path)) {
        for entry in entries.iter_mut() {
            if rule.matcher.matches_source(store_path, &source(entry)) {
                rule.apply(entry);
            }
        }
    }
}

/// Docker's config keys beyond OCI's: the base image's (oci-spec's types drop them), then the
/// spec's, which win.
fn docker_keys_of(c: &ImageConfigSpec, base: Option<&SourceImage>) -> DockerKeys {
    const OCI: [&str; 9] = ["User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels", "StopSignal"];
    let mut keys = DockerKeys::new();
    if let Some(base) = base {
        if let Ok(serde_json::Value::Object(config)) = serde_json::from_slice::<serde_json::Value>(&base.config_bytes).map(|v| v["config"].clone()) {
            keys.extend(config.into_iter().filter(|(k, v)| !OCI.contains(&k.as_str()) && !v.is_null()));
        }
    }
    keys.extend(c.docker_keys());
    keys
}

/// The config of an image over `base`, all but its `rootfs` and the built layers' history
/// (see [`ConfigRecipe::Built`]). On a base image, the spec's config is merged into the
/// base's: `Env` by variable (the spec's wins), `Labels` merged, `ExposedPorts` and
/// `Volumes` united, the other keys kept unless the spec sets them; the base's history
/// comes first.
fn config_of(c: &ImageConfigSpec, base: Option<&SourceImage>, created: &str, architecture: &str) -> ImageConfiguration {
    let mut config = base.and_then(|b| b.config.config().clone()).unwrap_or_default();
    config.set_entrypoint(c.entrypoint.clone().or_else(|| config.entrypoint().clone()));
    config.set_cmd(c.cmd.clone().or_else(|| config.cmd().clone()));
    config.set_working_dir(c.working_dir.clone().or_else(|| config.working_dir().clone()));
    config.set_user(c.user.clone().or_else(|| config.user().clone()));
    config.set_stop_signal(c.stop_signal.clone().or_else(|| config.stop_signal().clone()));
    config.set_env(merge_lists(config.env().clone(), c.env.clone(), |v: &String| v.split('=').next().unwrap_or_default().to_owned()));
    config.set_exposed_ports(merge_lists(config.exposed_ports().clone(), c.exposed_ports.as_ref().map(|p| p.keys()), String::clone));
    config.set_volumes(merge_lists(config.volumes().clone(), c.volumes.as_ref().map(|v| v.keys()), String::clone));
    let mut labels: BTreeMap<String, String> = config.labels().clone().unwrap_or_default().into_iter().collect();
    labels.extend(c.labels.clone().unwrap_or_default());
    config.set_labels((!labels.is_empty()).then(|| labels.into_iter().collect()));

    let history = base.and_then(|b| b.config.history().clone()).unwrap_or_default();
    let mut image = ImageConfiguration::default();
    image.set_created(Some(created.to_owned()));
    image.set_architecture(Arch::from(architecture));
    image.set_os(Os::Linux);
    image.set_config(Some(config));
    image.set_history(Some(history));
    image
}

/// `base` then `over`, where an item of `over` replaces the item of `base` with the same key
/// in place; `None` if both are.
fn merge_lists<T: Clone>(base: Option<Vec<T>>, over: Option<Vec<T>>, key: impl Fn(&T) -> String) -> Option<Vec<T>> {
    if base.is_none() && over.is_none() {
        return None;
    }
    let mut merged: Vec<T> = base.unwrap_or_default();
    for item in over.unwrap_or_default() {
        match merged.iter().position(|m| key(m) == key(&item)) {
            Some(i) => merged[i] = item,
            None => merged.push(item),
        }
    }
    Some(merged)
}

/// The history comment of a built layer: every store path it holds by base name (so a later
/// build can keep the layer, see [`previous_layers`]), and the trees laid over `/`.
fn describe(store_paths: &[StorePath], root_trees: &[StorePath]) -> String {
    let mut parts = Vec::new();
    if !store_paths.is_empty() {
        parts.push(format!("{STORE_PATHS}{}", store_paths.iter().map(StorePath::base_name).collect::<Vec<_>>().join(", ")));
    }
    if !root_trees.is_empty() {
        parts.push(format!("laid over /: {}", root_trees.iter().map(StorePath::name).collect::<Vec<_>>().join(", ")));
    }
    parts.join("; ")
}

const STORE_PATHS: &str = "store paths: ";

/// The store paths (base names) a history comment of strata's names ([`describe`]); empty for
/// a comment of another tool, and names that are not store path base names are passed over.
pub fn store_paths_of_comment(comment: &str) -> Vec<String> {
    let Some(listed) = comment.strip_prefix(STORE_PATHS) else { return vec![] };
    let listed = listed.split_once("; ").map_or(listed, |(paths, _)| paths);
    listed.split(", ").filter(|name| StorePath::containing(&format!("{STORE_DIR}/{name}")).is_ok_and(|p| p.base_name() == *name)).map(str::to_owned).collect()
}

/// The layers of store paths of an image strata built, read from its config's history (what
/// [`describe`] wrote): what `strata build --previous IMAGE` keeps. Entries of other tools
/// are passed over.
pub fn previous_layers(config: &oci_spec::image::ImageConfiguration) -> Vec<Vec<String>> {
    let history = config.history().as_deref().unwrap_or_default();
    history.iter().filter_map(|entry| entry.comment().as_deref()).map(store_paths_of_comment).filter(|layer| !layer.is_empty()).collect()
}

/// The store paths (base names) a built layer holds or lays over `/`: what a bill of
/// materials lists for it.
pub fn packages_of(recipe: &LayerRecipe) -> Vec<String> {
    let mut paths = store_paths_of_comment(&recipe.comment);
    paths.extend(recipe.root_trees.iter().map(|t| t.base_name().to_owned()));
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoBlobs;

    impl strata_oci::image::BlobSource for NoBlobs {
        fn open(&self, _: &strata_oci::digest::Digest, _: u64) -> std::io::Result<(PathBuf, Box<dyn std::io::Read + Send>)> {
            Err(std::io::Error::other("no blobs here"))
        }
    }

    /// The spec's config merged into a base image's, key by key.
    #[test]
    fn history_comments_name_each_layers_store_paths_and_are_read_back() {
        let path = |name: &str| StorePath::containing(&format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap();
        let (hello, glibc, etc) = (path("hello-2.12"), path("glibc-2.36"), path("etc"));
        let both = describe(&[hello.clone(), glibc.clone()], std::slice::from_ref(&etc));
        assert_eq!(both, format!("store paths: {}, {}; laid over /: etc", hello.base_name(), glibc.base_name()));
        let history = serde_json::json!([
            { "created_by": "another tool", "comment": "store paths: not-a-store-path" },
            { "comment": both },
            { "comment": describe(&[], &[etc]) },
            { "comment": describe(std::slice::from_ref(&glibc), &[]) },
            { "empty_layer": true },
        ]);
        let config: oci_spec::image::ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [] }, "history": history
        }))
        .unwrap();
        let expected = vec![vec![hello.base_name().to_owned(), glibc.base_name().to_owned()], vec![glibc.base_name().to_owned()]];
        assert_eq!(previous_layers(&config), expected);
    }

    #[test]
    fn the_specs_config_is_merged_into_the_base_images() {
        let base_config: ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
            "history": [{"created_by": "base"}],
            "config": {"Env": ["PATH=/bin", "A=base", "KEEP=1"], "Labels": {"from": "base", "x": "1"}, "Cmd": ["from-base"],
                       "WorkingDir": "/tmp", "ExposedPorts": {"80/tcp": {}}, "Entrypoint": ["/base"]}
        }))
        .unwrap();
        let base = SourceImage {
            config_bytes: vec![],
            config: base_config,
            manifest_bytes: None,
            layers: vec![],
            reference: None,
            origin: None,
            blobs: std::sync::Arc::new(NoBlobs),
        };
        let spec: ImageConfigSpec = serde_json::from_value(serde_json::json!({
            "Env": ["A=top"], "Labels": {"x": "2"}, "Entrypoint": ["/top"], "ExposedPorts": ["8080/tcp"]
        }))
        .unwrap();
        let merged = config_of(&spec, Some(&base), "2024-05-06T05:08:09Z", "arm64");
        let json = serde_json::to_value(&merged).unwrap();
        let c = &json["config"];
        assert_eq!(c["Env"], serde_json::json!(["PATH=/bin", "A=top", "KEEP=1"]), "by variable, in place, the spec's wins");
        assert_eq!(c["Labels"], serde_json::json!({"from": "base", "x": "2"}));
        assert_eq!(c["ExposedPorts"], serde_json::json!({"80/tcp": {}, "8080/tcp": {}}));
        assert_eq!(
            (&c["Cmd"], &c["WorkingDir"], &c["Entrypoint"]),
            (&serde_json::json!(["from-base"]), &serde_json::json!("/tmp"), &serde_json::json!(["/top"]))
        );
        assert_eq!(json["history"], serde_json::json!([{"created_by": "base"}]), "the base's history first; built layers are added when written");
        assert_eq!((&json["architecture"], &json["created"]), (&serde_json::json!("arm64"), &serde_json::json!("2024-05-06T05:08:09Z")));
        let alone = serde_json::to_value(config_of(&spec, None, "1970-01-01T00:00:01Z", "amd64")).unwrap();
        assert_eq!(alone["config"]["Env"], serde_json::json!(["A=top"]));
    }
}
