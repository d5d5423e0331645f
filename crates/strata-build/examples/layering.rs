//! `bench/layering`: how well layers hold across a series of releases, for strata's plan
//! (with the previous release given, and from scratch) and for the layerings of the tools it
//! replaces, re-implemented from their published algorithms:
//!
//! - dockerTools (`buildLayeredImage`/`streamLayeredImage`, Graham Christensen's "popularity
//!   contest", nixpkgs PR 47411): a path's popularity is the number of paths from the image's
//!   root to it in the reference graph; the `maxLayers - 1` most popular paths (ties by name)
//!   get a layer each, the rest share the last one;
//! - nix2container: the same popularity layering when `maxLayers` is set, and one layer for
//!   everything with its default `maxLayers = 1`.
//!
//! The closure is synthetic and seeded (the same numbers on every machine): a libc under
//! 900 libraries and tools with heavy-tailed sizes (Pareto), 60 self-contained data paths,
//! an application on top with private dependencies. A store path's hash is derived, as Nix's
//! is, from its name, its version and its dependencies' hashes, so a bump cascades through
//! every dependent. The series mixes application releases (the leaf), a library bump in the
//! middle, new dependencies, and mass rebuilds (a libc bump rebuilds everything above it).
//!
//! For each release after the first and each layering: the bytes a push uploads (layers
//! whose set of store paths the previous release did not have), as a multiple of the bytes
//! of the paths that changed; and the share of the bytes common to both releases that sit in
//! layers both have. 100 layers at most, as dockerTools' default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use strata_build::closure::Closure;
use strata_build::plan::{plan_layers, PlanInput};
use strata_build::store::StorePath;

const MAX_LAYERS: usize = 100;

/// splitmix64: a small seeded generator, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A package: what its store path is made of.
#[derive(Clone)]
struct Package {
    name: String,
    version: u32,
    deps: Vec<usize>,
    size: u64,
}

struct World {
    packages: Vec<Package>,
    app: usize,
}

const LIBC: usize = 0;

impl World {
    fn new(rng: &mut Rng) -> World {
        let pareto = |rng: &mut Rng| ((50_000.0 / (1.0 - rng.unit()).powf(1.0 / 1.1)) as u64).min(400_000_000);
        let mut packages = vec![Package { name: "glibc-2.40".into(), version: 1, deps: vec![], size: 30_000_000 }];
        let data: Vec<usize> = (0..60)
            .map(|i| {
                packages.push(Package { name: format!("data-{i}"), version: 1, deps: vec![], size: pareto(rng) });
                packages.len() - 1
            })
            .collect();
        let first_lib = packages.len();
        for i in 0..900 {
            let mut deps = vec![LIBC];
            let existing = packages.len() - first_lib;
            for _ in 0..1 + rng.below(4) {
                if existing > 0 {
                    // Biased to the early (basic) libraries: they are everyone's dependencies.
                    let pick = (rng.unit().powi(3) * existing as f64) as usize;
                    deps.push(first_lib + pick);
                }
            }
            if rng.below(10) == 0 {
                deps.push(data[rng.below(data.len())]);
            }
            deps.sort();
            deps.dedup();
            packages.push(Package { name: format!("lib-{i}"), version: 1, deps, size: pareto(rng) });
        }
        let libs = packages.len() - first_lib;
        let private: Vec<usize> = (0..3)
            .map(|i| {
                let deps = vec![LIBC, first_lib + rng.below(libs)];
                packages.push(Package { name: format!("app-private-{i}"), version: 1, deps, size: 2_000_000 });
                packages.len() - 1
            })
            .collect();
        let mut deps: Vec<usize> = (0..250).map(|_| first_lib + rng.below(libs)).collect();
        deps.extend((0..30).map(|_| data[rng.below(data.len())]));
        deps.extend(&private);
        deps.push(LIBC);
        deps.sort();
        deps.dedup();
        packages.push(Package { name: "app".into(), version: 1, deps, size: 8_000_000 });
        let app = packages.len() - 1;
        World { packages, app }
    }

    /// Every package's store path, hashed as Nix does: of name, version and dependencies.
    fn store_paths(&self) -> Vec<String> {
        const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let mut paths: Vec<String> = Vec::with_capacity(self.packages.len());
        for package in &self.packages {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            let mut eat = |bytes: &[u8]| {
                for b in bytes {
                    h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
                }
            };
            eat(package.name.as_bytes());
            eat(&package.version.to_le_bytes());
            for d in &package.deps {
                eat(paths[*d].as_bytes());
            }
            let mut rng = Rng(h);
            let hash: String = (0..32).map(|_| ALPHABET[rng.below(32)] as char).collect();
            paths.push(format!("/nix/store/{hash}-{}", package.name));
        }
        paths
    }

    fn bump(&mut self, i: usize, rng: &mut Rng) {
        let p = &mut self.packages[i];
        p.version += 1;
        p.size = (p.size as f64 * (1.0 + rng.unit() * 0.05)) as u64;
    }
}

