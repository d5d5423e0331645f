//! The layer plan: which store paths go in which layer.
//!
//! 1. Explicit layers come first, in the spec's order. Each holds the closure of its roots
//!    (and of the references of its `copy_to_root` trees) minus what an earlier explicit
//!    layer already holds, plus those trees; one allowed more than one layer (`max_layers`)
//!    is split as step 4 splits the rest, its trees in its last part.
//! 2. The remaining store paths (the closure of the roots, of the store paths named in the
//!    config, and of the references of the `copy_to_root` trees, minus the explicit layers'
//!    paths) share the budget left: `max_layers`, less the explicit layers, less one for the
//!    `copy_to_root` layer if there is one.
//! 3. If a previous build's layers are given (see `--previous`), each of its layers whose
//!    store paths are all still here is kept as it was (so its digest is too), in its old
//!    order. If they leave no room for the paths that are new (a layer for each root, one
//!    for the rest), the kept layers with the fewest bytes are merged (those are the
//!    cheapest to push again).
//! 4. The other paths share what is left of the budget. If they fit, every path gets a layer
//!    of its own. Otherwise the roots (the application: what changes most often) get their
//!    own layers, and of the places left a fifth go to groups, the rest to paths of their
//!    own: half to the most popular paths (popularity: how many paths of the closure need a
//!    path, itself included; ties go to the bigger one), half to the biggest of the paths
//!    left. Popular paths rarely change and are shared by many images; big paths would make a
//!    group expensive to push again when a small path beside them changes. The remaining
//!    (small) paths are grouped: paths that reference no other path (data, fonts, static
//!    binaries: nothing they depend on can change them) apart from the rest, each kind in
//!    runs of equal bytes, in order of popularity. So a new release of the application
//!    changes its own layers only, and a rebuild of everything (a new glibc changes every
//!    path above it) leaves the groups of self-contained paths as they were.
//! 5. The `copy_to_root` trees come last, in one layer.
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
    /// The explicit layer (its index in the spec) this layer is, or a part of.
    pub explicit: Option<usize>,
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
    /// A bound of its own on the layers of the paths outside the explicit layers.
    pub max_store_layers: Option<usize>,
    /// A previous build's layers of store paths, by base name (`<hash>-<name>`), to keep
    /// where they still hold; empty for none.
    pub previous: &'a [Vec<String>],
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
    for (i, layer) in input.explicit.iter().enumerate() {
        let paths: BTreeSet<StorePath> =
            closure_of(&layer.roots, &layer.copy_to_root).into_iter().filter(|p| !taken.contains(p) && !layer.ignore.contains(p)).collect();
        taken.extend(paths.iter().cloned());
        // An explicit layer of more than one (nix2container's buildLayer `maxLayers`) is split
        // as the rest is, its trees in its last part.
        let mut parts = if layer.max_layers > 1 && paths.len() > 1 {
            split_fresh(closure, paths, &layer.roots, layer.max_layers, &size_of)
        } else {
            vec![paths.into_iter().collect()]
        };
        let last = parts.pop().unwrap_or_default();
        layers.extend(parts.into_iter().map(|store_paths| PlannedLayer { store_paths, root_trees: vec![], explicit: Some(i) }));
        layers.push(PlannedLayer { store_paths: last, root_trees: layer.copy_to_root.clone(), explicit: Some(i) });
    }
    let rest: BTreeSet<StorePath> = closure_of(&input.roots, &input.copy_to_root).into_iter().filter(|p| !taken.contains(p)).collect();
    let explicit_slots: usize = input.explicit.iter().map(|l| l.max_layers.max(1)).sum();
    let budget = input.max_layers.saturating_sub(explicit_slots + usize::from(!input.copy_to_root.is_empty()));
    let budget = input.max_store_layers.map_or(budget, |bound| budget.min(bound));
    if !rest.is_empty() {
        if budget == 0 {
            return Err(NoRoomForStorePaths { max_layers: input.max_layers, left: rest.len() });
        }
        let grouped = split(closure, rest, &input.roots, input.previous, budget, size_of);
        layers.extend(grouped.into_iter().map(|store_paths| PlannedLayer { store_paths, root_trees: vec![], explicit: None }));
    }
    if !input.copy_to_root.is_empty() {
        layers.push(PlannedLayer { store_paths: vec![], root_trees: input.copy_to_root.clone(), explicit: None });
    }
    Ok(layers)
}

