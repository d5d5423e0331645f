//! Image references, as people type them (`-o`, sources, `--previous`), and what logins name
//! (`strata login REGISTRY`): parsed, and when accepted, printed and parsed again to the
//! same; never a panic.
#![no_main]
use strata_oci::reference::{ImageRef, LoginScope};

libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(reference) = text.parse::<ImageRef>() {
        let again: ImageRef = reference.to_string().parse().expect("a printed reference parses");
        assert_eq!(again, reference, "{text:?} printed as {reference}");
    }
    if let Ok(scope) = LoginScope::parse(text) {
        let again = LoginScope::parse(&scope.to_string()).expect("a printed login scope parses");
        assert_eq!(again, scope, "{text:?} printed as {scope}");
    }
});
