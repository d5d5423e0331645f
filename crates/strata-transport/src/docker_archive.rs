//! The docker-archive format (`docker save`/`docker load`): a tar holding each layer's tar,
//! the config as `<digest hex>.json`, and `manifest.json` naming them with the image's tag.
//!
//! Uncompressed, it is streamed in one pass: each layer's size comes from its recipe, so its
//! header goes out before its bytes; digests are computed in flight; the config (which
//! lists the layers' digests) and the manifest go last. Hashing is the bottleneck, so while
//! this thread writes layer after layer from the front (hashing as it goes), helper
//! threads hash the biggest layers still ahead of it without writing them; when the writer
//! reaches a layer a helper has finished, it only copies bytes. Each byte is hashed at most
//! once; memory stays flat. A layer the layer cache knows is not hashed at all: a second
//! build of an image only copies bytes.
//!
//! Compressed layers have no size known in advance: they are compressed in parallel into a
//! temporary directory first, then streamed.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

use oci_spec::image::ImageConfiguration;
use strata_oci::canonical::canonical_json;
use strata_oci::compress::Compression;
use strata_oci::digest::{Digest, HashingWriter};
use strata_oci::image::{Image, LayerSource, LayerTar, SourceImage, TarError};
use strata_oci::manifest::LayerBlob;
use strata_scratch::ScratchDir;

use crate::blobs::{archive_member, invalid, parse_json, read_bounded, BlobStore, MAX_METADATA_SIZE};
use crate::cache::CachedBlob;
use crate::progress::{Counted, Stage};
use crate::{copy_base_layer, write_layer_blobs, Durability, OuterTar, SinkError, SourceError, Transport, Written};

/// Writes `image` as a docker-archive to `out`, tagged `reference` if given, else with the
/// image's own name and tag.
pub fn write_docker_archive<W: Write, L: LayerTar>(
    image: &Image<L>,
    out: W,
    compression: Compression,
    reference: Option<&str>,
    cx: &Transport,
) -> Result<Written, SinkError> {
    let mut tar = OuterTar { out, mtime: image.mtime, path: PathBuf::from("the docker-archive") };
    let layers = image.layer_sources();
    let names: Vec<String> = (0..layers.len()).map(|i| format!("{i:03}/layer.tar")).collect();
    let blobs = if compression == Compression::None && layers.iter().all(|l| image.recode_into(l).is_none()) {
        let diff_ids = stream_layers(&layers, &names, &mut tar, cx)?;
        let blob = |(layer, diff_id): (&LayerSource<L>, Digest)| match *layer {
            LayerSource::Built(recipe) => LayerBlob { diff_id, digest: diff_id, size: recipe.tar_len(), media_type: Compression::None.layer_media_type() },
            LayerSource::Base(base, j) => base.layers[j].clone(),
        };
        layers.iter().zip(diff_ids).map(blob).collect()
    } else {
        let staging = ScratchDir::temporary().map_err(|source| SinkError::Write { path: std::env::temp_dir(), source })?;
        let blobs = write_layer_blobs(image, compression, staging.path(), staging.path(), Durability::Staged, cx)?;
        for (name, blob) in names.iter().zip(&blobs) {
            tar.file(name, &staging.path().join(blob.digest.hex()))?;
        }
        blobs
    };
    let diff_ids: Vec<Digest> = blobs.iter().map(|b| b.diff_id).collect();
    // Checked before the config and manifest go out: without them the stream loads nowhere.
    let config = image.config_checked(&diff_ids)?;
    let config_digest = Digest::of(&config);
    let config_name = format!("{}.json", config_digest.hex());
    tar.bytes(&config_name, &config)?;
    let reference = reference.map_or_else(|| image.reference(&config_digest), str::to_owned);
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": [reference], "Layers": names }]);
    tar.bytes("manifest.json", &canonical_json(&manifest))?;
    tar.finish()?;
    Ok(Written { reference, config_digest, manifest_digest: None, layers: blobs })
}

