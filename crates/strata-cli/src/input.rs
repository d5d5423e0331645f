//! What an IMAGE argument names, and the image read from it: a spec (`.toml`/`.json`), a
//! stream script or description from the Nix library, a file or directory holding an image
//! (docker-archive, compressed or not; OCI layout), or a source reference (`oci:DIR:TAG`,
//! `docker://…`). `strata run ./result` works whatever the Nix library built.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use strata_build::assemble::{assemble, previous_layers, ClosureSource};
use strata_build::description::IndexDescription;
use strata_build::layer::LayerRecipe;
use strata_build::spec::ValidSpec;
use strata_oci::compress::Compression;
use strata_oci::image::{Image, Previous};
use strata_oci::platform::Platform;
use strata_oci::reference::{ImageRef, RegistryRef, TRANSPORTS};
use strata_transport::registry::RegistryOptions;
use strata_transport::{choose_platform, default_compression, open_image, write_image, Transport, Written};

use crate::nix_builder;
use crate::sign::TrustedKey;

pub enum Input {
    Spec {
        path: PathBuf,
        closure: ClosureSource,
        /// An earlier release of the image, whose layers are kept where they still hold.
        previous: Option<PreviousArg>,
    },
    /// A stream script (`#!… strata stream`) or a description (its JSON with `digests`).
    Script(PathBuf),
    /// An index description (the Nix library's `buildImageIndex`): one image a platform.
    Index(PathBuf),
    Source(ImageRef),
}

/// An image ready to write (with the digests it must have, if it was described).
pub struct Loaded(pub Image<LayerRecipe>);

/// `--previous IMAGE`, and the key that may vouch for it (`--previous-key`).
#[derive(Clone)]
pub struct PreviousArg {
    pub image: ImageRef,
    pub key: Option<Arc<TrustedKey>>,
}

impl PreviousArg {
    pub fn new(image: &str, key: Option<&Path>) -> Result<PreviousArg> {
        let image: ImageRef = image.parse()?;
        if key.is_some() && !matches!(image, ImageRef::Registry(_)) {
            bail!("--previous-key: signatures are verified in registries, and --previous {image} is not in one (docker://…)");
        }
        Ok(PreviousArg { image, key: key.map(TrustedKey::load).transpose()?.map(Arc::new) })
    }

    /// The release for `platform`: read by the digest its signature was verified for, and
    /// then believed (`signed`), where a key is given and a signature made with it is found;
    /// else read as it is and checked blob by blob (a signature that does not verify only
    /// costs that time, and says so).
    fn open(&self, platform: &Platform, registry: &RegistryOptions) -> Result<Previous> {
        if let (ImageRef::Registry(reference), Some(key)) = (&self.image, &self.key) {
            match key.signed_digest(reference, registry) {
                Ok(digest) => {
                    tracing::info!("--previous {reference}: {digest} is signed by {}: its blobs are believed", key.path.display());
                    let signed = ImageRef::Registry(RegistryRef { tag: None, digest: Some(digest), ..reference.clone() });
                    return Ok(Previous { release: open_image(&signed, platform, registry)?, signed: true });
                }
                Err(e) => tracing::warn!("--previous-key: {e:#}; each of the release's blobs is checked before it is taken"),
            }
        }
        Ok(Previous { release: open_image(&self.image, platform, registry)?, signed: false })
    }
}

/// The image `spec` describes: its base image (`from_image`) read for the spec's own
/// platform, then assembled over it, keeping the layers of `previous` that still hold.
/// Where build and transport meet.
pub fn plan(spec: ValidSpec, closure: &ClosureSource, registry: &RegistryOptions, previous: Option<&PreviousArg>) -> Result<Image<LayerRecipe>> {
    let platform = Platform::linux(&spec.architecture);
    let base = match &spec.from_image {
        Some(reference) => Some(open_image(reference, &platform, registry).with_context(|| format!("from_image {reference}"))?),
        None => None,
    };
    // As `docker build --cache-from`: an earlier image that cannot be read (the first
    // release has none) only means a plan from scratch.
    let previous = match previous.map(|p| (p, p.open(&platform, registry))) {
        Some((_, Ok(previous))) => Some(previous),
        Some((arg, Err(e))) => {
            tracing::warn!("--previous {}: {e:#}; planning the layers from scratch", arg.image);
            None
        }
        None => None,
    };
    let kept = previous.as_ref().map(|p| previous_layers(&p.release.config)).unwrap_or_default();
    let mut image = assemble(spec, closure, base, &kept)?;
    image.previous = previous;
    Ok(image)
}

