//! Image references, one grammar for every place an image is read from or written to, in
//! skopeo's spelling:
//!
//! ```text
//! docker-archive:PATH          PATH `-` is standard output (as a destination)
//! oci:DIR[:REF]                REF: a TAG, or NAME:TAG (NAME may hold a registry host)
//! oci-archive:PATH[:REF]
//! docker://HOST/REPO[:TAG|@DIGEST]
//! docker-daemon:NAME:TAG       loaded with `docker load`
//! podman:NAME:TAG              loaded with `podman load`
//! ```
//!
//! As in containers/image, the path of `oci:` and `oci-archive:` ends at its first colon, so
//! that REF can be a whole name (`oci-archive:app.tar:registry.example:5000/app:1.4`).
//! Names and tags are checked here, before any work, against the Docker/OCI reference
//! grammar of oci-spec's [`Reference`]: a bad tag is refused up front, not after the layers
//! are written or uploaded.

use std::fmt;
use std::path::PathBuf;

use oci_spec::distribution::Reference;

use crate::digest::Digest;

/// Every transport, for messages that list them.
pub const TRANSPORTS: &str =
    "docker-archive:PATH, oci:DIR[:REF], oci-archive:PATH[:REF], dir:DIR, docker://HOST/REPO:TAG, docker-daemon:NAME:TAG or podman:NAME:TAG";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {why}")]
pub struct BadReference {
    pub reference: String,
    pub why: String,
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `None`: standard output.
    DockerArchive(Option<PathBuf>),
    Oci {
        dir: PathBuf,
        reference: Option<OciRef>,
    },
    OciArchive {
        path: PathBuf,
        reference: Option<OciRef>,
    },
    /// skopeo's directory format: `manifest.json`, `version`, and the blobs by digest.
    Dir(PathBuf),
    Registry(RegistryRef),
    Engine {
        engine: Engine,
        name: Option<ImageName>,
    },
}

/// A container engine that loads docker-archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    /// The engine's command.
    pub fn command(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// An image name with its tag, as engines name images (`web:1.4`,
/// `registry.example:5000/org/web:1.4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// The name as written, without a default registry added.
    pub name: String,
    pub tag: String,
}

impl ImageName {
    /// `NAME:TAG`, or `NAME` (tag `latest`), checked against the reference grammar.
    pub fn parse(text: &str) -> Result<ImageName, String> {
        if text.contains('@') {
            return Err("a digest cannot name an image to write".to_owned());
        }
        let parsed = Reference::try_from(text).map_err(|e| format!("{text:?} is not a valid image name: {e}"))?;
        // The grammar takes a last `:` as the tag's unless a `/` follows it (a port).
        let (name, tag) = match text.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (text, "latest"),
        };
        debug_assert_eq!(parsed.tag(), Some(tag));
        Ok(ImageName { name: name.to_owned(), tag: tag.to_owned() })
    }

    /// The name with a registry and `library/` as Docker completes it
    /// (`docker.io/library/web:1.4`): what containerd calls the image.
    pub fn full(&self) -> String {
        Reference::try_from(self.to_string()).map(|r| r.whole()).unwrap_or_else(|_| self.to_string())
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// Checks an image name without a tag (`web`, `ghcr.io/org/web`).
pub fn check_name(name: &str) -> Result<(), String> {
    match ImageName::parse(name) {
        Ok(parsed) if parsed.name == name => Ok(()),
        Ok(_) => Err(format!("{name:?} is an image name with a tag; give the tag as `tag`")),
        Err(e) => Err(e),
    }
}

/// Checks a tag: up to 128 of `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let valid = tag.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!("{tag:?} is not a valid tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)"))
    }
}

/// What follows the path of an `oci:` or `oci-archive:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciRef {
    /// A tag alone: `org.opencontainers.image.ref.name` is the tag, the image keeps its name.
    Tag(String),
    /// `NAME:TAG`: the engines that load the layout name the image so.
    Name(ImageName),
}

impl OciRef {
    fn parse(text: &str) -> Result<OciRef, String> {
        if text.contains([':', '/']) {
            return ImageName::parse(text).map(OciRef::Name);
        }
        check_tag(text).map(|()| OciRef::Tag(text.to_owned()))
    }

