//! The layer plan: which store paths go in which layer.
//!
//! 1. Explicit layers come first, in the spec's order. Each holds the closure of its roots
//!    (and of the references of its `copy_to_root` trees) minus what an earlier explicit
//!    layer already holds, plus those trees.
//! 2. The remaining store paths (the closure of the roots, of the store paths named in the
//!    config, and of the references of the `copy_to_root` trees, minus the explicit layers'
//!    paths) share the budget left: `max_layers`, less the explicit layers, less one for the
//!    `copy_to_root` layer if there is one.
//! 3. If they fit, every path gets a layer of its own. Otherwise `budget - 1` paths get their
//!    own layer and the rest share the last one. Half of those places go to the most popular
//!    paths (popularity: how many paths of the closure need a path, itself included; ties go
//!    to the bigger one), the other half to the biggest of the paths left. Popular paths
//!    (libc, runtimes) rarely change and are shared by many images, so a layer of their own
//!    is reused across rebuilds and images; big paths would make a shared layer expensive to
//!    rebuild and push when any small path beside them changes. The least popular paths,
//!    the application itself and its private files, change most often: they share the last
//!    layer, which changes with them anyway.
//! 4. The `copy_to_root` trees come last, in one layer.
//!
//! Stability: a layer's bytes depend only on the paths in it (see `layer`), so a changed
//! path changes its own layer (or the shared one) and leaves every other layer's digest as
//! it was. Own layers are ordered by popularity, then by path, so the base of the image is
//! at the bottom. No store path appears twice.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::closure::Closure;
use crate::spec::ExplicitLayer;
use crate::store::StorePath;

/// One planned layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlannedLayer {
    /// Store paths whose trees go to `/nix/store/<name>`, sorted.
    pub store_paths: Vec<StorePath>,
    /// Store paths whose trees are laid over `/`, in the order given (a later one wins).
    pub root_trees: Vec<StorePath>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("max_layers = {max_layers} leaves no layer for the {left} store paths outside the explicit layers")]
pub struct NoRoomForStorePaths {
    pub max_layers: usize,
    pub left: usize,
}

/// What the plan is made from.
pub struct PlanInput<'a> {
    pub closure: &'a Closure,
    pub explicit: &'a [ExplicitLayer],
    /// Closure roots outside the explicit layers (spec roots and config store paths).
    pub roots: Vec<StorePath>,
    pub copy_to_root: Vec<StorePath>,
    pub max_layers: usize,
}

/// Makes the plan; `size_of` gives the bytes of a store path.
pub fn plan_layers(input: &PlanInput, size_of: impl Fn(&StorePath) -> u64) -> Result<Vec<PlannedLayer>, NoRoomForStorePaths> {
    let closure = input.closure;
    let closure_of = |roots: &[StorePath], trees: &[StorePath]| {
        let tree_refs = trees.iter().flat_map(|t| closure.references(t));
        closure.requisites(roots.iter().chain(tree_refs))
    };
    let mut layers = Vec::new();
    let mut taken = BTreeSet::new();
    for layer in input.explicit {
        let paths: Vec<StorePath> = closure_of(&layer.roots, &layer.copy_to_root).into_iter().filter(|p| !taken.contains(p)).collect();
        taken.extend(paths.iter().cloned());
        layers.push(PlannedLayer { store_paths: paths, root_trees: layer.copy_to_root.clone() });
    }
    let rest: BTreeSet<StorePath> = closure_of(&input.roots, &input.copy_to_root).into_iter().filter(|p| !taken.contains(p)).collect();
    let budget = input.max_layers.saturating_sub(input.explicit.len() + usize::from(!input.copy_to_root.is_empty()));
    if !rest.is_empty() {
        if budget == 0 {
            return Err(NoRoomForStorePaths { max_layers: input.max_layers, left: rest.len() });
        }
        layers.extend(split(closure, rest, budget, size_of).into_iter().map(|store_paths| PlannedLayer { store_paths, root_trees: vec![] }));
    }
    if !input.copy_to_root.is_empty() {
        layers.push(PlannedLayer { store_paths: vec![], root_trees: input.copy_to_root.clone() });
    }
    Ok(layers)
}