/// Splits `paths` into at most `budget` layers (steps 3 and 4 of the module doc).
fn split(
    closure: &Closure,
    mut paths: BTreeSet<StorePath>,
    roots: &[StorePath],
    previous: &[Vec<String>],
    budget: usize,
    size_of: impl Fn(&StorePath) -> u64,
) -> Vec<Vec<StorePath>> {
    // A previous layer is kept if every path it names is here and in no layer kept before it
    // (what it lists comes from an image's history: anyone may have written it).
    let by_name: BTreeMap<&str, &StorePath> = paths.iter().map(|p| (p.base_name(), p)).collect();
    let mut claimed: BTreeSet<StorePath> = BTreeSet::new();
    let mut kept: Vec<Vec<StorePath>> = Vec::new();
    for layer in previous.iter().filter(|layer| !layer.is_empty()) {
        let Some(found) = layer.iter().map(|name| by_name.get(name.as_str()).map(|p| (*p).clone())).collect::<Option<BTreeSet<_>>>() else {
            continue;
        };
        if found.len() == layer.len() && found.is_disjoint(&claimed) {
            claimed.extend(found.iter().cloned());
            kept.push(found.into_iter().collect());
        }
    }
    for path in &claimed {
        paths.remove(path);
    }
    // Room for what is new: a layer for each root (the application gets its own layer, so
    // its next release changes nothing else) and one for the other paths.
    let new_roots = roots.iter().filter(|r| paths.contains(*r)).collect::<BTreeSet<_>>().len();
    let room_for_new = new_roots + usize::from(paths.len() > new_roots);
    while kept.len() + room_for_new > budget && kept.len() > 1 {
        // Merge the two kept layers with the fewest bytes.
        let bytes = |layer: &Vec<StorePath>| layer.iter().map(&size_of).sum::<u64>();
        let mut order: Vec<usize> = (0..kept.len()).collect();
        order.sort_by_key(|i| (bytes(&kept[*i]), *i));
        let (a, b) = (order[0].min(order[1]), order[0].max(order[1]));
        let merged = kept.remove(b);
        kept[a].extend(merged);
        kept[a].sort();
    }
    if kept.len() + room_for_new > budget {
        // One layer for everything: nothing to keep.
        paths.extend(kept.drain(..).flatten());
    }
    let fresh = if paths.is_empty() { vec![] } else { split_fresh(closure, paths, roots, budget.saturating_sub(kept.len()).max(1), size_of) };
    kept.into_iter().chain(fresh).collect()
}