/// Writes the images of several docker-archives as one docker-archive (nixpkgs'
/// `dockerTools.mergeImages`: `docker load` loads them all), each layer once however many
/// images have it, every blob and config checked as it is read. `mtime` stamps the members.
pub fn merge_docker_archives<W: Write>(archives: &[PathBuf], out: W, mtime: u64) -> Result<(), MergeError> {
    let mut tar = OuterTar { out, mtime, path: PathBuf::from("the docker-archive") };
    let mut written = std::collections::BTreeSet::new();
    let mut manifest = Vec::new();
    for path in archives {
        let image = open_docker_archive(path)?;
        let mut layers = Vec::new();
        for (j, layer) in image.layers.iter().enumerate() {
            let name = format!("{}/layer.tar", layer.digest.hex());
            if written.insert(name.clone()) {
                tar.header(&name, layer.size)?;
                copy_base_layer(&image, j, &mut tar.out)?;
                tar.pad(layer.size)?;
            }
            layers.push(name);
        }
        let config_name = format!("{}.json", Digest::of(&image.config_bytes).hex());
        if written.insert(config_name.clone()) {
            tar.bytes(&config_name, &image.config_bytes)?;
        }
        let tags: Vec<&String> = image.reference.iter().collect();
        manifest.push(serde_json::json!({ "Config": config_name, "RepoTags": tags, "Layers": layers }));
    }
    tar.bytes("manifest.json", &canonical_json(&serde_json::Value::Array(manifest)))?;
    tar.finish()?;
    Ok(())
}

/// Why archives could not be merged: one could not be read, or the output not written.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Streams every layer into `tar` under `names` (built layers as tars, base layers as they
/// are), returning their diff IDs.
///
/// The names hold no digest, so a layer's bytes can go out before its diff ID is known. Each
/// built layer is hashed by whoever claims it first: helper threads claim the biggest layers
/// first; the writer, going front to back, claims and hashes in flight a layer nobody has,
/// and only copies one a helper claimed (whose diff ID it collects once the helpers are done).
fn stream_layers<W: Write, L: LayerTar>(layers: &[LayerSource<L>], names: &[String], tar: &mut OuterTar<W>, cx: &Transport) -> Result<Vec<Digest>, SinkError> {
    let (cache, progress) = (&cx.cache, &*cx.progress);
    let n = layers.len();
    let recipes: Vec<Option<&L>> = layers
        .iter()
        .map(|l| match l {
            LayerSource::Built(recipe) => Some(*recipe),
            LayerSource::Base(..) => None,
        })
        .collect();
    let fingerprints: Vec<Option<Digest>> = recipes.iter().map(|r| r.map(|r| r.fingerprint())).collect();
    let known: Vec<Option<Digest>> = (0..n)
        .map(|k| {
            let (recipe, fingerprint) = (recipes[k]?, fingerprints[k]?);
            // The size check is only a guard: a fingerprint names one tar.
            cache.get(&fingerprint, Compression::None).filter(|hit| hit.size == recipe.tar_len()).map(|hit| hit.diff_id)
        })
        .collect();
    tracing::info!("{} of {} layers known to the layer cache: copied without hashing", known.iter().flatten().count(), n);
    let claimed: Vec<AtomicBool> = known.iter().map(|k| AtomicBool::new(k.is_some())).collect();
    let mut hashed_by_helper: Vec<OnceLock<Result<Digest, TarError>>> = (0..n).map(|_| OnceLock::new()).collect();
    let mut biggest_first: Vec<usize> = (0..n).filter(|k| recipes[*k].is_some() && known[*k].is_none()).collect();
    biggest_first.sort_by_key(|k| std::cmp::Reverse(recipes[*k].map_or(0, |r| r.tar_len())));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let helpers = std::thread::available_parallelism().map_or(1, |p| p.get()).saturating_sub(1);
    let written = std::thread::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|| {
                while let Some(&k) = biggest_first.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(recipe) = recipes[k] else { continue };
                    if claimed[k].swap(true, Ordering::SeqCst) {
                        continue;
                    }
                    progress.start(k, Stage::Hashing, recipe.tar_len());
                    let mut sink = HashingWriter::new(Counted { inner: io::sink(), layer: k, progress });
                    let _ = hashed_by_helper[k].set(recipe.write_tar(&mut sink).map(|()| sink.finish().0));
                    progress.finish(k);
                }
            });
        }
        let written = (|| {
            let mut in_flight = vec![None; n];
            for (k, layer) in layers.iter().enumerate() {
                let recipe = match *layer {
                    LayerSource::Built(recipe) => recipe,
                    LayerSource::Base(base, j) => {
                        tar.header(&names[k], base.layers[j].size)?;
                        copy_base_layer(base, j, &mut tar.out)?;
                        tar.pad(base.layers[j].size)?;
                        in_flight[k] = Some(base.layers[j].diff_id);
                        continue;
                    }
                };
                tar.header(&names[k], recipe.tar_len())?;
                if claimed[k].swap(true, Ordering::SeqCst) {
                    // Copied by the kernel where it can: not counted on the way.
                    recipe.write_tar_direct(&mut tar.out)?;
                } else {
                    progress.start(k, Stage::Hashing, recipe.tar_len());
                    let mut hashing = HashingWriter::new(Counted { inner: &mut tar.out, layer: k, progress });
                    recipe.write_tar(&mut hashing)?;
                    in_flight[k] = Some(hashing.finish().0);
                    progress.finish(k);
                }
                tar.pad(recipe.tar_len())?;
            }
            Ok(in_flight)
        })();
        stop.store(true, Ordering::SeqCst); // after an error, the helpers start nothing more
        written.map_err(|e: SinkError| match e {
            SinkError::Tar(TarError::Write(source)) => tar.write_err(source),
            other => other,
        })
    })?;
    let mut diff_ids = Vec::with_capacity(n);
    for (k, digest) in written.into_iter().enumerate() {
        let digest = match (digest, known[k]) {
            (Some(digest), _) | (None, Some(digest)) => digest,
            (None, None) => hashed_by_helper[k].take().expect("a layer the writer did not hash was hashed by a helper")?,
        };
        if let (None, Some(recipe), Some(fingerprint)) = (known[k], recipes[k], &fingerprints[k]) {
            cache.put(fingerprint, Compression::None, &CachedBlob { diff_id: digest, digest, size: recipe.tar_len() });
        }
        diff_ids.push(digest);
    }
    Ok(diff_ids)
}