/// One release: the image's store paths, their sizes, and the closure.
struct Release {
    closure: Closure,
    root: StorePath,
    sizes: BTreeMap<StorePath, u64>,
}

fn release(world: &World, dir: &Path) -> Release {
    let paths = world.store_paths();
    let mut text = String::new();
    for (i, package) in world.packages.iter().enumerate() {
        text += &format!("{}\n\n{}\n", paths[i], package.deps.len());
        for d in &package.deps {
            text += &format!("{}\n", paths[*d]);
        }
    }
    let file = dir.join("graph");
    let all = Closure::from_graph_text(&text, &file).expect("a valid graph");
    let root = StorePath::containing(&paths[world.app]).expect("a store path");
    // The image holds the application's closure only.
    let keep = all.requisites([&root]);
    let sizes: BTreeMap<StorePath, u64> = world
        .packages
        .iter()
        .enumerate()
        .map(|(i, p)| (StorePath::containing(&paths[i]).expect("a store path"), p.size))
        .filter(|(p, _)| keep.contains(p))
        .collect();
    Release { closure: all, root, sizes }
}

type Layers = Vec<BTreeSet<StorePath>>;

fn strata(release: &Release, previous: Option<&Layers>) -> Layers {
    let names: Vec<Vec<String>> = previous.map_or(vec![], |layers| layers.iter().map(|l| l.iter().map(|p| p.base_name().to_owned()).collect()).collect());
    let input = PlanInput {
        closure: &release.closure,
        explicit: &[],
        roots: vec![release.root.clone()],
        copy_to_root: vec![],
        max_layers: MAX_LAYERS,
        max_store_layers: None,
        previous: &names,
    };
    let planned = plan_layers(&input, |p| release.sizes[p]).expect("room for the paths");
    planned.into_iter().map(|l| l.store_paths.into_iter().collect()).collect()
}

/// dockerTools' popularity contest: paths from the root to each path, counted.
fn popularity_contest(release: &Release, max_layers: usize) -> Layers {
    let paths: Vec<&StorePath> = release.sizes.keys().collect();
    // Topological order from the root: a path's count is the sum of its referrers' counts.
    let mut order: Vec<&StorePath> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit<'a>(p: &'a StorePath, release: &'a Release, seen: &mut BTreeSet<&'a StorePath>, order: &mut Vec<&'a StorePath>) {
        if !seen.insert(p) {
            return;
        }
        for r in release.closure.references(p) {
            if r != p {
                visit(r, release, seen, order);
            }
        }
        order.push(p);
    }
    visit(&release.root, release, &mut seen, &mut order);
    let mut count: BTreeMap<&StorePath, u128> = paths.iter().map(|p| (*p, 0)).collect();
    count.insert(&release.root, 1);
    for p in order.iter().rev() {
        let c = count[p];
        for r in release.closure.references(p) {
            if r != *p {
                *count.get_mut(r).expect("in the closure") = count[r].saturating_add(c);
            }
        }
    }
    let mut ranked = paths.clone();
    ranked.sort_by(|a, b| count[b].cmp(&count[a]).then(a.name().cmp(b.name())));
    if max_layers <= 1 {
        return vec![ranked.into_iter().cloned().collect()];
    }
    let own = (max_layers - 1).min(ranked.len());
    let mut layers: Layers = ranked[..own].iter().map(|p| [(*p).clone()].into()).collect();
    if ranked.len() > own {
        layers.push(ranked[own..].iter().map(|p| (*p).clone()).collect());
    }
    layers
}

struct Score {
    pushed: u64,
    shared_common: u64,
}

fn score(before: &Layers, after: &Layers, sizes: &BTreeMap<StorePath, u64>, common: &BTreeSet<StorePath>) -> Score {
    let bytes = |layer: &BTreeSet<StorePath>| layer.iter().map(|p| sizes[p]).sum::<u64>();
    let old: BTreeSet<&BTreeSet<StorePath>> = before.iter().collect();
    let pushed = after.iter().filter(|l| !old.contains(l)).map(bytes).sum();
    let shared_common = after.iter().filter(|l| old.contains(l)).flat_map(|l| l.iter()).filter(|p| common.contains(*p)).map(|p| sizes[p]).sum();
    Score { pushed, shared_common }
}

fn main() {
    std::process::exit(if simulate() { 0 } else { 1 });
}