/// Step 4: paths no previous layer keeps, into at most `budget` (at least 1) layers.
fn split_fresh(closure: &Closure, paths: BTreeSet<StorePath>, roots: &[StorePath], budget: usize, size_of: impl Fn(&StorePath) -> u64) -> Vec<Vec<StorePath>> {
    let popularity = closure.popularity(&paths);
    let sizes: BTreeMap<&StorePath, u64> = paths.iter().map(|p| (p, size_of(p))).collect();
    let mut by_popularity: Vec<&StorePath> = paths.iter().collect();
    by_popularity.sort_by_key(|p| (Reverse(popularity[*p]), Reverse(sizes[*p]), *p));
    if paths.len() <= budget {
        return by_popularity.into_iter().map(|p| vec![p.clone()]).collect();
    }
    // Places for paths of their own, and for groups (at least one: what does not fit).
    let groups = (budget / 5).max(1);
    let places = budget - groups;
    let mut own: Vec<&StorePath> = roots.iter().filter(|r| paths.contains(*r)).collect::<BTreeSet<_>>().into_iter().take(places).collect();
    let mut rest: Vec<&StorePath> = by_popularity.into_iter().filter(|p| !own.contains(p)).collect();
    let popular = (places - own.len()).div_ceil(2);
    own.extend(rest.drain(..popular.min(rest.len())));
    rest.sort_by_key(|p| (Reverse(sizes[*p]), *p));
    own.extend(rest.drain(..(places - own.len()).min(rest.len())));
    own.sort_by_key(|p| (Reverse(popularity[*p]), *p));

    // The small rest, in groups: self-contained paths apart, each kind in runs of about equal
    // bytes, in popularity order; a kind gets groups in proportion to its bytes (one at least).
    rest.sort_by_key(|p| (Reverse(popularity[*p]), *p));
    let kinds: Vec<Vec<&StorePath>> = if groups < 2 {
        vec![rest]
    } else {
        let (alone, dependent): (Vec<&StorePath>, Vec<&StorePath>) = rest.into_iter().partition(|p| closure.references(p).iter().all(|r| r == *p));
        [alone, dependent].into_iter().filter(|k| !k.is_empty()).collect()
    };
    let bytes = |kind: &[&StorePath]| kind.iter().map(|p| sizes[*p]).sum::<u64>().max(1);
    let total: u64 = kinds.iter().map(|k| bytes(k)).sum();
    let mut left = groups;
    let mut layers: Vec<Vec<StorePath>> = own.into_iter().map(|p| vec![p.clone()]).collect();
    for (i, kind) in kinds.iter().enumerate() {
        let later = kinds.len() - i - 1;
        let share = if later == 0 { left } else { ((groups as u128 * bytes(kind) as u128 / total as u128) as usize).clamp(1, left - later) };
        left -= share;
        layers.extend(runs_of_equal_bytes(kind, share, |p| sizes[p]));
    }
    layers
}

