//! The docker-archive format (`docker save`/`docker load`): a tar holding each layer's tar,
//! the config as `<digest hex>.json`, and `manifest.json` naming them with the image's tag.
//!
//! Uncompressed, it is streamed in one pass: each layer's size comes from its recipe, so its
//! header goes out before its bytes; digests are computed in flight; the config (which
//! lists the layers' digests) and the manifest go last. Hashing is the bottleneck, so while
//! this thread writes layer after layer from the front (hashing as it goes), helper
//! threads hash the biggest layers still ahead of it without writing them, two at a time
//! where that is faster; when the writer reaches a layer a helper has claimed, it only
//! copies bytes. Each byte is hashed at most once, read where the page cache has it (files
//! are mapped, not read); memory stays flat. A layer the layer cache knows is not hashed at
//! all: a second build of an image only copies bytes.
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
use strata_oci::image::{Image, LayerSource, LayerTar, SourceImage, TarError, TarPieces};
use strata_oci::manifest::LayerBlob;
use strata_oci::sha256::Sha256;
use strata_scratch::ScratchDir;

use crate::blobs::{archive_member, invalid, parse_json, read_bounded, BlobStore, KeepsError, TeeReader, MAX_METADATA_SIZE};
use crate::cache::CachedBlob;
use crate::progress::{Counted, Progress, Stage};
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
/// images have it (named by its diff ID), and each read once: copied as it is while its tar
/// (decompressed, if it is compressed) is hashed and checked against the config's diff ID. A
/// layer that is not its diff ID fails the merge once its bytes are out (the output of a
/// failed Nix build is removed). `mtime` stamps the members.
pub fn merge_docker_archives<W: Write + Send>(archives: &[PathBuf], out: W, mtime: u64) -> Result<(), MergeError> {
    let mut tar = OuterTar { out, mtime, path: PathBuf::from("the docker-archive") };
    let mut written = std::collections::BTreeSet::new();
    let mut manifest = Vec::new();
    for path in archives {
        let archive = ArchiveIndex::read(path)?;
        let mut layers = Vec::new();
        for (j, diff_id) in archive.diff_ids.iter().enumerate() {
            let name = format!("{}/layer.tar", diff_id.hex());
            if written.insert(name.clone()) {
                let (member, size) = archive.member(j)?;
                tar.header(&name, size)?;
                let mut out = KeepsError { inner: &mut tar.out, error: None };
                let checked = archive.check_layer(j, member, &mut out);
                if let Some(e) = out.error {
                    return Err(tar.write_err(e).into());
                }
                if checked?.size != size {
                    return Err(invalid(path, format!("{} is not the size its header says", archive.layer_names[j])).into());
                }
                tar.pad(size)?;
            }
            layers.push(name);
        }
        let config_name = format!("{}.json", Digest::of(&archive.config_bytes).hex());
        if written.insert(config_name.clone()) {
            tar.bytes(&config_name, &archive.config_bytes)?;
        }
        let tags: Vec<&String> = archive.reference.iter().collect();
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
/// built layer is hashed by whoever claims it first: helper threads (one per core but this
/// one) claim the biggest layers first and hash them two at a time ([`hash_in_pairs`]); the
/// writer, going front to back, claims and hashes in flight a layer nobody has, and only
/// copies one a helper claimed (the kernel moves those bytes where it can).
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
    let mut hashed: Vec<OnceLock<Result<Digest, TarError>>> = (0..n).map(|_| OnceLock::new()).collect();
    let mut biggest_first: Vec<usize> = (0..n).filter(|k| recipes[*k].is_some() && known[*k].is_none()).collect();
    biggest_first.sort_by_key(|k| std::cmp::Reverse(recipes[*k].map_or(0, |r| r.tar_len())));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let claimed: Vec<AtomicBool> = known.iter().map(|k| AtomicBool::new(k.is_some())).collect();
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
    // A stream hashed in a pair goes at little more than half its speed alone (on this
    // project's Intel machines a core hashes two streams at 2.1 GB/s, one at 1.74), so a
    // layer bigger than half a core's share, paired, would be the last to finish: it is
    // hashed alone.
    let alone = biggest_first.iter().filter_map(|k| recipes[*k]).map(|r| r.tar_len()).sum::<u64>() / (2 * cores as u64);
    std::thread::scope(|s| {
        for _ in 1..cores {
            s.spawn(|| {
                let claim = || loop {
                    let k = *biggest_first.get(next.fetch_add(1, Ordering::SeqCst))?;
                    let recipe = recipes[k].filter(|_| !stop.load(Ordering::SeqCst))?;
                    if !claimed[k].swap(true, Ordering::SeqCst) {
                        return Some((k, recipe.tar_len(), recipe.pieces()));
                    }
                };
                hash_in_pairs(alone, claim, |k, digest| drop(hashed[k].set(digest)), progress);
            });
        }
        let written = (|| {
            for (k, layer) in layers.iter().enumerate() {
                match *layer {
                    LayerSource::Built(recipe) => {
                        tar.header(&names[k], recipe.tar_len())?;
                        if claimed[k].swap(true, Ordering::SeqCst) {
                            recipe.write_tar_direct(&mut tar.out)?;
                        } else {
                            progress.start(k, Stage::Hashing, recipe.tar_len());
                            let mut hashing = HashingWriter::new(Counted { inner: &mut tar.out, layer: k, progress });
                            recipe.write_tar(&mut hashing)?;
                            drop(hashed[k].set(Ok(hashing.finish().0)));
                            progress.finish(k);
                        }
                        tar.pad(recipe.tar_len())?;
                    }
                    LayerSource::Base(base, j) => {
                        tar.header(&names[k], base.layers[j].size)?;
                        copy_base_layer(base, j, &mut tar.out)?;
                        tar.pad(base.layers[j].size)?;
                    }
                }
            }
            Ok(())
        })();
        if written.is_err() {
            stop.store(true, Ordering::SeqCst); // the hashers start nothing more
        }
        written.map_err(|e: SinkError| match e {
            SinkError::Tar(TarError::Write(source)) => tar.write_err(source),
            other => other,
        })
    })?;
    let mut diff_ids = Vec::with_capacity(n);
    for (k, layer) in layers.iter().enumerate() {
        let digest = match (layer, known[k]) {
            (LayerSource::Base(base, j), _) => base.layers[*j].diff_id,
            (LayerSource::Built(_), Some(digest)) => digest,
            (LayerSource::Built(recipe), None) => {
                let digest = hashed[k].take().expect("every layer claimed is hashed")?;
                if let Some(fingerprint) = &fingerprints[k] {
                    cache.put(fingerprint, Compression::None, &CachedBlob { diff_id: digest, digest, size: recipe.tar_len() });
                }
                digest
            }
        };
        diff_ids.push(digest);
    }
    Ok(diff_ids)
}

/// Hashes tars on this thread two at a time, the blocks of both stepped through the rounds
/// together ([`Sha256::update_pair`]: a core hashes more that way than one stream at a
/// time), taking the next tar from `claim` (its layer, length and pieces) whenever one ends,
/// and giving each layer's digest, or why its tar could not be read, to `done`.
fn hash_in_pairs<'a>(
    alone: u64,
    mut claim: impl FnMut() -> Option<(usize, u64, Box<dyn TarPieces + 'a>)>,
    mut done: impl FnMut(usize, Result<Digest, TarError>),
    progress: &dyn Progress,
) {
    struct Job<'a> {
        layer: usize,
        len: u64,
        pieces: Box<dyn TarPieces + 'a>,
        hash: Sha256,
    }
    let mut start = || {
        claim().map(|(layer, len, pieces)| {
            progress.start(layer, Stage::Hashing, len);
            Job { layer, len, pieces, hash: Sha256::new() }
        })
    };
    let mut jobs: [Option<Job>; 2] = [None, None];
    loop {
        // Each slot gets a job with bytes ready, ending the jobs whose tars are read, until
        // nothing is left to claim; but beside a job of more than `alone` bytes, none.
        for i in 0..2 {
            loop {
                let [first, second] = &mut jobs;
                let (slot, other) = if i == 0 { (first, &*second) } else { (second, &*first) };
                let ended = match slot {
                    None => None,
                    Some(job) => match job.pieces.fill() {
                        Ok(piece) if !piece.is_empty() => break,
                        Ok(_) => Some(Ok(())),
                        Err(e) => Some(Err(e)),
                    },
                };
                if let (Some(ended), Some(job)) = (ended, slot.take()) {
                    progress.finish(job.layer);
                    done(job.layer, ended.map(|()| job.hash.finish()));
                }
                if other.as_ref().is_some_and(|job| job.len > alone) {
                    break;
                }
                *slot = start();
                if slot.is_none() {
                    break;
                }
            }
        }
        match &mut jobs {
            [None, None] => return,
            [Some(job), None] | [None, Some(job)] => {
                if let Ok(piece) = job.pieces.fill() {
                    job.hash.update(piece);
                    let n = piece.len();
                    job.pieces.consume(n);
                    progress.advance(job.layer, n as u64);
                }
            }
            [Some(x), Some(y)] => {
                if let (Ok(px), Ok(py)) = (x.pieces.fill(), y.pieces.fill()) {
                    let n = px.len().min(py.len());
                    Sha256::update_pair(&mut x.hash, &px[..n], &mut y.hash, &py[..n]);
                    for job in [x, y] {
                        job.pieces.consume(n);
                        progress.advance(job.layer, n as u64);
                    }
                }
            }
        }
    }
}