/// The series: prints its tables, returns whether strata (given the previous release) met
/// the targets.
fn simulate() -> bool {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut rng = Rng(20_261_123);
    let mut world = World::new(&mut rng);
    let first = release(&world, dir.path());
    let total: u64 = first.sizes.values().sum();
    let biggest = first.sizes.values().max().copied().unwrap_or(0);
    println!(
        "closure: {} store paths, {:.2} GB, the biggest {:.0} MB; {MAX_LAYERS} layers at most",
        first.sizes.len(),
        total as f64 / 1e9,
        biggest as f64 / 1e6
    );

    // The library bumped in the middle of the series: one in the image, a third of the way up.
    let in_image: BTreeSet<&str> = first.sizes.keys().map(|p| p.name()).collect();
    let libs: Vec<usize> =
        (0..world.packages.len()).filter(|i| world.packages[*i].name.starts_with("lib-") && in_image.contains(world.packages[*i].name.as_str())).collect();
    let private: Vec<usize> = (0..world.packages.len()).filter(|i| world.packages[*i].name.starts_with("app-private")).collect();
    let series = ["app", "app", "app + private dep", "mid library", "app", "mass (libc)", "app", "new dependency", "app", "mass (libc)", "app"];

    let names = ["strata --previous", "strata (scratch)", "dockerTools", "nix2container maxLayers=100", "nix2container (1 layer)"];
    let layering = |name: &str, release: &Release, previous: &Layers| -> Layers {
        match name {
            "strata --previous" => strata(release, Some(previous)),
            "strata (scratch)" => strata(release, None),
            // dockerTools keeps one of maxLayers for its customisation layer.
            "dockerTools" => popularity_contest(release, MAX_LAYERS - 1),
            "nix2container maxLayers=100" => popularity_contest(release, MAX_LAYERS),
            _ => popularity_contest(release, 1),
        }
    };
    let mut current: Vec<Layers> = names.iter().map(|n| layering(n, &first, &vec![])).collect();
    let mut before = first;

    println!("\npushed: bytes uploaded / bytes of the paths that changed; shared: bytes common to both releases in layers both have");
    print!("{:<18} {:>9}", "release", "changed");
    for n in &names {
        print!(" | {n:>27}");
    }
    println!();
    let mut leaf_ratios: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut shares: Vec<Vec<f64>> = vec![vec![]; names.len()];
    for kind in series {
        match kind {
            "app" => world.bump(world.app, &mut rng),
            "app + private dep" => {
                world.bump(world.app, &mut rng);
                world.bump(private[0], &mut rng);
            }
            "mid library" => world.bump(libs[libs.len() / 3], &mut rng),
            "mass (libc)" => world.bump(LIBC, &mut rng),
            _ => {
                let size = 3_000_000;
                world.packages.insert(world.app, Package { name: format!("lib-new-{}", world.packages.len()), version: 1, deps: vec![LIBC], size });
                world.app += 1;
                let new = world.app - 1;
                world.packages[world.app].deps.push(new);
                world.bump(world.app, &mut rng);
            }
        }
        let after = release(&world, dir.path());
        let common: BTreeSet<StorePath> = after.sizes.keys().filter(|p| before.sizes.contains_key(*p)).cloned().collect();
        let changed: u64 = after.sizes.iter().filter(|(p, _)| !common.contains(*p)).map(|(_, s)| s).sum();
        let common_bytes: u64 = common.iter().map(|p| after.sizes[p]).sum();
        print!("{kind:<18} {:>6.0} MB", changed as f64 / 1e6);
        for (i, name) in names.iter().enumerate() {
            let next = layering(name, &after, &current[i]);
            assert!(next.len() <= MAX_LAYERS, "{name}: {} layers", next.len());
            let s = score(&current[i], &next, &after.sizes, &common);
            let ratio = s.pushed as f64 / changed.max(1) as f64;
            let share = if common_bytes == 0 { 1.0 } else { s.shared_common as f64 / common_bytes as f64 };
            if kind == "app" {
                leaf_ratios[i].push(ratio);
            }
            shares[i].push(share);
            print!(" | {:>8.0} MB {:>5.2}x {:>5.1}%", s.pushed as f64 / 1e6, ratio, 100.0 * share);
            current[i] = next;
        }
        println!();
        before = after;
    }

    println!("\n{:<28} {:>22} {:>22} {:>16}", "layering", "app release pushes", "common bytes shared", "targets met");
    let mut strata_ok = true;
    for (i, name) in names.iter().enumerate() {
        let worst_ratio = leaf_ratios[i].iter().copied().fold(0.0, f64::max);
        let mean_share = shares[i].iter().sum::<f64>() / shares[i].len() as f64;
        let worst_share = shares[i].iter().copied().fold(1.0, f64::min);
        let ok = worst_ratio <= 1.2 && mean_share >= 0.9;
        if i == 0 {
            strata_ok = ok;
        }
        println!(
            "{name:<28} {:>12} {worst_ratio:>6.2}x {:>8.1}% (worst {:>5.1}%) {:>9}",
            "at most",
            100.0 * mean_share,
            100.0 * worst_share,
            if ok { "yes" } else { "no" }
        );
    }
    println!("\ntargets: an application release pushes <= 1.2x the bytes that changed; >= 90% of common bytes in shared layers (mean over the series)");
    strata_ok
}

/// The simulation is deterministic (seeded, no timing): strata's layering meets its targets
/// on it, every release, under `cargo test`.
#[test]
fn strata_meets_the_layering_targets() {
    assert!(simulate());
}
