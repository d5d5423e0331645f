//! Descriptions and stream scripts from the Nix library: parsed and checked, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = strata_build::description::Description::parse(text, std::path::Path::new("fuzz.json"));
});