    /// The value of `org.opencontainers.image.ref.name`, and what finds the image again.
    pub fn ref_name(&self) -> String {
        match self {
            OciRef::Tag(tag) => tag.clone(),
            OciRef::Name(name) => name.to_string(),
        }
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ref_name())
    }
}

/// `HOST/REPOSITORY` plus a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// Parses what follows `docker://`, with Docker's defaults: no host means `docker.io`
    /// (and `library/` for one-component names), no tag means `latest`.
    pub fn parse(text: &str) -> Result<RegistryRef, String> {
        let text = text.trim_start_matches("//");
        let parsed = Reference::try_from(text).map_err(|e| format!("expected HOST/REPOSITORY[:TAG|@DIGEST]: {e}"))?;
        let digest = match parsed.digest() {
            Some(d) => Some(d.parse::<Digest>().map_err(|e| e.to_string())?),
            None => None,
        };
        // oci-spec adds `latest` to a reference with a digest alone; keep only a tag written.
        let tag = match (parsed.tag(), &digest) {
            (Some(tag), Some(_)) if !text.split('@').next().unwrap_or_default().ends_with(&format!(":{tag}")) => None,
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(RegistryRef { host: parsed.registry().to_owned(), repository: parsed.repository().to_owned(), tag, digest })
    }

    /// `HOST/REPOSITORY:TAG` (or `@DIGEST`): how podman and Docker name the image pulled.
    pub fn image_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}/{}:{tag}", self.host, self.repository),
            (None, Some(digest)) => format!("{}/{}@{digest}", self.host, self.repository),
            (None, None) => format!("{}/{}:latest", self.host, self.repository),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = BadReference;

    fn from_str(reference: &str) -> Result<ImageRef, BadReference> {
        let bad = |why: String| BadReference { reference: reference.to_owned(), why };
        let (transport, rest) = reference.split_once(':').ok_or_else(|| bad(format!("expected TRANSPORT:…, one of {TRANSPORTS}")))?;
        let engine = match transport {
            "docker-daemon" => Some(Engine::Docker),
            // skopeo's name for podman's storage.
            "podman" | "containers-storage" => Some(Engine::Podman),
            _ => None,
        };
        if let Some(engine) = engine {
            // As skopeo: the engines' references name a tag (a last `:` with no `/` after it).
            let has_tag = rest.rsplit_once(':').is_some_and(|(_, tag)| !tag.contains('/'));
            let name = match rest {
                "" => None,
                _ if has_tag => Some(ImageName::parse(rest).map_err(bad)?),
                _ => return Err(bad("expected NAME:TAG after the transport".to_owned())),
            };
            return Ok(ImageRef::Engine { engine, name });
        }
        if transport == "docker" {
            return RegistryRef::parse(rest).map(ImageRef::Registry).map_err(bad);
        }
        if rest.is_empty() {
            return Err(bad("the path is empty".to_owned()));
        }
        let path_and_ref = || -> Result<(PathBuf, Option<OciRef>), BadReference> {
            match rest.split_once(':') {
                Some(("", _)) => Err(bad("the path is empty".to_owned())),
                Some((path, r)) => Ok((PathBuf::from(path), Some(OciRef::parse(r).map_err(bad)?))),
                None => Ok((PathBuf::from(rest), None)),
            }
        };
        match transport {
            "docker-archive" if rest == "-" => Ok(ImageRef::DockerArchive(None)),
            "docker-archive" => Ok(ImageRef::DockerArchive(Some(PathBuf::from(rest)))),
            "oci" => path_and_ref().map(|(dir, reference)| ImageRef::Oci { dir, reference }),
            "oci-archive" => path_and_ref().map(|(path, reference)| ImageRef::OciArchive { path, reference }),
            "dir" if rest.is_empty() => Err(bad("the path is empty".to_owned())),
            "dir" => Ok(ImageRef::Dir(PathBuf::from(rest))),
            other => Err(bad(format!("unknown transport {other:?} (expected {TRANSPORTS})"))),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_ref = |r: &Option<OciRef>| r.as_ref().map(|r| format!(":{r}")).unwrap_or_default();
        match self {
            ImageRef::DockerArchive(None) => write!(f, "docker-archive:-"),
            ImageRef::DockerArchive(Some(p)) => write!(f, "docker-archive:{}", p.display()),
            ImageRef::Oci { dir, reference } => {
                write!(f, "oci:{}{}", dir.display(), with_ref(reference))
            }
            ImageRef::OciArchive { path, reference } => {
                write!(f, "oci-archive:{}{}", path.display(), with_ref(reference))
            }
            ImageRef::Dir(dir) => write!(f, "dir:{}", dir.display()),
            ImageRef::Registry(r) => write!(f, "{r}"),
            ImageRef::Engine { engine, name } => {
                let transport = match engine {
                    Engine::Docker => "docker-daemon",
                    Engine::Podman => "podman",
                };
                write!(f, "{transport}:{}", name.as_ref().map(ToString::to_string).unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_transport() {
        assert_eq!(p("docker-archive:-"), ImageRef::DockerArchive(None));
        assert_eq!(p("docker-archive:/tmp/a:b.tar"), ImageRef::DockerArchive(Some("/tmp/a:b.tar".into())));
        assert_eq!(p("oci:out"), ImageRef::Oci { dir: "out".into(), reference: None });
        assert_eq!(p("oci:/tmp/out:v1"), ImageRef::Oci { dir: "/tmp/out".into(), reference: Some(OciRef::Tag("v1".into())) });
        let full = p("oci-archive:x.tar:registry.example:5000/org/app:1.4");
        let ImageRef::OciArchive { reference: Some(OciRef::Name(name)), .. } = &full else { panic!("{full:?}") };
        assert_eq!((name.name.as_str(), name.tag.as_str()), ("registry.example:5000/org/app", "1.4"));
        assert_eq!(name.full(), "registry.example:5000/org/app:1.4");
        assert_eq!(ImageName::parse("web:1").unwrap().full(), "docker.io/library/web:1");
        assert_eq!(p("podman:"), ImageRef::Engine { engine: Engine::Podman, name: None });
        assert_eq!(p("docker-daemon:web:1.4").to_string(), "docker-daemon:web:1.4");
        assert_eq!(p("oci:/tmp/out:v1").to_string(), "oci:/tmp/out:v1");
        for bad in [
            "nowhere",
            "docker-archive:",
            "ftp:/x",
            "oci::v1",
            "oci:d:bad#tag",
            "oci-archive:x.tar:x/Upper:1",
            "docker-daemon:web",
            "docker-daemon:web:bad#tag",
            "docker://127.0.0.1:5000/x:bad#tag",
            "docker://registry.example/Web",
            "podman:a:b@c",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad} accepted");
        }
        let err = "ftp:/x".parse::<ImageRef>().unwrap_err().to_string();
        assert!(err.contains("docker://"), "every transport is listed: {err}");
    }

    #[test]
    fn registry_references_with_docker_defaults() {
        let r = RegistryRef::parse("127.0.0.1:5000/hello:t1").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", "hello", Some("t1")));
        let r = RegistryRef::parse("localhost/org/app").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str(), r.tag.as_deref()), ("localhost", "org/app", Some("latest")));
        let r = RegistryRef::parse("busybox").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str()), ("docker.io", "library/busybox"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = RegistryRef::parse(&format!("//registry.example/web@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.map(|d| d.to_string())), (None, Some(d.clone())));
        let r = RegistryRef::parse(&format!("registry.example/web:v2@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(RegistryRef::parse("registry.example:5000/web:1").unwrap().image_name(), "registry.example:5000/web:1");
    }

    #[test]
    fn names_and_tags() {
        for good in ["hello", "org/web-app", "a.b_c", "ghcr.io/org/app", "localhost:5000/app"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["Hello", "-x", "a//b", "", "app:1", "a@b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_tag("latest").is_ok() && check_tag("1.4.2_rc-1").is_ok());
        assert!(check_tag(".x").is_err() && check_tag("a:b").is_err() && check_tag("").is_err() && check_tag("a#b").is_err());
    }
}