/// Reads a docker-archive: its one image, each layer hashed once here and checked against
/// the config's diff IDs (decompressed first if it is compressed): a corrupt archive fails
/// before anything is written anywhere.
pub(crate) fn open_docker_archive(path: &Path) -> Result<SourceImage, SourceError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let mut store = BlobStore::archive(path)?;
    let BlobStore::Archive { path: tar, files, .. } = &store else { unreachable!("an archive's store") };
    let read_err = |source| SourceError::Read { path: path.to_owned(), source };
    let member = |name: &str| archive_member(tar, files, name);
    let manifest: Vec<Entry> = parse_json(&read_bounded(member("manifest.json")?, MAX_METADATA_SIZE).map_err(read_err)?, path, "manifest.json")?;
    let [entry] = &manifest[..] else {
        return Err(invalid(path, format!("manifest.json describes {} images; strata reads docker-archives of one", manifest.len())));
    };
    let config_bytes = read_bounded(member(&entry.config)?, MAX_METADATA_SIZE).map_err(read_err)?;
    let config: ImageConfiguration = parse_json(&config_bytes, path, "config")?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(path, "the config's diff_ids and the manifest's layers differ in number"));
    }
    // A docker-archive names layers by path, not digest: hash each one once, here (on every
    // core, biggest first), and check its tar against the config's diff ID. A tar (what
    // `docker save` writes) is its own blob: one digest is both.
    let hash_layer = |i: usize| -> Result<LayerBlob, SourceError> {
        let (name, diff_id) = (&entry.layers[i], &diff_ids[i]);
        let expected: Digest = diff_id.parse().map_err(|e| invalid(path, format!("diff_ids[{i}]: {e}")))?;
        let mut blob = HashingWriter::new(io::sink());
        let mut data = io::BufReader::new(TeeReader { inner: member(name)?, copy: &mut blob });
        let codec = Compression::sniff(io::BufRead::fill_buf(&mut data).map_err(read_err)?);
        let mut tar = (codec != Compression::None).then(|| HashingWriter::new(io::sink()));
        if let Some(tar) = &mut tar {
            io::copy(&mut codec.decoder(&mut data).map_err(read_err)?, tar).map_err(read_err)?;
        }
        io::copy(&mut data, &mut io::sink()).map_err(read_err)?; // a tar, or what a decoder left
        drop(data);
        let (digest, size, _) = blob.finish();
        let actual = tar.map_or(digest, |tar| tar.finish().0);
        if actual != expected {
            return Err(SourceError::DiffIdMismatch { path: path.join(name), index: i, expected, actual });
        }
        Ok(LayerBlob { digest, diff_id: expected, size, media_type: codec.layer_media_type() })
    };
    let member_size = |i: usize| files.get(&entry.layers[i]).map_or(0, |&(_, size)| size);
    let layers = crate::for_each_biggest_first(entry.layers.len(), member_size, hash_layer)?;
    let BlobStore::Archive { by_digest, .. } = &mut store else { unreachable!("an archive's store") };
    for (name, layer) in entry.layers.iter().zip(&layers) {
        by_digest.insert(layer.digest, name.clone());
    }
    let reference = entry.repo_tags.as_ref().and_then(|t| t.first().cloned());
    Ok(SourceImage { config_bytes, config, manifest_bytes: None, layers, reference, origin: None, blobs: Arc::new(store) })
}

/// Reads from `inner`, writing what it reads to `copy`.
struct TeeReader<'a, R> {
    inner: R,
    copy: &'a mut HashingWriter<io::Sink>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        io::Write::write_all(self.copy, &buf[..n])?;
        Ok(n)
    }
}
