//! OCI image layouts (`oci:DIR[:REF]`) and OCI archives (`oci-archive:PATH[:REF]`, a tar of
//! a layout), as the OCI image spec defines them. REF is the
//! `org.opencontainers.image.ref.name` annotation of the manifest's entry in `index.json`,
//! where skopeo and umoci look for it; `io.containerd.image.name` beside it carries the
//! image's full name, which containerd (`ctr import`) names the image by.
//!
//! Writers never step on each other or leave a broken layout:
//! - a new layout is made in a scratch directory beside `DIR` and renamed into place;
//! - an existing layout gains blobs through scratch files in its root (never under
//!   `blobs/sha256/`, where `umoci gc` expects digests only), renamed to their digest;
//! - `index.json` is read, changed and replaced under an exclusive `flock` on the layout
//!   directory, so two writers adding tags to one layout both keep theirs. Two writers
//!   creating the same new layout: the second finds the first's in place and adds to it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, ANNOTATION_REF_NAME};

use strata_oci::canonical::canonical_json;
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{Image, LayerTar, SourceImage};
use strata_oci::platform::Platform;
use strata_oci::reference::{ImageName, OciRef};
use strata_scratch::{is_scratch_name, OutputFile, ScratchDir, ScratchFile};

use crate::blobs::{archive_member, invalid, layers_of, open_inside, parse_json, read_bounded, BlobStore, MAX_METADATA_SIZE};
use crate::{write_layer_blobs, write_output, Durability, OuterTar, SinkError, SourceError, Transport, Written, WrittenIndex};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// containerd's annotation for the image's full name.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The largest `index.json` read back.
const MAX_INDEX_SIZE: u64 = 4 << 20;

/// Writes `image` into the OCI layout `dir`, creating it or adding to an existing one.
pub fn write_layout<L: LayerTar>(
    image: &Image<L>,
    dir: &Path,
    reference: Option<&OciRef>,
    compression: Compression,
    cx: &Transport,
) -> Result<Written, SinkError> {
    into_layout(dir, |layout| write_blobs(image, layout, reference, compression, Durability::Flushed, cx))
}

/// Writes `images` (one a platform) into the OCI layout `dir` as one image: their blobs and
/// manifests, and an image index listing them, which `index.json` names.
pub fn write_index_layout<L: LayerTar>(
    images: &[Image<L>],
    dir: &Path,
    reference: Option<&OciRef>,
    compression: Compression,
    keep: Option<&[u8]>,
    cx: &Transport,
) -> Result<WrittenIndex, SinkError> {
    into_layout(dir, |layout| write_index_blobs(images, layout, reference, compression, keep, Durability::Flushed, cx))
}

/// Creates the layout `dir` (or adds to the existing one): `fill` writes blobs into the
/// layout directory it is given and returns the `index.json` entry to add.
fn into_layout<T>(dir: &Path, fill: impl FnOnce(&Path) -> Result<(Descriptor, T), SinkError>) -> Result<T, SinkError> {
    let write_err = |source| SinkError::Write { path: dir.to_owned(), source };
    if fs::symlink_metadata(dir).is_ok() {
        check_layout(dir)?;
        write_oci_layout_file(dir)?;
        let (entry, written) = fill(dir)?;
        add_to_index(dir, entry, Layout::Shared)?;
        return Ok(written);
    }
    let mut staging = ScratchDir::beside(dir).map_err(write_err)?;
    write_oci_layout_file(staging.path())?;
    let (entry, written) = fill(staging.path())?;
    add_to_index(staging.path(), entry.clone(), Layout::Ours)?;
    if let Err(e) = staging.persist(dir) {
        if !matches!(e.kind(), io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists) {
            return Err(write_err(e));
        }
        // Another writer made `dir` meanwhile: add to it.
        check_layout(dir)?;
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(write_err)?;
        for blob in fs::read_dir(staging.path().join("blobs/sha256")).map_err(write_err)? {
            let blob = blob.map_err(write_err)?;
            let target = blobs.join(blob.file_name());
            if !target.exists() {
                fs::rename(blob.path(), &target).map_err(write_err)?;
            }
        }
        add_to_index(dir, entry, Layout::Shared)?;
    }
    Ok(written)
}

