//! Closure graphs (registration format, `nix path-info --json`): parsed, and the graph
//! walked, never a panic or an allocation sized by a count in the input.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(closure) = strata_build::closure::Closure::from_graph_text(text, std::path::Path::new("fuzz")) {
        let all = closure.requisites(std::iter::empty());
        let _ = closure.popularity(&all);
    }
});
