//! The spec, as the Nix library writes it (JSON): parsed and validated, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = strata_build::spec::Spec::from_json(text).and_then(strata_build::spec::Spec::validate);
});
