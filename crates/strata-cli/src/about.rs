//! The subcommands about strata itself rather than images: `strata cache` (the layer cache
//! every sink uses), `strata completions` and `strata man` (both made from the clap
//! definitions in `cli.rs`, so they never drift from the flags).

use std::path::Path;

use anyhow::{Context, Result};
use strata_transport::cache::LayerCache;

use crate::cli::{CacheAction, Cli};

/// `strata cache [show|clear]`.
pub fn cache(cache: &LayerCache, action: CacheAction) -> Result<()> {
    let Some(stats) = cache.stats() else {
        anyhow::bail!("no layer cache: none of STRATA_CACHE_DIR, XDG_CACHE_HOME and HOME is set");
    };
    match action {
        CacheAction::Show => {
            let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
            println!("{}", stats.dir.display());
            println!("{} entries, {:.1} MiB of {:.0} MiB", stats.entries, mib(stats.bytes), mib(stats.max_bytes));
        }
        CacheAction::Clear => {
            let removed = cache.clear()?;
            println!("{removed} entries removed from {}", stats.dir.display());
        }
    }
    Ok(())
}

/// `strata man [-o DIR]`: strata(1) to stdout, or it and a page a visible subcommand into DIR.
pub fn man_pages(dir: Option<&Path>) -> Result<()> {
    let command = <Cli as clap::CommandFactory>::command().name("strata");
    let render = |page: clap::Command| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page).render(&mut bytes)?;
        Ok(bytes)
    };
    let Some(dir) = dir else {
        std::io::Write::write_all(&mut std::io::stdout(), &render(command)?)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let mut pages = vec![("strata.1".to_owned(), command.clone())];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("strata-{}", sub.get_name());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    for (file, page) in pages {
        let path = dir.join(&file);
        strata_scratch::ScratchFile::write_whole(dir, &file, &path, &render(page)?).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `strata completions SHELL`: the completion script on standard output.
pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "strata", &mut std::io::stdout());
}
