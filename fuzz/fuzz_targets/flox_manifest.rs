//! A flox environment's manifest (`strata containerize`), as people write it: read into a
//! definition or refused naming its key; never a panic. (Nothing is built: that comes after.)
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = strata_build::containerize::flox::definition(text, std::path::Path::new("manifest.toml"), "nixpkgs");
});