/// A docker-archive's one image as its `manifest.json` and config describe it, no layer read.
struct ArchiveIndex {
    path: PathBuf,
    store: BlobStore,
    layer_names: Vec<String>,
    diff_ids: Vec<Digest>,
    config_bytes: Vec<u8>,
    config: ImageConfiguration,
    reference: Option<String>,
}

impl ArchiveIndex {
    fn read(path: &Path) -> Result<ArchiveIndex, SourceError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let store = BlobStore::archive(path)?;
        let BlobStore::Archive { path: tar, files, .. } = &store else { unreachable!("an archive's store") };
        let read_err = |source| SourceError::Read { path: path.to_owned(), source };
        let member = |name: &str| archive_member(tar, files, name);
        let manifest: Vec<Entry> = parse_json(&read_bounded(member("manifest.json")?, MAX_METADATA_SIZE).map_err(read_err)?, path, "manifest.json")?;
        let [entry] = &manifest[..] else {
            return Err(invalid(path, format!("manifest.json describes {} images; strata reads docker-archives of one", manifest.len())));
        };
        let config_bytes = read_bounded(member(&entry.config)?, MAX_METADATA_SIZE).map_err(read_err)?;
        let config: ImageConfiguration = parse_json(&config_bytes, path, "config")?;
        if config.rootfs().diff_ids().len() != entry.layers.len() {
            return Err(invalid(path, "the config's diff_ids and the manifest's layers differ in number"));
        }
        let diff_ids = (config.rootfs().diff_ids().iter().enumerate())
            .map(|(i, d)| d.parse().map_err(|e| invalid(path, format!("diff_ids[{i}]: {e}"))))
            .collect::<Result<_, _>>()?;
        let reference = entry.repo_tags.as_ref().and_then(|t| t.first().cloned());
        Ok(ArchiveIndex { path: path.to_owned(), layer_names: entry.layers.clone(), diff_ids, config_bytes, config, reference, store })
    }

    /// Layer `j`'s member: a reader of it, and its size.
    fn member(&self, j: usize) -> Result<(io::Take<std::fs::File>, u64), SourceError> {
        let BlobStore::Archive { path: tar, files, .. } = &self.store else { unreachable!("an archive's store") };
        let name = &self.layer_names[j];
        Ok((archive_member(tar, files, name)?, files.get(name).map_or(0, |&(_, size)| size)))
    }

    /// Reads layer `j`'s member from `member` into `copy` as it is, checking its tar
    /// (decompressed first if it is compressed) against the config's diff ID; returns the
    /// blob as it is stored. A write to `copy` that fails is reported as a read's.
    fn check_layer(&self, j: usize, member: impl Read + Send, copy: impl Write + Send) -> Result<LayerBlob, SourceError> {
        let (name, expected) = (&self.layer_names[j], self.diff_ids[j]);
        let read_err = |source| SourceError::Read { path: self.path.clone(), source };
        let mut copy = HashingWriter::new(copy);
        let mut data = io::BufReader::new(TeeReader { inner: member, copy: &mut copy });
        let codec = Compression::sniff(io::BufRead::fill_buf(&mut data).map_err(read_err)?);
        let mut tar = (codec != Compression::None).then(|| HashingWriter::new(io::sink()));
        if let Some(tar) = &mut tar {
            io::copy(&mut codec.decoder(&mut data).map_err(read_err)?, tar).map_err(read_err)?;
        }
        io::copy(&mut data, &mut io::sink()).map_err(read_err)?; // a tar, or what a decoder left
        drop(data);
        let (digest, size, _) = copy.finish();
        let actual = tar.map_or(digest, |tar| tar.finish().0);
        if actual != expected {
            return Err(SourceError::DiffIdMismatch { path: self.path.join(name), index: j, expected, actual });
        }
        Ok(LayerBlob { digest, diff_id: expected, size, media_type: codec.layer_media_type() })
    }
}

/// Reads a docker-archive: its one image, each layer hashed once here and checked against
/// the config's diff IDs (decompressed first if it is compressed): a corrupt archive fails
/// before anything is written anywhere.
pub(crate) fn open_docker_archive(path: &Path) -> Result<SourceImage, SourceError> {
    let archive = ArchiveIndex::read(path)?;
    // A docker-archive names layers by path, not digest: hash each one once, here (on every
    // core, biggest first). A tar (what `docker save` writes) is its own blob: one digest is
    // both.
    let hash_layer = |j: usize| archive.check_layer(j, archive.member(j)?.0, io::sink());
    let member_size = |j: usize| archive.member(j).map_or(0, |(_, size)| size);
    let layers = crate::for_each_biggest_first(archive.layer_names.len(), member_size, hash_layer)?;
    let ArchiveIndex { mut store, layer_names, config_bytes, config, reference, .. } = archive;
    let BlobStore::Archive { by_digest, .. } = &mut store else { unreachable!("an archive's store") };
    for (name, layer) in layer_names.iter().zip(&layers) {
        by_digest.insert(layer.digest, name.clone());
    }
    Ok(SourceImage { config_bytes, config, manifest_bytes: None, layers, reference, origin: None, blobs: Arc::new(store) })
}
