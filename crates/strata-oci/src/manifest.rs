//! The one record of a layer blob, whatever made it (a built layer, a base image's layer, a
//! digest cache), and the OCI image manifest that lists such blobs.

use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};

use crate::canonical::canonical_json;
use crate::digest::Digest;

/// A layer as stored: the digest of its tar (`diff_id`) and of its blob (the same when the
/// blob is uncompressed), the blob's size and media type. Serialised (for `--json` output, and
/// in the digests the Nix library records) as an object with those four fields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
    pub media_type: MediaType,
}

/// The OCI manifest for a config blob and layer blobs: canonical JSON.
pub fn manifest_blob(config: &[u8], layers: &[LayerBlob]) -> Vec<u8> {
    let descriptor = |media_type: MediaType, size: u64, digest: Digest| Descriptor::new(media_type, size, oci_spec::image::Digest::from(digest));
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, config.len() as u64, Digest::of(config)))
        .layers(layers.iter().map(|l| descriptor(l.media_type.clone(), l.size, l.digest)).collect::<Vec<_>>())
        .build()
        .expect("every required manifest field is set");
    canonical_json(&manifest)
}