/// Writes `image` as an OCI archive at `path`.
pub fn write_archive<L: LayerTar>(
    image: &Image<L>,
    path: &Path,
    reference: Option<&OciRef>,
    compression: Compression,
    cx: &Transport,
) -> Result<Written, SinkError> {
    into_archive(path, image.mtime, |layout| write_blobs(image, layout, reference, compression, Durability::Staged, cx))
}

/// Writes `images` (one a platform) as an OCI archive at `path` whose `index.json` names
/// their image index.
pub fn write_index_archive<L: LayerTar>(
    images: &[Image<L>],
    path: &Path,
    reference: Option<&OciRef>,
    compression: Compression,
    keep: Option<&[u8]>,
    cx: &Transport,
) -> Result<WrittenIndex, SinkError> {
    let mtime = images.first().map_or(0, |i| i.mtime);
    into_archive(path, mtime, |layout| write_index_blobs(images, layout, reference, compression, keep, Durability::Staged, cx))
}

/// A layout made in a scratch directory by `fill` (as [`into_layout`]), then tarred to `path`.
fn into_archive<T>(path: &Path, mtime: u64, fill: impl FnOnce(&Path) -> Result<(Descriptor, T), SinkError>) -> Result<T, SinkError> {
    let write_err = |source| SinkError::Write { path: path.to_owned(), source };
    let archive = OutputFile::create(path).map_err(write_err)?;
    // Beside the archive, on its file system; a device's directory (`/dev`) is no place.
    let staging = if archive.in_place() { ScratchDir::temporary() } else { ScratchDir::beside(path) }.map_err(write_err)?;
    let layout = staging.path();
    let (entry, written) = fill(layout)?;
    add_to_index(layout, entry, Layout::Ours)?;
    write_output(archive, path, |out| {
        let mut tar = OuterTar { out, mtime, path: path.to_owned() };
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

/// An existing `dir` is written to only if it is a layout, or holds nothing but what an
/// interrupted strata run left (scratch entries).
fn check_layout(dir: &Path) -> Result<(), SinkError> {
    let read_err = |source| SinkError::Write { path: dir.to_owned(), source };
    if !fs::metadata(dir).map_err(read_err)?.is_dir() {
        return Err(SinkError::NotOciLayout(dir.to_owned()));
    }
    if dir.join("oci-layout").is_file() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(read_err)? {
        if !is_scratch_name(&entry.map_err(read_err)?.file_name()) {
            return Err(SinkError::NotOciLayout(dir.to_owned()));
        }
    }
    Ok(())
}

fn write_oci_layout_file(dir: &Path) -> Result<(), SinkError> {
    let path = dir.join("oci-layout");
    if path.is_file() {
        return Ok(());
    }
    write_small_file(dir, &path, OCI_LAYOUT)
}

/// Writes the layers, config and manifest of `image` as blobs of the layout `dir` (through
/// scratch files in `dir`); returns the manifest's `index.json` entry and what was written.
fn write_blobs<L: LayerTar>(
    image: &Image<L>,
    dir: &Path,
    reference: Option<&OciRef>,
    compression: Compression,
    durability: Durability,
    cx: &Transport,
) -> Result<(Descriptor, Written), SinkError> {
    let blobs_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs_dir).map_err(|source| SinkError::Write { path: blobs_dir.clone(), source })?;
    let layers = write_layer_blobs(image, compression, dir, &blobs_dir, durability, cx)?;

    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
    let config = image.config_checked(&diff_ids)?;
    let manifest = image.manifest_checked(&config, &layers)?;
    let config_digest = write_blob(dir, &blobs_dir, &config, durability)?;
    let manifest_digest = write_blob(dir, &blobs_dir, &manifest, durability)?;

    let (ref_name, name) = match reference {
        Some(OciRef::Name(name)) => (name.to_string(), name.clone()),
        Some(OciRef::Tag(tag)) => (tag.clone(), ImageName { name: image.name.clone(), tag: tag.clone() }),
        None => {
            let tag = image.tag(&config_digest);
            (tag.clone(), ImageName { name: image.name.clone(), tag })
        }
    };
    let mut entry = descriptor(MediaType::ImageManifest, manifest.len() as u64, &manifest_digest);
    entry.set_annotations(Some([(ANNOTATION_REF_NAME.to_owned(), ref_name), (ANNOTATION_CONTAINERD_NAME.to_owned(), name.full())].into()));
    Ok((entry, Written { reference: name.to_string(), config_digest, manifest_digest: Some(manifest_digest), layers }))
}

/// Writes every image of `images` into the layout `dir` (blobs and manifest, no `index.json`
/// entry of its own), then their image index; returns the index's `index.json` entry.
fn write_index_blobs<L: LayerTar>(
    images: &[Image<L>],
    dir: &Path,
    reference: Option<&OciRef>,
    compression: Compression,
    keep: Option<&[u8]>,
    durability: Durability,
    cx: &Transport,
) -> Result<(Descriptor, WrittenIndex), SinkError> {
    let blobs_dir = dir.join("blobs/sha256");
    let mut written = Vec::new();
    let mut manifests = Vec::new();
    for image in images {
        let (entry, image_written) = write_blobs(image, dir, None, compression, durability, cx)?;
        let digest = image_written.manifest_digest.expect("an OCI layout has manifests");
        let bytes = fs::read(blobs_dir.join(digest.hex())).map_err(|source| SinkError::Write { path: blobs_dir.clone(), source })?;
        debug_assert_eq!(entry.size(), bytes.len() as u64);
        manifests.push((image.platform(), bytes));
        written.push((image.platform(), image_written));
    }
    let listed: Vec<(Platform, &[u8])> = manifests.iter().map(|(p, b)| (p.clone(), b.as_slice())).collect();
    let index = crate::index_bytes(&listed, keep);
    let index_digest = write_blob(dir, &blobs_dir, &index, durability)?;
    let first = images.first().expect("an index of no images is refused before");
    let (ref_name, name) = match reference {
        Some(OciRef::Name(name)) => (name.to_string(), name.clone()),
        Some(OciRef::Tag(tag)) => (tag.clone(), ImageName { name: first.name.clone(), tag: tag.clone() }),
        None => {
            let tag = first.tag.clone().unwrap_or_else(|| index_digest.hex()[..32].to_owned());
            (tag.clone(), ImageName { name: first.name.clone(), tag })
        }
    };
    let mut entry = descriptor(MediaType::ImageIndex, index.len() as u64, &index_digest);
    entry.set_annotations(Some([(ANNOTATION_REF_NAME.to_owned(), ref_name), (ANNOTATION_CONTAINERD_NAME.to_owned(), name.full())].into()));
    Ok((entry, WrittenIndex { reference: name.to_string(), index_digest, images: written }))
}

/// Whether a layout directory is a scratch directory of this process (which holds its lock
/// already, and shares it with nobody) or may be shared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Ours,
    Shared,
}

/// Adds `entry` to `index.json` of the layout `dir`, replacing the entry with the same
/// reference name, under an exclusive lock on the directory.
fn add_to_index(dir: &Path, entry: Descriptor, layout: Layout) -> Result<(), SinkError> {
    let lock_err = |source| SinkError::Write { path: dir.to_owned(), source };
    let _lock = match layout {
        Layout::Ours => None,
        Layout::Shared => {
            let lock = File::open(dir).map_err(lock_err)?;
            lock.lock().map_err(lock_err)?;
            Some(lock)
        }
    };
    let ref_name = |d: &Descriptor| d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME)).cloned();
    let index_path = dir.join("index.json");
    let mut index = read_index(&index_path)?;
    let mut manifests: Vec<Descriptor> = index.manifests().iter().filter(|d| ref_name(d) != ref_name(&entry)).cloned().collect();
    manifests.push(entry);
    index.set_manifests(manifests);
    write_small_file(dir, &index_path, &canonical_json(&index))
    // The lock is released when dropped, after the rename.
}

