//! The transports on synthetic images, no daemon, no Nix: what each writer writes, its
//! reader reads back with the same digests; re-encoding keeps diff IDs; corrupt blobs fail.

use std::path::Path;

use oci_spec::image::ImageConfiguration;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{ConfigRecipe, Image, LayerTar, Recode, TarError, TarPieces};
use strata_oci::platform::Platform;
use strata_oci::reference::ImageRef;

use strata_transport::cache::{CachedBlob, LayerCache};
use strata_transport::{open_image, write_docker_archive, write_image, Transport};

/// No registry, no cache: what every test that is not about the cache uses.
fn transport() -> Transport {
    Transport::isolated()
}

/// A built layer whose tar is given whole; it counts how often its tar is read.
#[derive(Clone)]
struct TarBytes {
    tar: Vec<u8>,
    comment: String,
    reads: Arc<AtomicUsize>,
    /// Fails after writing this many bytes of its tar.
    fails_after: Option<usize>,
}

impl TarBytes {
    /// A tar of one file `name` holding `data`.
    fn file(name: &str, data: &[u8]) -> TarBytes {
        let mut tar = Vec::new();
        let header = strata_oci::ustar::header(name.as_bytes(), tar::EntryType::Regular, 0o644, 0, 0, data.len() as u64, 1, b"");
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
        TarBytes { tar, comment: format!("file {name}"), reads: Arc::default(), fails_after: None }
    }
}

impl LayerTar for TarBytes {
    fn tar_len(&self) -> u64 {
        self.tar.len() as u64
    }
    fn pieces(&self) -> Box<dyn TarPieces + '_> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Box::new(Pieces { rest: &self.tar[..self.fails_after.unwrap_or(self.tar.len())], fails: self.fails_after.is_some() })
    }
    fn fingerprint(&self) -> Digest {
        Digest::of(&self.tar)
    }
    fn comment(&self) -> &str {
        &self.comment
    }
}

/// A tar lent in pieces of uneven sizes (so that two hashed in a pair end apart), failing at
/// its end if `fails`.
struct Pieces<'a> {
    rest: &'a [u8],
    fails: bool,
}

impl TarPieces for Pieces<'_> {
    fn fill(&mut self) -> Result<&[u8], TarError> {
        if self.rest.is_empty() && self.fails {
            return Err(TarError::Source("a file changed while it was read".into()));
        }
        Ok(&self.rest[..self.rest.len().min(1 + self.rest.len() % 99_991)])
    }
    fn consume(&mut self, n: usize) {
        self.rest = &self.rest[n..];
    }
}

fn image(layers: Vec<TarBytes>) -> Image<TarBytes> {
    let mut config = ImageConfiguration::default();
    config.set_created(Some("1970-01-01T00:00:01Z".to_owned()));
    Image {
        name: "synthetic".to_owned(),
        tag: Some("t".to_owned()),
        mtime: 1,
        config: ConfigRecipe::Built(Box::new(config), Default::default()),
        base: None,
        layers,
        recode: None,
        recorded: None,
        previous: None,
    }
}

fn reference(text: &str) -> ImageRef {
    text.parse().unwrap()
}

#[test]
fn every_writer_is_read_back_with_the_same_digests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let original = image(vec![TarBytes::file("a", b"first"), TarBytes::file("b", &[7u8; 5000])]);
    let cx = transport();
    let expected = original.record(&[], |_| None).unwrap();
    for (dest, codec) in [
        (format!("docker-archive:{d}/a.tar"), Compression::None),
        (format!("docker-archive:{d}/gz.tar"), Compression::Gzip),
        (format!("oci:{d}/layout:t"), Compression::Gzip),
        (format!("oci:{d}/zstd:t"), Compression::Zstd),
        (format!("oci-archive:{d}/b.tar:t"), Compression::None),
    ] {
        let written = write_image(&original, &reference(&dest), codec, &cx).unwrap();
        let source = open_image(&reference(&dest), &Platform::host(), &cx.registry).unwrap();
        let diff_ids: Vec<Digest> = source.layers.iter().map(|l| l.diff_id).collect();
        assert_eq!(diff_ids, expected.diff_ids, "{dest}");
        assert_eq!(Digest::of(&source.config_bytes), written.config_digest, "{dest}");
        assert!(source.layers.iter().all(|l| Compression::of_media_type(&l.media_type) == Some(codec)), "{dest}");
        if codec == Compression::None && dest.starts_with("oci") {
            assert_eq!(written.manifest_digest, Some(expected.manifest), "{dest}: the uncompressed manifest is the recorded one");
        }
        // Copied on, the config (the image ID) stays; re-encoded, the diff IDs too.
        let mut copy: Image<TarBytes> = Image::copy_of(source, None);
        copy.recode = Some(Recode { from: None, to: Compression::Zstd });
        let again = format!("oci:{d}/copies:{}", dest.len());
        let copied = write_image(&copy, &reference(&again), Compression::None, &cx).unwrap();
        assert_eq!(copied.config_digest, written.config_digest, "{dest}");
        let reread = open_image(&reference(&again), &Platform::host(), &cx.registry).unwrap();
        assert!(reread.layers.iter().all(|l| Compression::of_media_type(&l.media_type) == Some(Compression::Zstd)));
        assert_eq!(reread.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>(), expected.diff_ids);
    }
}

