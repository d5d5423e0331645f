//! The transports on synthetic images, no daemon, no Nix: what each writer writes, its
//! reader reads back with the same digests; re-encoding keeps diff IDs; corrupt blobs fail.

use std::io::Write;

use oci_spec::image::ImageConfiguration;
use strata_oci::compress::Compression;
use strata_oci::digest::Digest;
use strata_oci::image::{ConfigRecipe, Image, LayerTar, Recode, TarError};
use strata_oci::platform::Platform;
use strata_oci::reference::ImageRef;
use strata_transport::registry::RegistryOptions;
use strata_transport::{open_image, write_image};

/// A built layer whose tar is given whole.
#[derive(Clone)]
struct TarBytes {
    tar: Vec<u8>,
    comment: String,
}

impl TarBytes {
    /// A tar of one file `name` holding `data`.
    fn file(name: &str, data: &[u8]) -> TarBytes {
        let mut tar = Vec::new();
        let header = strata_oci::ustar::header(name.as_bytes(), tar::EntryType::Regular, 0o644, 0, 0, data.len() as u64, 1, b"");
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
        TarBytes { tar, comment: format!("file {name}") }
    }
}

impl LayerTar for TarBytes {
    fn tar_len(&self) -> u64 {
        self.tar.len() as u64
    }
    fn write_tar<W: Write>(&self, out: &mut W) -> Result<(), TarError> {
        out.write_all(&self.tar).map_err(TarError::Write)
    }
    fn fingerprint(&self) -> Digest {
        Digest::of(&self.tar)
    }
    fn comment(&self) -> &str {
        &self.comment
    }
}

fn image(layers: Vec<TarBytes>) -> Image<TarBytes> {
    let mut config = ImageConfiguration::default();
    config.set_created(Some("1970-01-01T00:00:01Z".to_owned()));
    Image {
        name: "synthetic".to_owned(),
        tag: Some("t".to_owned()),
        mtime: 1,
        config: ConfigRecipe::Built(Box::new(config)),
        base: None,
        layers,
        recode: None,
        recorded: None,
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
    let registry = RegistryOptions::default();
    let expected = original.uncompressed_digests().unwrap();
    for (dest, codec) in [
        (format!("docker-archive:{d}/a.tar"), Compression::None),
        (format!("docker-archive:{d}/gz.tar"), Compression::Gzip),
        (format!("oci:{d}/layout:t"), Compression::Gzip),
        (format!("oci:{d}/zstd:t"), Compression::Zstd),
        (format!("oci-archive:{d}/b.tar:t"), Compression::None),
    ] {
        let written = write_image(&original, &reference(&dest), codec, &registry).unwrap();
        let source = open_image(&reference(&dest), &Platform::host(), &registry).unwrap();
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
        let copied = write_image(&copy, &reference(&again), Compression::None, &registry).unwrap();
        assert_eq!(copied.config_digest, written.config_digest, "{dest}");
        let reread = open_image(&reference(&again), &Platform::host(), &registry).unwrap();
        assert!(reread.layers.iter().all(|l| Compression::of_media_type(&l.media_type) == Some(Compression::Zstd)));
        assert_eq!(reread.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>(), expected.diff_ids);
    }
}

#[test]
fn a_corrupt_blob_fails_the_copy_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let registry = RegistryOptions::default();
    let layout = reference(&format!("oci:{d}/layout:t"));
    write_image(&image(vec![TarBytes::file("a", b"first")]), &layout, Compression::None, &registry).unwrap();
    let source = open_image(&layout, &Platform::host(), &registry).unwrap();
    let blob = dir.path().join("layout/blobs/sha256").join(source.layers[0].digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let copy: Image<TarBytes> = Image::copy_of(source, None);
    let err = write_image(&copy, &reference(&format!("docker-archive:{d}/out.tar")), Compression::None, &registry).unwrap_err();
    assert!(format!("{err:?}").contains("corrupt"), "{err:?}");
    assert!(!dir.path().join("out.tar").exists());
}

#[test]
fn recorded_digests_are_checked_before_anything_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let registry = RegistryOptions::default();
    let mut original = image(vec![TarBytes::file("a", b"first")]);
    let mut recorded = original.uncompressed_digests().unwrap();
    recorded.config = Digest::of(b"something else");
    original.recorded = Some(recorded);
    for dest in [format!("docker-archive:{d}/x.tar"), format!("oci:{d}/layout:t"), format!("oci-archive:{d}/y.tar")] {
        let err = write_image(&original, &reference(&dest), Compression::None, &registry).unwrap_err();
        assert!(err.to_string().contains("was recorded"), "{dest}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}