fn descriptor(media_type: MediaType, size: u64, digest: &Digest) -> Descriptor {
    Descriptor::new(media_type, size, oci_spec::image::Digest::from(*digest))
}

fn read_index(path: &Path) -> Result<ImageIndex, SinkError> {
    let bad = |why: String| SinkError::BadOciLayout { path: path.to_owned(), why };
    match File::open(path) {
        Ok(file) => {
            let bytes = read_bounded(file, MAX_INDEX_SIZE).map_err(|e| bad(e.to_string()))?;
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
        }
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

/// Writes a blob named by its digest (through a scratch file in `scratch`); returns the digest.
fn write_blob(scratch: &Path, blobs_dir: &Path, bytes: &[u8], durability: Durability) -> Result<Digest, SinkError> {
    let digest = Digest::of(bytes);
    let path = blobs_dir.join(digest.hex());
    if !path.exists() {
        ScratchFile::holding(scratch, "strata-blob", bytes)
            .and_then(|temp| durability.name_blob(temp, &path))
            .map_err(|source| SinkError::Write { path: path.clone(), source })?;
    }
    Ok(digest)
}

/// Writes `path` whole through a scratch file in `scratch`.
fn write_small_file(scratch: &Path, path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    ScratchFile::write_whole(scratch, "strata-blob", path, bytes).map_err(|source| SinkError::Write { path: path.to_owned(), source })
}

/// Reads the image tagged `tag` (or the only one) of an OCI layout or archive.
pub(crate) fn open_oci(store: BlobStore, path: &Path, tag: Option<&str>, platform: &Platform) -> Result<SourceImage, SourceError> {
    let (descriptor, mut manifest_bytes, reference) = oci_entry(&store, path, tag)?;
    let mut descriptor = descriptor; // An entry may be an index of images for several platforms: take `platform`'s.
    if descriptor.media_type() == &MediaType::ImageIndex {
        let nested: ImageIndex = parse_json(&manifest_bytes, path, "index")?;
        descriptor = nested
            .manifests()
            .iter()
            .find(|d| d.platform().as_ref().is_some_and(|p| platform.matches(p)))
            .cloned()
            .ok_or_else(|| invalid(path, format!("the index has no image for {platform}")))?;
        manifest_bytes = store.read(&descriptor, "manifest", path)?;
    }
    let manifest: ImageManifest = parse_json(&manifest_bytes, path, "manifest")?;
    let config_bytes = store.read(manifest.config(), "config", path)?;
    let config: ImageConfiguration = parse_json(&config_bytes, path, "config")?;
    let layers = layers_of(&manifest, &config, path)?;
    Ok(SourceImage { config_bytes, config, manifest_bytes: Some(manifest_bytes), layers, reference, origin: None, blobs: Arc::new(store) })
}

/// The `index.json` entry `tag` names (the only entry, without a tag), the bytes of the
/// document it points to (verified), and its reference name.
fn oci_entry(store: &BlobStore, path: &Path, tag: Option<&str>) -> Result<(Descriptor, Vec<u8>, Option<String>), SourceError> {
    let index_bytes = match store {
        BlobStore::Dir(dir) => {
            let index_path = dir.join("index.json");
            let read_err = |source| SourceError::Read { path: index_path.clone(), source };
            read_bounded(open_inside(dir, "index.json").map_err(read_err)?, MAX_METADATA_SIZE).map_err(read_err)?
        }
        BlobStore::Archive { path: tar, files, .. } => {
            let read_err = |source| SourceError::Read { path: path.to_owned(), source };
            read_bounded(archive_member(tar, files, "index.json")?, MAX_METADATA_SIZE).map_err(read_err)?
        }
        BlobStore::Registry(..) | BlobStore::Flat(_) => unreachable!("registries and dir: images are opened by their own modules"),
    };
    let index: ImageIndex = parse_json(&index_bytes, path, "index.json")?;
    let ref_name = |d: &Descriptor| d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME)).cloned();
    let descriptor = match tag {
        Some(tag) => index.manifests().iter().find(|d| ref_name(d).as_deref() == Some(tag)).ok_or_else(|| invalid(path, format!("no image tagged {tag:?}")))?,
        None if index.manifests().len() == 1 => &index.manifests()[0],
        None => return Err(invalid(path, "holds several images: name one with :TAG")),
    };
    let bytes = store.read(descriptor, "manifest", path)?;
    Ok((descriptor.clone(), bytes, ref_name(descriptor)))
}

/// The image index the entry `tag` of the layout or archive points to, if it is one.
pub(crate) fn oci_index(store: BlobStore, path: &Path, tag: Option<&str>) -> Result<Option<Vec<u8>>, SourceError> {
    let (descriptor, bytes, _) = oci_entry(&store, path, tag)?;
    Ok((descriptor.media_type() == &MediaType::ImageIndex).then_some(bytes))
}
