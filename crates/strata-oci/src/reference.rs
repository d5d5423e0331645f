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
//! Names and tags are checked here, before any work, against the reference grammar of
//! Docker's distribution library (`reference/regexp.go`, `normalize.go`): a bad tag is
//! refused up front, not after the layers are written or uploaded.
//!
//! The grammar is written by hand ([`split_reference`]) although oci-spec has a parser
//! (`oci_spec::distribution::Reference`), for two reasons measured here. Its port of Go's
//! regular expression keeps `\w` for tags, which in Rust's `regex` means every Unicode word
//! character (in Go, ASCII only): it accepts `web:café`, which Docker, podman and every
//! registry refuse. And that Unicode class, repeated 128 times, takes its regex 74 ms to
//! compile, paid by every command that names an image: more than a warm build's whole run.
//! A test holds the two parsers to the same answers on every ASCII reference it generates.

use std::fmt;
use std::path::PathBuf;

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
        let parts = split_reference(text).map_err(|why| format!("{text:?} is not a valid image name: {why}"))?;
        Ok(ImageName { name: parts.name.to_owned(), tag: parts.tag.unwrap_or("latest").to_owned() })
    }

    /// The name with a registry and `library/` as Docker completes it
    /// (`docker.io/library/web:1.4`): what containerd calls the image.
    pub fn full(&self) -> String {
        let (host, repository) = normalize(&self.name);
        format!("{host}/{repository}:{}", self.tag)
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
        let parts = split_reference(text).map_err(|why| format!("expected HOST/REPOSITORY[:TAG|@DIGEST]: {why}"))?;
        let digest = match parts.digest {
            Some(d) => Some(d.parse::<Digest>().map_err(|e| format!("expected HOST/REPOSITORY[:TAG|@DIGEST]: {e}"))?),
            None => None,
        };
        let tag = match (parts.tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        let (host, repository) = normalize(parts.name);
        Ok(RegistryRef { host, repository, tag, digest })
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

/// What a login applies to: a registry (`quay.io`, `127.0.0.1:5000`), or a namespace in it
/// (`quay.io/team`), as `podman login` names them. A `docker://` before it, or a URL
/// (`https://HOST/v1/`, Docker's key for Docker Hub), are allowed, as logins allow them;
/// Docker Hub is `docker.io` however it is spelt (`index.docker.io`, `registry-1.docker.io`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginScope {
    pub host: String,
    pub namespace: Option<String>,
}

impl LoginScope {
    pub fn parse(text: &str) -> Result<LoginScope, BadReference> {
        let bad = |why: String| BadReference { reference: text.to_owned(), why };
        let url = ["https://", "http://"].iter().find_map(|p| text.strip_prefix(p));
        let bare = url.or_else(|| text.strip_prefix("docker://")).unwrap_or(text).trim_end_matches('/');
        // A URL may end in the API's version, as Docker's key for Docker Hub does.
        let bare = if url.is_some() { bare.strip_suffix("/v1").or_else(|| bare.strip_suffix("/v2")).unwrap_or(bare) } else { bare };
        let (host, namespace) = match bare.split_once('/') {
            Some((host, path)) => (host, Some(path)),
            None => (bare, None),
        };
        if !is_host(host) {
            return Err(bad(format!("{host:?} is not a registry: expected HOST[:PORT][/NAMESPACE]")));
        }
        for component in namespace.iter().flat_map(|n| n.split('/')) {
            check_component(component).map_err(bad)?;
        }
        let host = if matches!(host, "index.docker.io" | "registry-1.docker.io") { "docker.io" } else { host };
        Ok(LoginScope { host: host.to_owned(), namespace: namespace.map(str::to_owned) })
    }
}

/// `HOST[/NAMESPACE]`: the key of the login in an auth file.
impl fmt::Display for LoginScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{}/{namespace}", self.host),
            None => write!(f, "{}", self.host),
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

/// The longest name (host and path) Docker accepts.
const NAME_MAX: usize = 255;

/// A reference cut into its parts, each checked, nothing completed: `NAME[:TAG][@DIGEST]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts<'a> {
    /// `[HOST[:PORT]/]PATH`, as written.
    name: &'a str,
    tag: Option<&'a str>,
    /// `ALGORITHM:HEX`, checked against the grammar only ([`Digest`] knows the algorithms).
    digest: Option<&'a str>,
}

