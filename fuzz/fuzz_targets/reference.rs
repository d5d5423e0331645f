//! Image references, as people type them (`-o`, sources, `--previous`): parsed, and when
//! accepted, printed and parsed again to the same reference; never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(reference) = text.parse::<strata_oci::reference::ImageRef>() {
        let again: strata_oci::reference::ImageRef = reference.to_string().parse().expect("a printed reference parses");
        assert_eq!(again, reference, "{text:?} printed as {reference}");
    }
});