/// `paths` cut, in order, into at most `n` runs of about equal bytes.
fn runs_of_equal_bytes(paths: &[&StorePath], n: usize, size_of: impl Fn(&StorePath) -> u64) -> Vec<Vec<StorePath>> {
    let total: u64 = paths.iter().map(|p| size_of(p)).sum();
    let per_run = total.div_ceil(n.max(1) as u64).max(1);
    let mut runs: Vec<Vec<StorePath>> = vec![];
    let mut filled = 0;
    for path in paths {
        if runs.is_empty() || (filled >= per_run && runs.len() < n) {
            runs.push(vec![]);
            filled = 0;
        }
        filled += size_of(path);
        runs.last_mut().expect("a run").push((*path).clone());
    }
    for run in &mut runs {
        run.sort();
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sp(i: usize) -> StorePath {
        StorePath::containing(&format!("/nix/store/{:0>32}-p{i}", i)).unwrap()
    }

    /// The plan's input of `roots` in `closure` under `max_layers`: nothing explicit, no
    /// previous build (struct update syntax sets those).
    fn input(closure: &Closure, roots: Vec<StorePath>, max_layers: usize) -> PlanInput<'_> {
        PlanInput { closure, explicit: &[], roots, copy_to_root: vec![], max_layers, max_store_layers: None, previous: &[] }
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
    fn roots_popular_and_big_paths_get_own_layers_small_ones_groups() {
        // p0 is needed by everyone; p1..p9 form a chain; p5 is huge; p9 is the root.
        let (closure, _dir) = graph(10, |i, j| j == 0 || j + 1 == i);
        let input = input(&closure, vec![sp(9)], 5);
        let layers = plan_layers(&input, |p| if *p == sp(5) { 1 << 30 } else { 10 }).unwrap();
        // Four places of their own (the root, popular p0 and p1, big p5) and one group.
        assert_eq!(layers.len(), 5, "{layers:?}");
        for own in [sp(0), sp(1), sp(5), sp(9)] {
            assert!(layers.iter().any(|l| l.store_paths == [own.clone()]), "{own} has no layer of its own: {layers:?}");
        }
        assert_eq!(layers[4].store_paths, [sp(2), sp(3), sp(4), sp(6), sp(7), sp(8)]);
    }

    #[test]
    fn self_contained_paths_are_grouped_apart() {
        // p0..p9 reference nothing (data); p10..p28 reference p10 (a libc) and the one before;
        // the root p29 references all of them.
        let (closure, _dir) = graph(30, |i, j| i == 29 || (i > 10 && (j == 10 || j + 1 == i)));
        let input = input(&closure, vec![sp(29)], 10);
        let layers = plan_layers(&input, |_| 10).unwrap();
        assert_eq!(layers.len(), 10);
        let groups: Vec<&PlannedLayer> = layers.iter().filter(|l| l.store_paths.len() > 1).collect();
        assert_eq!(groups.len(), 2, "{layers:?}");
        let self_contained = |p: &StorePath| closure.references(p).iter().all(|r| r == p);
        assert!(groups.iter().any(|g| g.store_paths.iter().all(self_contained)), "{groups:?}");
        assert!(groups.iter().any(|g| !g.store_paths.iter().any(self_contained)), "{groups:?}");
    }

    /// The base names of a plan's layers: what a build records and a later build is given.
    fn names(layers: &[PlannedLayer]) -> Vec<Vec<String>> {
        layers.iter().map(|l| l.store_paths.iter().map(|p| p.base_name().to_owned()).collect()).collect()
    }

    #[test]
    fn previous_layers_that_still_hold_are_kept() {
        // 40 paths over a libc (p0), the root p39 needs them all; 8 layers at most.
        let (closure, _dir) = graph(40, |i, j| j == 0 || i == 39);
        let plan = |previous: &[Vec<String>], closure: &Closure, root: StorePath| {
            let input = PlanInput { previous, ..input(closure, vec![root], 8) };
            plan_layers(&input, |p| p.as_str().len() as u64 * 1000).unwrap()
        };
        let first = plan(&[], &closure, sp(39));
        assert_eq!(first.len(), 8);
        // The same closure again: the same layers.
        assert_eq!(plan(&names(&first), &closure, sp(39)), first);

        // A new release of the application: another root path, the rest as it was. Every layer
        // but the root's is kept as it was.
        let dir = tempfile::tempdir().unwrap();
        let graph_text = std::fs::read_to_string(_dir.path().join("graph")).unwrap();
        let release = StorePath::containing(&format!("/nix/store/{}-app-2", "z".repeat(32))).unwrap();
        std::fs::write(dir.path().join("graph"), graph_text.replace(sp(39).as_str(), release.as_str())).unwrap();
        let closure2 = Closure::from_graph_file(&dir.path().join("graph")).unwrap();
        let second = plan(&names(&first), &closure2, release.clone());
        assert!(second.len() <= 8);
        let kept = second.iter().filter(|l| first.contains(l)).count();
        assert_eq!(kept, 7, "{second:?}");
        assert!(second.iter().any(|l| l.store_paths == [release.clone()]));

        // A previous layer with a path that is gone is not kept; names that are no store path
        // of this closure are passed over.
        let mut previous = names(&first);
        previous.push(vec!["not-a-store-path".to_owned()]);
        let third = plan(&previous, &closure2, release);
        assert_eq!(third, second);
    }

    #[test]
    fn too_many_kept_layers_are_merged_smallest_first() {
        let (closure, _dir) = graph(12, |_, _| false);
        let roots: Vec<StorePath> = (0..12).map(sp).collect();
        // A previous build that had a layer a path; now only 6 layers are allowed.
        let previous: Vec<Vec<String>> = roots.iter().map(|p| vec![p.base_name().to_owned()]).collect();
        let input = PlanInput { previous: &previous, ..input(&closure, roots.clone(), 6) };
        let layers = plan_layers(&input, |p| if *p == sp(11) { 1 << 30 } else { 10 }).unwrap();
        assert_eq!(layers.len(), 6);
        assert!(layers.iter().any(|l| l.store_paths == [sp(11)]), "the biggest was merged: {layers:?}");
        let mut all = all_paths(&layers);
        all.sort();
        assert_eq!(all, roots);
    }

    #[test]
    fn an_explicit_layer_may_be_split() {
        // A chain 0 <- 1 <- … <- 5: the explicit layer holds the closure of 3 (0..=3) in up to 3
        // parts, each part marked as that layer, nothing repeated, the rest after it.
        let (closure, _dir) = graph(6, |i, j| j + 1 == i);
        let explicit = [ExplicitLayer { roots: vec![sp(3)], max_layers: 3, ..Default::default() }];
        let input = PlanInput { explicit: &explicit, ..input(&closure, vec![sp(5)], 10) };
        let layers = plan_layers(&input, |_| 1).unwrap();
        let parts: Vec<&PlannedLayer> = layers.iter().filter(|l| l.explicit == Some(0)).collect();
        assert!(parts.len() > 1 && parts.len() <= 3, "{layers:?}");
        assert_eq!(parts.iter().map(|l| l.store_paths.len()).sum::<usize>(), 4);
        assert!(layers[..parts.len()].iter().all(|l| l.explicit == Some(0)), "the parts come first");
        assert_eq!(all_paths(&layers).len(), 6);
    }

    #[test]
    fn explicit_layers_come_first_and_nothing_repeats() {
        let (closure, _dir) = graph(6, |i, j| j + 1 == i);
        let explicit = [ExplicitLayer { roots: vec![sp(2)], ..Default::default() }, ExplicitLayer { roots: vec![sp(3)], ..Default::default() }];
        let input = PlanInput { explicit: &explicit, ..input(&closure, vec![sp(5)], 10) };
        let layers = plan_layers(&input, |_| 1).unwrap();
        assert_eq!(layers[0].store_paths, [sp(0), sp(1), sp(2)]);
        assert_eq!(layers[1].store_paths, [sp(3)]);
        assert_eq!(all_paths(&layers[2..]), [sp(4), sp(5)]);
    }

    #[test]
    fn too_small_a_budget_is_an_error() {
        let (closure, _dir) = graph(3, |_, _| false);
        let explicit = [ExplicitLayer { roots: vec![sp(0)], ..Default::default() }];
        let input = PlanInput { explicit: &explicit, copy_to_root: vec![sp(2)], ..input(&closure, vec![sp(1)], 2) };
        assert_eq!(plan_layers(&input, |_| 1), Err(NoRoomForStorePaths { max_layers: 2, left: 1 }));
    }

    proptest! {
        /// Any graph, any budget, any previous plan: every requisite exactly once, never more
        /// layers than allowed.
        #[test]
        fn plans_respect_budget_and_cover_the_closure(n in 1usize..40, max_layers in 1usize..12, store_bound in proptest::option::of(1usize..6), seed in any::<u64>(), cut in 1usize..6) {
            let (closure, _dir) = graph(n, |i, j| (seed >> ((i * 7 + j) % 64)) & 1 == 1);
            let roots: Vec<StorePath> = (0..n).filter(|i| i % 3 == 0).map(sp).collect();
            // A previous plan of runs of `cut` paths, some of them not in this closure, and
            // layers that overlap them or repeat a path (a history anyone may have written).
            let mut previous: Vec<Vec<String>> = (0..n + 5).map(sp).collect::<Vec<_>>().chunks(cut).map(|c| c.iter().map(|p| p.base_name().to_owned()).collect()).collect();
            previous.insert(0, vec![sp(0).base_name().to_owned(), sp(0).base_name().to_owned()]);
            previous.push((0..n).step_by(2).map(|i| sp(i).base_name().to_owned()).collect());
            let input = PlanInput { max_store_layers: store_bound, previous: &previous, ..input(&closure, roots.clone(), max_layers) };
            let layers = plan_layers(&input, |p| p.as_str().len() as u64).unwrap();
            prop_assert!(layers.len() <= max_layers.min(store_bound.unwrap_or(usize::MAX)));
            let mut paths = all_paths(&layers);
            let unique: BTreeSet<_> = paths.iter().cloned().collect();
            prop_assert_eq!(unique.len(), paths.len());
            paths.sort();
            prop_assert_eq!(paths, closure.requisites(&roots).into_iter().collect::<Vec<_>>());
        }
    }
}