impl Input {
    /// Reads `arg` as a reference (`TRANSPORT:…`) or a path, looking into files to tell a
    /// stream script or description from an archive.
    pub fn resolve(arg: &str) -> Result<Input> {
        let path = Path::new(arg);
        let transport = arg.split_once(':').map(|(t, _)| t);
        if !path.exists()
            && matches!(transport, Some("docker-archive" | "oci" | "oci-archive" | "dir" | "docker" | "docker-daemon" | "podman" | "containers-storage"))
        {
            return Ok(Input::Source(arg.parse()?));
        }
        if path.is_dir() {
            if path.join("index.json").is_file() {
                return Ok(Input::Source(ImageRef::Oci { dir: path.to_owned(), reference: None }));
            }
            bail!("{arg}: a directory that is not an OCI image layout (no index.json)");
        }
        let mut head = [0u8; 512];
        let read = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .with_context(|| format!("{arg}: not an image reference ({TRANSPORTS}) nor a readable file"))?;
        let head = &head[..read];
        if head.starts_with(b"{") && String::from_utf8_lossy(head).contains("\"strata_index\"") {
            return Ok(Input::Index(path.to_owned()));
        }
        if head.starts_with(b"#!") || (head.starts_with(b"{") && String::from_utf8_lossy(head).contains("\"closure\"")) {
            return Ok(Input::Script(path.to_owned()));
        }
        if arg.ends_with(".toml") || arg.ends_with(".json") {
            return Ok(Input::Spec { path: path.to_owned(), closure: ClosureSource::Nix, previous: None });
        }
        // A tar has "ustar" at offset 257; compressed files are read through their codec.
        if Compression::sniff(head) != Compression::None || head.get(257..262) == Some(b"ustar") {
            return Ok(Input::Source(ImageRef::DockerArchive(Some(path.to_owned()))));
        }
        bail!("{arg}: not a spec (.toml, .json), a strata stream script or description, nor a docker-archive")
    }

    /// Every image it names: an index description's, named and tagged as the index; else the
    /// one image (for the host's platform where a source holds several).
    pub fn open_all(self, registry: &RegistryOptions) -> Result<Vec<Image<LayerRecipe>>> {
        let Input::Index(path) = self else { return Ok(vec![self.open(registry, None)?.0]) };
        let index = IndexDescription::read(&path)?.with_context(|| format!("{}: not an index description", path.display()))?;
        let tag = index.tag_of(&path);
        let mut images = Vec::new();
        for file in &index.images {
            let Loaded(mut image) =
                Input::resolve(&file.to_string_lossy())?.open(registry, None).with_context(|| format!("{}: image {}", path.display(), file.display()))?;
            (image.name, image.tag) = (index.name.clone(), Some(tag.clone()));
            images.push(image);
        }
        Ok(images)
    }

    /// Whether it is an index description.
    pub fn is_index(&self) -> bool {
        matches!(self, Input::Index(_))
    }

    /// The image flake output `DIR#NAME` builds (see [`crate::flake`]).
    pub fn flake(reference: &str) -> Result<Input> {
        Input::resolve(&crate::flake::build(reference)?.to_string_lossy())
    }

    /// The image, for `platform` where a source holds several (default: the host's); a spec
    /// or description is for its own platform, which must then be `platform`.
    pub fn open(self, registry: &RegistryOptions, platform: Option<&Platform>) -> Result<Loaded> {
        let (image, what) = match self {
            Input::Spec { path, closure, previous } => {
                let spec = ValidSpec::load(&path)?;
                let image = plan(spec, &closure, registry, previous.as_ref()).with_context(|| format!("spec {}", path.display()))?;
                (image, path.display().to_string())
            }
            Input::Script(path) => (nix_builder::read_stream_script(&path)?, path.display().to_string()),
            Input::Index(path) => {
                let images = Input::Index(path.clone()).open_all(registry)?;
                let platform = platform.cloned().unwrap_or_else(Platform::host);
                let chosen = choose_platform(&images, &platform).with_context(|| path.display().to_string())?;
                return Ok(Loaded(chosen.clone()));
            }
            Input::Source(reference) => {
                let source = open_image(&reference, platform.unwrap_or(&Platform::host()), registry).with_context(|| format!("reading {reference}"))?;
                return Ok(Loaded(Image::copy_of(source, None)));
            }
        };
        if let Some(platform) = platform.filter(|p| !image.platform().same_as(p)) {
            bail!("{what} is an image for {}, not {platform}", image.platform());
        }
        Ok(Loaded(image))
    }
}

impl Loaded {
    /// Writes the image to `dest`. A described image is written as described (in the codec
    /// it recorded where the destination compresses layers, uncompressed elsewhere) unless
    /// `compression` says otherwise, and the sink checks its recorded digests before it
    /// commits anything.
    pub fn write(&self, dest: &ImageRef, compression: Option<Compression>, cx: &Transport) -> Result<Written> {
        let image = &self.0;
        let compression = compression.unwrap_or_else(|| match (default_compression(dest), &image.recorded) {
            (Compression::None, _) => Compression::None,
            (_, Some(recorded)) => recorded.codec(),
            (default, None) => default,
        });
        tracing::info!("{} layers planned", image.layers.len());
        let written = write_image(image, dest, compression, cx).with_context(|| format!("writing {dest}"))?;
        let digest = written.manifest_digest.unwrap_or(written.config_digest);
        eprintln!("strata: wrote {} to {dest} ({} layers, {digest})", written.reference, image.layer_sources().len());
        Ok(written)
    }
}