/// Splits and checks a reference by Docker's grammar:
///
/// ```text
/// reference := name [":" tag] ["@" digest]
/// name      := [host [":" port] "/"] component ("/" component)*     at most 255 characters, completed
/// host      := label ("." label)* | "[" IPv6 "]"     label := [A-Za-z0-9] or [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
/// component := [a-z0-9]+ (separator [a-z0-9]+)*     separator := "." | "_" | "__" | "-"+
/// tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
/// digest    := algorithm ":" [0-9A-Fa-f]{32,}       algorithm := [A-Za-z][A-Za-z0-9]* ([-_+.][A-Za-z][A-Za-z0-9]*)*
/// ```
///
/// None of a name, a tag or an algorithm holds `@`, so a digest follows the first one; no
/// tag holds `:` or `/`, so a tag follows the last `:` that has no `/` after it.
fn split_reference(text: &str) -> Result<Parts<'_>, String> {
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    // Counted as Docker counts it (`ParseNormalizedNamed`): with the host and `library/` it
    // completes, so that a name accepted here is accepted again as it is printed.
    let (host, repository) = normalize(name);
    if host.len() + 1 + repository.len() > NAME_MAX {
        return Err(format!("the name is longer than {NAME_MAX} characters (as {host}/{repository})"));
    }
    let mut components = name.split('/').peekable();
    let first = components.next().unwrap_or_default();
    // The first of two or more components is a host where Docker takes it for one.
    if components.peek().is_some() && names_a_host(first) {
        if !is_host(first) {
            return Err(format!("{first:?} is not a registry host (HOST[:PORT])"));
        }
    } else {
        check_component(first)?;
    }
    components.try_for_each(check_component)?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').unwrap_or((digest, ""));
        let algorithm_ok = algorithm
            .split(['-', '_', '+', '.'])
            .all(|part| part.starts_with(|c: char| c.is_ascii_alphabetic()) && part.chars().all(|c| c.is_ascii_alphanumeric()));
        if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{digest:?} is not a digest (ALGORITHM:HEX, e.g. sha256:…)"));
        }
    }
    Ok(Parts { name, tag, digest })
}

/// `HOST[:PORT]`: labels of letters, digits and inner dashes joined by dots, or a bracketed
/// IPv6 address; the port is digits.
fn is_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (text, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok =
        |label: &str| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-') && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => !ipv6.is_empty() && ipv6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        None => host.split('.').all(label_ok),
    };
    port_ok && host_ok
}

/// A path component: runs of `a-z 0-9` joined by `.`, `_`, `__` or dashes.
fn check_component(component: &str) -> Result<(), String> {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let separators_ok =
        bytes.split(|&b| alphanumeric(b)).filter(|run| !run.is_empty()).all(|run| matches!(run, b"." | b"_" | b"__") || run.iter().all(|&b| b == b'-'));
    let ends_ok = bytes.first().copied().is_some_and(alphanumeric) && bytes.last().copied().is_some_and(alphanumeric);
    if separators_ok && ends_ok {
        Ok(())
    } else if bytes.iter().any(u8::is_ascii_uppercase) {
        Err(format!("{component:?}: a repository name must be lowercase"))
    } else {
        Err(format!("{component:?} is not a path component (a-z 0-9, joined by . _ __ or dashes)"))
    }
}

