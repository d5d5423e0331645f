//! The final block of a raw deflate stream (`strata_oci::deflate_tail`), looked for in any
//! bytes: an answer within them, or an error; never a panic, never a read past their end.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(found) = strata_oci::deflate_tail::final_block(data) {
        assert!(found.header_bit < found.end_bit && found.end_bit <= data.len() * 8, "{found:?} in {} bytes", data.len());
    }
});