/// Splits `paths` into at most `budget` layers (step 3 of the module doc).
fn split(closure: &Closure, paths: BTreeSet<StorePath>, budget: usize, size_of: impl Fn(&StorePath) -> u64) -> Vec<Vec<StorePath>> {
    let popularity = closure.popularity(&paths);
    let sizes: BTreeMap<&StorePath, u64> = paths.iter().map(|p| (p, size_of(p))).collect();
    let mut by_popularity: Vec<&StorePath> = paths.iter().collect();
    by_popularity.sort_by_key(|p| (Reverse(popularity[*p]), Reverse(sizes[*p]), *p));

    let (own, shared): (Vec<&StorePath>, Vec<&StorePath>) = if paths.len() <= budget {
        (by_popularity, vec![])
    } else {
        let places = budget - 1;
        let popular = places.div_ceil(2);
        let mut own: Vec<&StorePath> = by_popularity[..popular].to_vec();
        let mut rest: Vec<&StorePath> = by_popularity[popular..].to_vec();
        rest.sort_by_key(|p| (Reverse(sizes[*p]), *p));
        own.extend(rest.drain(..places - popular));
        own.sort_by_key(|p| (Reverse(popularity[*p]), *p));
        rest.sort();
        (own, rest)
    };
    let mut layers: Vec<Vec<StorePath>> = own.into_iter().map(|p| vec![p.clone()]).collect();
    if !shared.is_empty() {
        layers.push(shared.into_iter().cloned().collect());
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sp(i: usize) -> StorePath {
        StorePath::containing(&format!("/nix/store/{:0>32}-p{i}", i)).unwrap()
    }

    /// A graph where path i references every path j < i with `edges(i, j)`.
    fn graph(n: usize, edges: impl Fn(usize, usize) -> bool) -> (Closure, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("graph");
        let mut text = String::new();
        for i in 0..n {
            let refs: Vec<String> = (0..i).filter(|j| edges(i, *j)).map(|j| sp(j).to_string()).collect();
            text += &format!("{}\n\n{}\n{}", sp(i), refs.len(), refs.iter().map(|r| format!("{r}\n")).collect::<String>());
        }
        std::fs::write(&file, text).unwrap();
        (Closure::from_graph_file(&file).unwrap(), dir)
    }

    fn all_paths(layers: &[PlannedLayer]) -> Vec<StorePath> {
        layers.iter().flat_map(|l| l.store_paths.iter().cloned()).collect()
    }

    #[test]
    fn popular_and_big_paths_get_own_layers() {
        // p0 is needed by everyone; p1..p9 form a chain; p5 is huge.
        let (closure, _dir) = graph(10, |i, j| j == 0 || j + 1 == i);
        let input = PlanInput { closure: &closure, explicit: &[], roots: vec![sp(9)], copy_to_root: vec![], max_layers: 4 };
        let layers = plan_layers(&input, |p| if *p == sp(5) { 1 << 30 } else { 10 }).unwrap();
        assert_eq!(layers.len(), 4);
        assert_eq!(layers[0].store_paths, [sp(0)]);
        assert_eq!(layers[1].store_paths, [sp(1)]);
        assert!(layers[..3].iter().any(|l| l.store_paths == [sp(5)]), "{layers:?}");
        assert_eq!(layers[3].store_paths.len(), 7);
    }

    #[test]
    fn explicit_layers_come_first_and_nothing_repeats() {
        let (closure, _dir) = graph(6, |i, j| j + 1 == i);
        let explicit = [ExplicitLayer { roots: vec![sp(2)], copy_to_root: vec![] }, ExplicitLayer { roots: vec![sp(3)], copy_to_root: vec![] }];
        let input = PlanInput { closure: &closure, explicit: &explicit, roots: vec![sp(5)], copy_to_root: vec![], max_layers: 10 };
        let layers = plan_layers(&input, |_| 1).unwrap();
        assert_eq!(layers[0].store_paths, [sp(0), sp(1), sp(2)]);
        assert_eq!(layers[1].store_paths, [sp(3)]);
        assert_eq!(all_paths(&layers[2..]), [sp(4), sp(5)]);
    }

    #[test]
    fn too_small_a_budget_is_an_error() {
        let (closure, _dir) = graph(3, |_, _| false);
        let explicit = [ExplicitLayer { roots: vec![sp(0)], copy_to_root: vec![] }];
        let input = PlanInput { closure: &closure, explicit: &explicit, roots: vec![sp(1)], copy_to_root: vec![sp(2)], max_layers: 2 };
        assert_eq!(plan_layers(&input, |_| 1), Err(NoRoomForStorePaths { max_layers: 2, left: 1 }));
    }

    proptest! {
        /// Any graph, any budget: every requisite exactly once, never more layers than allowed.
        #[test]
        fn plans_respect_budget_and_cover_the_closure(n in 1usize..40, max_layers in 1usize..12, seed in any::<u64>()) {
            let (closure, _dir) = graph(n, |i, j| (seed >> ((i * 7 + j) % 64)) & 1 == 1);
            let roots: Vec<StorePath> = (0..n).filter(|i| i % 3 == 0).map(sp).collect();
            let input = PlanInput { closure: &closure, explicit: &[], roots: roots.clone(), copy_to_root: vec![], max_layers };
            let layers = plan_layers(&input, |p| p.as_str().len() as u64).unwrap();
            prop_assert!(layers.len() <= max_layers);
            let mut paths = all_paths(&layers);
            let unique: BTreeSet<_> = paths.iter().cloned().collect();
            prop_assert_eq!(unique.len(), paths.len());
            paths.sort();
            prop_assert_eq!(paths, closure.requisites(&roots).into_iter().collect::<Vec<_>>());
        }
    }
}
