//! OCI image layouts (`oci:DIR[:TAG]`) and OCI archives (`oci-archive:PATH[:TAG]`, a tar of
//! a layout), as the OCI image spec defines them. The tag is the `org.opencontainers.image.ref.name`
//! annotation of the manifest's entry in `index.json`, where skopeo and umoci look for it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, MediaType, ANNOTATION_REF_NAME};

use super::{write_file_atomically, write_layer_blobs, OuterTar, SinkError, Written};
use crate::compress::Compression;
use crate::digest::Digest;
use crate::image::{canonical_json, manifest_blob, Image};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `image` into the OCI layout `dir`, creating it or adding to an existing one.
pub fn write_layout(image: &Image, dir: &Path, tag: Option<&str>, compression: Compression) -> Result<Written, SinkError> {
    let write_err = |path: &Path, source| SinkError::Write { path: path.to_owned(), source };
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if !dir.join("oci-layout").is_file() && entries.next().is_some() {
                return Err(SinkError::NotOciLayout(dir.to_owned()));
            }
            fill_layout(image, dir, tag, compression)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Build beside the final name, then rename: a failed build leaves nothing.
            let parent = parent_of(dir);
            let staging = tempfile::Builder::new().prefix(".strata-oci").tempdir_in(parent).map_err(|e| write_err(dir, e))?;
            let written = fill_layout(image, staging.path(), tag, compression)?;
            // Once renamed, dropping `staging` finds nothing left to delete.
            fs::rename(staging.path(), dir).map_err(|e| write_err(dir, e))?;
            Ok(written)
        }
        Err(e) => Err(write_err(dir, e)),
    }
}

/// Writes `image` as an OCI archive at `path`.
pub fn write_archive(image: &Image, path: &Path, tag: Option<&str>, compression: Compression) -> Result<Written, SinkError> {
    let staging = tempfile::Builder::new()
        .prefix(".strata-oci")
        .tempdir_in(parent_of(path))
        .map_err(|source| SinkError::Write { path: path.to_owned(), source })?;
    let layout = staging.path();
    let written = fill_layout(image, layout, tag, compression)?;
    write_file_atomically(path, |out| {
        let mut tar = OuterTar { out, mtime: image.mtime, path: path.to_owned() };
        tar.bytes("oci-layout", OCI_LAYOUT)?;
        tar.file("index.json", &layout.join("index.json"))?;
        let mut blobs: Vec<PathBuf> = fs::read_dir(layout.join("blobs/sha256"))
            .and_then(|d| d.map(|e| e.map(|e| e.path())).collect())
            .map_err(|source| SinkError::Write { path: layout.to_owned(), source })?;
        blobs.sort();
        for blob in blobs {
            let name = format!("blobs/sha256/{}", blob.file_name().unwrap_or_default().to_string_lossy());
            tar.file(&name, &blob)?;
        }
        tar.finish().map(|_| ())
    })?;
    Ok(written)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes blobs, config and manifest into `dir` and points `index.json` at the manifest.
fn fill_layout(image: &Image, dir: &Path, tag: Option<&str>, compression: Compression) -> Result<Written, SinkError> {
    let write_err = |path: &Path, source| SinkError::Write { path: path.to_owned(), source };
    let blobs_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs_dir).map_err(|e| write_err(&blobs_dir, e))?;
    let layers = write_layer_blobs(image, compression, &blobs_dir)?;

    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
    let config = image.config_blob(&diff_ids);
    let config_digest = write_blob(&blobs_dir, &config)?;
    let manifest = manifest_blob(&config, &layers);
    let manifest_digest = write_blob(&blobs_dir, &manifest)?;

    let tag = tag.map_or_else(|| image.tag(&config_digest), str::to_owned);
    let mut entry = descriptor(MediaType::ImageManifest, manifest.len() as u64, &manifest_digest);
    entry.set_annotations(Some([(ANNOTATION_REF_NAME.to_owned(), tag.clone())].into()));
    let index_path = dir.join("index.json");
    let mut index = read_index(&index_path)?;
    let mut manifests: Vec<Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME)) != Some(&tag))
        .cloned()
        .collect();
    manifests.push(entry);
    index.set_manifests(manifests);
    write_small_file(&dir.join("oci-layout"), OCI_LAYOUT)?;
    write_small_file(&index_path, &canonical_json(&index))?;
    Ok(Written { reference: format!("{}:{tag}", image.name), config_digest, manifest_digest: Some(manifest_digest) })
}

fn descriptor(media_type: MediaType, size: u64, digest: &Digest) -> Descriptor {
    let digest: oci_spec::image::Digest = digest.to_string().parse().expect("a sha256 digest is a valid OCI digest");
    Descriptor::new(media_type, size, digest)
}

fn read_index(path: &Path) -> Result<ImageIndex, SinkError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SinkError::BadOciLayout { path: path.to_owned(), why: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut index = ImageIndex::default();
            index.set_schema_version(2);
            index.set_media_type(Some(MediaType::ImageIndex));
            index.set_manifests(vec![]);
            Ok(index)
        }
        Err(source) => Err(SinkError::Write { path: path.to_owned(), source }),
    }
}

/// Writes a blob named by its digest; returns the digest.
fn write_blob(blobs_dir: &Path, bytes: &[u8]) -> Result<Digest, SinkError> {
    let digest = Digest::of(bytes);
    write_small_file(&blobs_dir.join(digest.hex()), bytes)?;
    Ok(digest)
}

fn write_small_file(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    write_file_atomically(path, |out| out.write_all(bytes).map_err(|source| SinkError::Write { path: path.to_owned(), source }))
}
