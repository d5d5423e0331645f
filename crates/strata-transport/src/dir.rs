//! skopeo's directory format (`dir:DIR`, containers/image's `directory` transport): `DIR`
//! holds `manifest.json`, a `version` file (`Directory Transport Version: 1.1`), and every
//! blob (config, layers) as a file named by its digest's hex.
//!
//! Written in a scratch directory beside `DIR` and exchanged with it in one step
//! (`renameat2`): a reader sees the old image or the new, never a mix. An existing `DIR` is
//! replaced only if it is empty or holds a `dir:` image, as skopeo does. Read as every
//! source is: the manifest and config bounded, every blob verified, nothing outside `DIR`.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use oci_spec::image::{ImageConfiguration, ImageManifest};
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{Image, LayerTar, SourceImage};
use strata_scratch::{ScratchDir, ScratchFile};

use crate::blobs::{layers_of, open_inside, parse_json, read_bounded, BlobStore, MAX_METADATA_SIZE};
use crate::{write_layer_blobs, Durability, SinkError, SourceError, Transport, Written};

/// The `version` file's content, as skopeo writes it.
pub const VERSION: &[u8] = b"Directory Transport Version: 1.1\n";

/// Writes `image` as a `dir:` image at `dir`.
pub fn write_dir<L: LayerTar>(image: &Image<L>, dir: &Path, compression: Compression, cx: &Transport) -> Result<Written, SinkError> {
    let write_err = |source| SinkError::Write { path: dir.to_owned(), source };
    if fs::symlink_metadata(dir).is_ok() {
        let is_dir_image = dir.join("version").is_file() || fs::read_dir(dir).map_err(write_err)?.next().is_none();
        if !fs::metadata(dir).map_err(write_err)?.is_dir() || !is_dir_image {
            return Err(SinkError::NotDirImage(dir.to_owned()));
        }
    }
    let mut staging = ScratchDir::beside(dir).map_err(write_err)?;
    let root = staging.path().to_owned();
    let layers = write_layer_blobs(image, compression, &root, &root, Durability::Flushed, cx)?;
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
    let config = image.config_checked(&diff_ids)?;
    let manifest = image.manifest_checked(&config, &layers)?;
    let config_digest = Digest::of(&config);
    for (name, bytes) in [(config_digest.hex().to_owned(), &config[..]), ("manifest.json".to_owned(), &manifest[..]), ("version".to_owned(), VERSION)] {
        ScratchFile::write_whole(&root, "strata-dir", &root.join(name), bytes).map_err(write_err)?;
    }
    staging.replace(dir).map_err(write_err)?;
    Ok(Written { reference: image.reference(&config_digest), config_digest, manifest_digest: Some(Digest::of(&manifest)), layers })
}

/// Reads the `dir:` image at `dir`.
pub(crate) fn open_dir(dir: &Path) -> Result<SourceImage, SourceError> {
    let manifest_path = dir.join("manifest.json");
    let read_err = |source| SourceError::Read { path: manifest_path.clone(), source };
    let manifest_bytes = read_bounded(open_inside(dir, "manifest.json").map_err(read_err)?, MAX_METADATA_SIZE).map_err(read_err)?;
    let manifest: ImageManifest = parse_json(&manifest_bytes, &manifest_path, "manifest")?;
    let store = BlobStore::Flat(dir.to_owned());
    let config_bytes = store.read(manifest.config(), "config", dir)?;
    let config: ImageConfiguration = parse_json(&config_bytes, dir, "config")?;
    let layers = layers_of(&manifest, &config, dir)?;
    Ok(SourceImage { config_bytes, config, manifest_bytes: Some(manifest_bytes), layers, reference: None, origin: None, blobs: Arc::new(store) })
}
