//! The spec, as people write it (TOML): parsed and validated, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = strata_engine::spec::Spec::from_toml(text).and_then(strata_engine::spec::Spec::validate);
});