#[test]
fn a_corrupt_blob_fails_the_copy_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cx = transport();
    let layout = reference(&format!("oci:{d}/layout:t"));
    write_image(&image(vec![TarBytes::file("a", b"first")]), &layout, Compression::None, &cx).unwrap();
    let source = open_image(&layout, &Platform::host(), &cx.registry).unwrap();
    let blob = dir.path().join("layout/blobs/sha256").join(source.layers[0].digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let copy: Image<TarBytes> = Image::copy_of(source, None);
    let err = write_image(&copy, &reference(&format!("docker-archive:{d}/out.tar")), Compression::None, &cx).unwrap_err();
    assert!(format!("{err:?}").contains("corrupt"), "{err:?}");
    assert!(!dir.path().join("out.tar").exists());
}

#[test]
fn recorded_digests_are_checked_before_anything_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cx = transport();
    let mut original = image(vec![TarBytes::file("a", b"first")]);
    let mut recorded = original.record(&[], |_| None).unwrap();
    recorded.config = Digest::of(b"something else");
    original.recorded = Some(recorded);
    for dest in [format!("docker-archive:{d}/x.tar"), format!("oci:{d}/layout:t"), format!("oci-archive:{d}/y.tar")] {
        let err = write_image(&original, &reference(&dest), Compression::None, &cx).unwrap_err();
        assert!(err.to_string().contains("was recorded"), "{dest}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The layer cache, on every sink that uses it: a rebuild into an OCI layout that holds the
/// blobs reads no layer; a docker-archive stream takes a known diff ID from the cache rather
/// than hashing; a corrupt entry, a missing blob or another codec only cost the work again.
#[test]
fn the_layer_cache_spares_work_and_never_gives_a_wrong_digest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cx = Transport { cache: LayerCache::new(dir.path().join("cache"), 1 << 20), ..Transport::isolated() };
    let small = TarBytes::file("a", b"first");
    let big = TarBytes::file("b", &[7u8; 3_000_000]);
    let original = image(vec![small.clone(), big.clone()]);
    let reads = || (small.reads.load(Ordering::SeqCst), big.reads.load(Ordering::SeqCst));
    let layout = reference(&format!("oci:{d}/layout:t"));

    let cold = write_image(&original, &layout, Compression::Gzip, &cx).unwrap();
    assert_eq!(reads(), (1, 1));
    let warm = write_image(&original, &layout, Compression::Gzip, &cx).unwrap();
    assert_eq!(reads(), (1, 1), "a rebuild into a layout holding the blobs read a layer");
    assert_eq!((warm.config_digest, warm.manifest_digest), (cold.config_digest, cold.manifest_digest));

    // Another codec is another entry; a layout without the blob gets it made.
    write_image(&original, &reference(&format!("oci:{d}/zstd:t")), Compression::Zstd, &cx).unwrap();
    assert_eq!(reads(), (2, 2));
    let elsewhere = write_image(&original, &reference(&format!("oci:{d}/other:t")), Compression::Gzip, &cx).unwrap();
    assert_eq!(reads(), (3, 3));
    assert_eq!(elsewhere.manifest_digest, cold.manifest_digest);

    // A corrupt entry is a miss: the layer is made again, with the right digest.
    let entries: Vec<_> = walk(&dir.path().join("cache/layers-v1"));
    assert_eq!(entries.len(), 4, "{entries:?}");
    for entry in &entries {
        let text = std::fs::read_to_string(entry).unwrap();
        std::fs::write(entry, text.replace("sha256:", "sha256:0")).unwrap();
    }
    let again = write_image(&original, &layout, Compression::Gzip, &cx).unwrap();
    assert_eq!(reads(), (4, 4));
    assert_eq!(again.manifest_digest, cold.manifest_digest);

    // The stream: the first time the layers are hashed, and remembered; the second time the
    // diff IDs come from the cache. (An entry planted with another diff ID shows it was not
    // re-hashed: a real entry can only hold the right one, the fingerprint names the tar.)
    let stream = |cx: &Transport| {
        let mut out = Vec::new();
        write_docker_archive(&original, &mut out, Compression::None, None, cx).unwrap();
        out
    };
    let first = stream(&cx);
    assert_eq!(first, stream(&cx));
    let planted = Digest::of(b"planted");
    cx.cache.put(&small.fingerprint(), Compression::None, &CachedBlob { diff_id: planted, digest: planted, size: small.tar_len() });
    let trusted = stream(&cx);
    assert!(String::from_utf8_lossy(&trusted).contains(&planted.to_string()), "the stream hashed a layer the cache knows");
    assert_eq!(first, stream(&Transport::isolated()), "without a cache the stream is the same");
}

/// A stream of layers of many sizes (some hashed by the writer as it writes them, some by a
/// helper ahead of it): every diff ID is its tar's, as the archive read back (which checks
/// them) and the digests of the tars say; the same bytes every time. A layer whose tar fails
/// fails the stream, whoever hashes it.
#[test]
fn a_stream_hashes_every_layer_right_whoever_hashes_it() {
    let sizes = [1, 300 << 10, (1 << 20) + 77, 5_000, 700 << 10, 2 << 20, 0, (256 << 10) - 512, 3 << 20, 90_000];
    let layers: Vec<TarBytes> = sizes.iter().enumerate().map(|(i, &len)| TarBytes::file(&format!("f{i}"), &vec![i as u8 ^ 0x5a; len])).collect();
    let expected: Vec<Digest> = layers.iter().map(|l| Digest::of(&l.tar)).collect();
    let original = image(layers.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.tar");
    let mut bytes = Vec::new();
    for _ in 0..3 {
        let mut out = Vec::new();
        let written = write_docker_archive(&original, &mut out, Compression::None, None, &transport()).unwrap();
        assert_eq!(written.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>(), expected);
        assert!(bytes.is_empty() || bytes == out, "the stream changed");
        bytes = out;
    }
    std::fs::write(&path, &bytes).unwrap();
    let read = open_image(&reference(&format!("docker-archive:{}", path.display())), &Platform::host(), &transport().registry).unwrap();
    assert_eq!(read.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>(), expected);
    assert!(read.layers.iter().all(|l| l.digest == l.diff_id), "a tar is its own blob");

    // Read back, the layers are hashed on every core, biggest first: a byte changed in any of
    // them is found, and the error names that layer.
    for broken in [1, 4, 8] {
        let mut corrupt = bytes.clone();
        let fill = vec![broken as u8 ^ 0x5a; 512];
        let at = corrupt.windows(512).position(|w| w == fill).expect("the layer's contents");
        corrupt[at + 100] ^= 1;
        std::fs::write(&path, &corrupt).unwrap();
        let err = open_image(&reference(&format!("docker-archive:{}", path.display())), &Platform::host(), &transport().registry).unwrap_err();
        assert!(err.to_string().contains(&format!("{broken:03}/layer.tar: the tar of layer {broken} has diff ID")), "layer {broken}: {err}");
    }

    for broken in 0..layers.len() {
        let mut layers = layers.clone();
        if layers[broken].tar.len() < 2048 {
            continue;
        }
        layers[broken].fails_after = Some(layers[broken].tar.len() / 2);
        let err = write_docker_archive(&image(layers), std::io::sink(), Compression::None, None, &transport()).unwrap_err();
        assert!(err.to_string().contains("a file changed while it was read"), "layer {broken}: {err}");
    }
}

/// The files below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir).into_iter().map(|e| e.unwrap()).filter(|e| e.file_type().is_file()).map(|e| e.into_path()).collect()
}

/// Digests recorded in a codec (as the Nix library records them): a layout that holds the
/// recorded blobs gets none of them made again, with no layer cache at all; the manifest is the
/// one recorded for the codec; a layout without them gets them made, to the same digests.
#[test]
fn recorded_blobs_name_what_a_destination_has_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cx = transport();
    let layer = TarBytes::file("b", &[7u8; 3_000_000]);
    let mut original = image(vec![layer.clone()]);
    original.recorded = Some(original.record(&[Compression::Gzip], |_| None).unwrap());
    let recorded = original.recorded.clone().unwrap();
    assert_eq!((recorded.codec(), recorded.compressed.len()), (Compression::Gzip, 1));
    assert_eq!(layer.reads.load(Ordering::SeqCst), 1, "one pass gives the tar's digest and the gzip blob's");
    let gzip = &recorded.compressed[0];
    assert_eq!(original.recorded_blob(0, Compression::Gzip).as_ref(), Some(&gzip.layers[0]));
    assert_eq!(original.recorded_blob(0, Compression::Zstd), None, "no zstd was recorded");

    let layout = reference(&format!("oci:{d}/layout:t"));
    let first = write_image(&original, &layout, Compression::Gzip, &cx).unwrap();
    assert_eq!(first.manifest_digest, Some(gzip.manifest));
    assert_eq!(first.layers, gzip.layers);
    assert_eq!(layer.reads.load(Ordering::SeqCst), 2);
    let again = write_image(&original, &layout, Compression::Gzip, &cx).unwrap();
    assert_eq!(layer.reads.load(Ordering::SeqCst), 2, "a layout holding a recorded blob had it made again");
    assert_eq!(again.manifest_digest, first.manifest_digest);

    // Blobs recorded by another layer's build (the layer records of `buildLayer`) are taken
    // as they are, without reading the layer.
    let from_record = original.record(&[Compression::Gzip], |_| Some(strata_oci::image::record_blobs(&layer, &[Compression::Gzip]).unwrap())).unwrap();
    assert_eq!(from_record, recorded);
    assert_eq!(layer.reads.load(Ordering::SeqCst), 3, "only record_blobs read the layer");

    // A recorded manifest the image no longer gives is refused in that codec too.
    let mut stale = original.clone();
    stale.recorded.as_mut().unwrap().compressed[0].manifest = Digest::of(b"another manifest");
    let err = write_image(&stale, &reference(&format!("oci:{d}/stale:t")), Compression::Gzip, &cx).unwrap_err();
    assert!(err.to_string().contains("manifest digest"), "{err}");
}

