//! The OCI archive reader: an archive is opened and every layer read through its
//! verified reader. Any input ends in an image or an error, never a panic or a hang.
#![no_main]
use std::io::Read;

use strata_oci::platform::Platform;
use strata_oci::reference::ImageRef;
use strata_transport::registry::RegistryOptions;
use strata_transport::open_image;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("image.tar");
    std::fs::write(&path, bytes).expect("writing the input");
    if let Ok(image) = open_image(&ImageRef::OciArchive { path, reference: None }, &Platform::host(), &RegistryOptions::default()) {
        for i in 0..image.layers.len() {
            if let Ok(mut layer) = image.open_layer(i) {
                let _ = layer.read_to_end(&mut Vec::new());
            }
        }
    }
});
