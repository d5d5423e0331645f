//! The one record of a layer blob, whatever made it (a built layer, a base image's layer, a
//! digest cache), the OCI image manifest that lists such blobs, and the image index that lists
//! manifests, one per platform.

use oci_spec::image::{Descriptor, ImageIndexBuilder, ImageManifestBuilder, MediaType};

use crate::canonical::canonical_json;
use crate::digest::Digest;
use crate::platform::Platform;

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

/// The OCI image index listing `manifests` (their bytes), each for its platform: canonical
/// JSON, in the order given.
pub fn index_blob(manifests: &[(Platform, &[u8])]) -> Vec<u8> {
    let entries: Vec<Descriptor> = manifests
        .iter()
        .map(|(platform, bytes)| {
            let mut d = Descriptor::new(MediaType::ImageManifest, bytes.len() as u64, oci_spec::image::Digest::from(Digest::of(bytes)));
            d.set_platform(Some(platform.to_oci()));
            d
        })
        .collect();
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries)
        .build()
        .expect("every required index field is set");
    canonical_json(&index)
}