/// mergeImages: several docker-archives (one with gzip layers) as one, each layer once, named
/// by its diff ID, every member as it was; a layer that is not its diff ID fails the merge,
/// naming the archive and the layer.
#[test]
fn merged_archives_hold_each_layer_once_and_check_each() {
    let dir = tempfile::tempdir().unwrap();
    let cx = transport();
    let shared = TarBytes::file("shared", &[3u8; 3000]);
    let (first, second) = (dir.path().join("first.tar"), dir.path().join("second.tar"));
    write_image(&image(vec![shared.clone(), TarBytes::file("one", b"1")]), &reference(&format!("docker-archive:{}", first.display())), Compression::None, &cx)
        .unwrap();
    write_image(&image(vec![shared.clone(), TarBytes::file("two", b"2")]), &reference(&format!("docker-archive:{}", second.display())), Compression::Gzip, &cx)
        .unwrap();
    let mut merged = Vec::new();
    strata_transport::docker_archive::merge_docker_archives(&[first.clone(), second.clone()], &mut merged, 1).unwrap();
    let mut archive = tar::Archive::new(merged.as_slice());
    let mut names = Vec::new();
    let mut manifest = serde_json::Value::Null;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if name == "manifest.json" {
            manifest = serde_json::from_slice(&bytes).unwrap();
        } else if let Some(hex) = name.strip_suffix("/layer.tar") {
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut Compression::sniff(&bytes).decoder(bytes.as_slice()).unwrap(), &mut tar).unwrap();
            assert_eq!(Digest::of(&tar).hex(), hex, "{name} is named by its diff ID");
        }
        names.push(name);
    }
    let layers = names.iter().filter(|n| n.ends_with("/layer.tar")).count();
    assert_eq!(layers, 3, "the shared layer once: {names:?}");
    assert_eq!(manifest.as_array().unwrap().len(), 2);
    assert_eq!(manifest[0]["Layers"][0], manifest[1]["Layers"][0], "both images list the shared layer");

    // One byte of the first archive's shared layer changed: its tar is not its diff ID.
    let mut bytes = std::fs::read(&first).unwrap();
    let at = bytes.windows(3000).position(|w| w.iter().all(|&b| b == 3)).unwrap();
    bytes[at] ^= 1;
    std::fs::write(&first, bytes).unwrap();
    let err = strata_transport::docker_archive::merge_docker_archives(&[first.clone(), second], std::io::sink(), 1).unwrap_err().to_string();
    assert!(err.contains(&first.display().to_string()) && err.contains("diff"), "{err}");
}