/// Whether Docker takes `first`, the first component of a name of two or more, for a
/// registry host (`splitDockerDomain`): it has a `.` or `:`, is `localhost` or has a capital.
fn names_a_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// Docker's completion of a checked name into host and repository: the first component if
/// it [`names_a_host`], else `docker.io`, whose one-component names live under `library/`.
fn normalize(name: &str) -> (String, String) {
    let (host, path) = match name.split_once('/') {
        Some((first, path)) if names_a_host(first) => (first, path),
        _ => ("docker.io", name),
    };
    let host = if host == "index.docker.io" { "docker.io" } else { host };
    if host == "docker.io" && !path.contains('/') {
        (host.to_owned(), format!("library/{path}"))
    } else {
        (host.to_owned(), path.to_owned())
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

    /// Cases from Docker's `reference_test.go` and `normalize_test.go`.
    #[test]
    fn dockers_cases() {
        let hex = "f".repeat(64);
        let parts = |text: &str| RegistryRef::parse(text).map(|r| (r.host, r.repository, r.tag, r.digest.map(|d| d.to_string()))).map_err(|e| e.to_string());
        let some = |s: &str| Some(s.to_owned());
        let ok = |host: &str, repository: &str, tag: Option<String>, digest: Option<String>| Ok((host.to_owned(), repository.to_owned(), tag, digest));
        assert_eq!(parts("test_com"), ok("docker.io", "library/test_com", some("latest"), None));
        assert_eq!(parts("test.com:tag"), ok("docker.io", "library/test.com", some("tag"), None));
        assert_eq!(parts("test.com:5000"), ok("docker.io", "library/test.com", some("5000"), None));
        assert_eq!(parts("test:5000/repo"), ok("test:5000", "repo", some("latest"), None));
        assert_eq!(parts(&format!("test:5000/repo@sha256:{hex}")), ok("test:5000", "repo", None, some(&format!("sha256:{hex}"))));
        assert_eq!(parts("lowercase:Uppercase"), ok("docker.io", "library/lowercase", some("Uppercase"), None));
        assert_eq!(parts("sub-dom1.foo.com/bar/baz/quux"), ok("sub-dom1.foo.com", "bar/baz/quux", some("latest"), None));
        assert_eq!(parts("foo/foo_bar.com:8080"), ok("docker.io", "foo/foo_bar.com", some("8080"), None));
        assert_eq!(parts("index.docker.io/web"), ok("docker.io", "library/web", some("latest"), None));
        assert_eq!(parts("[2001:db8::1]:5000/repo"), ok("[2001:db8::1]:5000", "repo", some("latest"), None));
        assert_eq!(parts("xn--n3h.com/myimage"), ok("xn--n3h.com", "myimage", some("latest"), None));
        assert_eq!(parts("a__b/c---d.e_f"), ok("docker.io", "a__b/c---d.e_f", some("latest"), None));
        // 256 characters with its host; and 247 that Docker completes to 265 (`docker.io/…`).
        let long = format!("reg.io/{}", "a".repeat(249));
        let short_but_completed = format!("{}/{}", "a".repeat(123), "a".repeat(123));
        for bad in [
            "",
            ":justtag",
            &format!("@sha256:{hex}"),
            &format!("validname@invaliddigest:{hex}"),
            "Uppercase:tag",
            "test:5000/Uppercase/lowercase:tag",
            "aa/asdf$$^/aa",
            "[fe80::1%eth0]:5000/repo",
            "a___b",
            "a/-b",
            "a/b.",
            "-host.com/a",
            "host-.com/a",
            "host:port/a",
            "a:b:c",
            &format!("a:{}", "t".repeat(129)),
            &long,
            &short_but_completed,
            "[7777776e]/8",
            "web:café",
            "wéb",
        ] {
            assert!(parts(bad).is_err(), "{bad:?} accepted: {:?}", parts(bad));
        }
        assert!(parts(&long[1..]).is_ok(), "255 characters are allowed");
        // What is accepted is accepted again as it is printed (found by fuzzing).
        let printed = RegistryRef::parse(&long[1..]).unwrap().to_string();
        assert!(RegistryRef::parse(printed.trim_start_matches("docker:")).is_ok(), "{printed}");
        assert!(parts(&format!("index.docker.io/o/{}", "a".repeat(240))).is_ok(), "258 characters, counted as docker.io/o/…, as Docker counts them");
        let err = ImageName::parse("web:café").unwrap_err();
        assert!(err.contains("\"café\" is not a valid tag"), "{err}");
        let err = check_name("Web").unwrap_err();
        assert!(err.contains("must be lowercase"), "{err}");
    }

    /// oci-spec's parser as the oracle: on ASCII references the two agree on every answer,
    /// except where oci-spec departs from Docker (a capitalised first component is a host).
    #[test]
    fn agrees_with_oci_spec() {
        let hex = "0123456789abcdef".repeat(4);
        let pieces = [
            "a",
            "b9",
            "app",
            "Up",
            "x-y",
            "localhost",
            "reg.io",
            "127.0.0.1",
            ":5000",
            ":",
            "/",
            "//",
            ".",
            "_",
            "__",
            "___",
            "-",
            "--",
            ":v1.0",
            ":Tag_1",
            ":-x",
            ":.x",
            "@",
            "@sha256:",
            &hex,
            "0f0f",
            "%",
            "é",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut valid, mut total) = (0, 0);
        for _ in 0..20_000 {
            let text: String = (0..1 + next(7)).map(|_| pieces[next(pieces.len())]).collect();
            let first = text.split('/').next().unwrap_or_default();
            let capital_host = text.contains('/') && first.bytes().any(|b| b.is_ascii_uppercase()) && !first.contains(['.', ':']);
            if capital_host || text.starts_with("//") {
                continue; // `//` is docker://'s, which RegistryRef::parse takes off
            }
            let ours = RegistryRef::parse(&text).map(|r| (r.host, r.repository, r.tag, r.digest.map(|d| d.to_string())));
            let theirs = oci_spec::distribution::Reference::try_from(text.as_str()).map(|r| {
                let tag = r.tag().filter(|_| r.digest().is_none() || text.split('@').next().unwrap_or_default().contains(':'));
                (r.registry().to_owned(), r.repository().to_owned(), tag.map(str::to_owned), r.digest().map(str::to_owned))
            });
            if text.is_ascii() {
                assert_eq!(ours.as_ref().ok(), theirs.as_ref().ok(), "{text:?}: ours {ours:?}, oci-spec {theirs:?}");
            } else {
                assert!(ours.is_err(), "{text:?} has a non-ASCII character but was accepted");
            }
            total += 1;
            valid += usize::from(ours.is_ok());
        }
        assert!(valid > total / 10 && valid < total * 9 / 10, "the generator should give both answers: {valid} of {total} valid");
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

    #[test]
    fn logins_name_a_registry_or_a_namespace_in_it() {
        let scope = |text: &str| LoginScope::parse(text).map(|s| s.to_string()).map_err(|e| e.why);
        assert_eq!(scope("quay.io"), Ok("quay.io".into()));
        assert_eq!(scope("https://quay.io/team/"), Ok("quay.io/team".into()));
        assert_eq!(scope("docker://127.0.0.1:5000"), Ok("127.0.0.1:5000".into()));
        assert_eq!(scope("https://index.docker.io/v1/"), Ok("docker.io".into()));
        assert_eq!(scope("registry-1.docker.io"), Ok("docker.io".into()));
        assert!(scope("quay.io/Team").unwrap_err().contains("lowercase"));
        assert!(scope("not a host").unwrap_err().contains("is not a registry"));
        assert!(scope("").is_err());
    }
}
