//! Software bills of materials that know Nix: every store path of an image is a package.
//!
//! An image's layers and the store paths each holds (strata's history comments, or the layers'
//! tars) are what [`Bom::of`] starts from. For every store path the local Nix store has, it
//! adds what Nix knows: the name and version its derivation was given (`pname`, `version`,
//! where the deriver is in the store), its NAR hash (the hash `nix-store --query --hash`
//! prints: as the store's database registered it, or where that cannot be read, as inside a
//! Nix build, computed here from the files, on every core), and its references (the
//! `DEPENDS_ON` graph). A store path the local store lacks keeps the name and version its
//! own name gives (Nix's `parseDrvName`), and no hash or dependencies: the document says
//! which. Layers without store paths (a base image's) are listed as such: nothing is guessed
//! about what they hold. Licences come only from those who know them: the Nix library passes
//! its roots' `meta` licences ([`Bom::licenses`]); the store does not keep `meta`.
//!
//! Two formats: SPDX 2.3 JSON ([`Bom::spdx`]) and CycloneDX 1.5 JSON ([`Bom::cyclonedx`]),
//! both byte-for-byte reproducible (times and identifiers come from the image).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{json, Value};
use strata_oci::digest::Digest;

use crate::closure::Closure;
use crate::store::{package_and_version, StorePath, STORE_DIR};

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("cannot hash store path {path}")]
    Read { path: String, source: std::io::Error },
}

/// One store path of the image, as a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// `<hash>-<name>`, below the store directory.
    pub base_name: String,
    pub name: String,
    pub version: Option<String>,
    /// Where the name and version come from: the derivation (`pname`/`version`), or the
    /// store path's name.
    pub from_derivation: bool,
    /// The NAR hash (SHA-256), where the local store has the path.
    pub nar_hash: Option<Digest>,
    /// The base names of the store paths it references (itself excluded), where known.
    pub references: Option<BTreeSet<String>>,
    /// The layer holding it (0-based) and that layer's digest.
    pub layer: (usize, Digest),
    /// An SPDX licence expression, where one was given.
    pub license: Option<String>,
}

/// An image's bill of materials.
#[derive(Debug, Clone)]
pub struct Bom {
    /// `name:tag`.
    pub image: String,
    /// The image's digest (its manifest's, else its config's): identifies the document.
    pub digest: Digest,
    /// The image's creation time (RFC 3339): the document's.
    pub created: String,
    pub packages: Vec<Package>,
    /// Layers (0-based, with their digests) that hold no store path.
    pub opaque_layers: Vec<(usize, Digest)>,
}

#[derive(Deserialize)]
struct PathInfo {
    path: Option<String>,
    deriver: Option<String>,
    #[serde(default)]
    references: Vec<String>,
    /// As the store registered it, where it was read from its database.
    #[serde(skip)]
    nar_hash: Option<Digest>,
}

impl Bom {
    /// The bill of materials of an image whose layers (bottom first, with their digests) hold
    /// these store paths (base names). References come from `closure` where given (inside a
    /// Nix build, the graph Nix exported), else from the local Nix store, which also names
    /// each path's derivation.
    pub fn of(image: String, digest: Digest, created: String, layers: &[(Digest, Vec<String>)], closure: Option<&Closure>) -> Result<Bom, SbomError> {
        let mut held = Vec::new();
        let mut opaque_layers = Vec::new();
        for (i, (layer_digest, paths)) in layers.iter().enumerate() {
            if paths.is_empty() {
                opaque_layers.push((i, *layer_digest));
            }
            held.extend(paths.iter().map(|p| (p.clone(), (i, *layer_digest))));
        }
        let local: Vec<String> = held.iter().map(|(b, _)| format!("{STORE_DIR}/{b}")).filter(|p| Path::new(p).exists()).collect();
        let infos = match closure {
            Some(closure) => local
                .iter()
                .filter_map(|p| {
                    let path = StorePath::containing(p).ok()?;
                    let references = closure.references(&path).iter().map(|r| r.to_string()).collect();
                    Some((p.clone(), PathInfo { path: None, deriver: None, references, nar_hash: None }))
                })
                .collect(),
            None => registered(&local).unwrap_or_else(|| path_infos(&local)),
        };
        // What the store did not say: hashed here, each path on a core of its own.
        let computed: BTreeMap<&String, Digest> = infos
            .iter()
            .filter(|(_, info)| info.nar_hash.is_none())
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(path, _)| Ok((path, crate::nixdb::nar_hash(Path::new(path)).map_err(|source| SbomError::Read { path: path.clone(), source })?.0)))
            .collect::<Result<_, SbomError>>()?;
        let names = derivation_names(infos.values().filter_map(|i| i.deriver.clone()).collect());
        let mut packages = Vec::new();
        for (base_name, layer) in held {
            let path = format!("{STORE_DIR}/{base_name}");
            let info = infos.get(&path);
            let name_part = base_name.split_once('-').map_or(base_name.as_str(), |(_, n)| n);
            let (parsed_name, parsed_version) = package_and_version(name_part);
            let from_drv = info.and_then(|i| i.deriver.as_ref()).and_then(|d| names.get(d));
            let (name, version, from_derivation) = match from_drv {
                Some((pname, version)) => (pname.clone(), version.clone(), true),
                None => (parsed_name.to_owned(), parsed_version.map(str::to_owned), false),
            };
            let nar_hash = info.and_then(|i| i.nar_hash).or_else(|| computed.get(&path).copied());
            let references =
                info.map(|i| i.references.iter().map(|r| r.trim_start_matches(&format!("{STORE_DIR}/")).to_owned()).filter(|r| *r != base_name).collect());
            packages.push(Package { base_name, name, version, from_derivation, nar_hash, references, layer, license: None });
        }
        packages.sort_by(|a, b| a.base_name.cmp(&b.base_name));
        Ok(Bom { image, digest, created, packages, opaque_layers })
    }

    /// Sets the licences of the packages whose store paths (base names) are given.
    pub fn licenses(&mut self, licenses: &BTreeMap<String, String>) {
        for p in &mut self.packages {
            if let Some(license) = licenses.get(&p.base_name) {
                p.license = Some(license.clone());
            }
        }
    }

    fn spdx_id(base_name: &str) -> String {
        let id: String = base_name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
        format!("SPDXRef-Package-{id}")
    }

    fn purl(p: &Package) -> String {
        let hash = p.base_name.split_once('-').map_or("", |(h, _)| h);
        let version = p.version.as_deref().map(|v| format!("@{}", percent(v))).unwrap_or_default();
        format!("pkg:nix/{}{version}?store_hash={hash}", percent(&p.name))
    }

    fn comment(&self) -> String {
        let mut parts = vec![format!("Every Nix store path of {} is a package.", self.image)];
        if !self.opaque_layers.is_empty() {
            let listed: Vec<String> = self.opaque_layers.iter().map(|(i, d)| format!("{} ({d})", i + 1)).collect();
            parts.push(format!("Layers {} hold no Nix store paths (a base image's): what they hold is not described here.", listed.join(", ")));
        }
        let unknown: Vec<&str> = self.packages.iter().filter(|p| p.nar_hash.is_none()).map(|p| p.base_name.as_str()).collect();
        if !unknown.is_empty() {
            parts.push(format!("Not in the local Nix store, so without hash or dependencies: {}.", unknown.join(", ")));
        }
        parts.join(" ")
    }

    /// SPDX 2.3, JSON.
    pub fn spdx(&self) -> Value {
        let (image_name, image_version) = self.image.rsplit_once(':').unwrap_or((&self.image, "latest"));
        let mut packages = vec![json!({
            "SPDXID": "SPDXRef-Image",
            "name": image_name,
            "versionInfo": image_version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": self.digest.hex() }],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        })];
        let mut relationships = vec![json!({ "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image" })];
        let present: BTreeSet<&str> = self.packages.iter().map(|p| p.base_name.as_str()).collect();
        for p in &self.packages {
            let id = Bom::spdx_id(&p.base_name);
            let mut package = json!({
                "SPDXID": id,
                "name": p.name,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": p.license.as_deref().unwrap_or("NOASSERTION"),
                "licenseDeclared": p.license.as_deref().unwrap_or("NOASSERTION"),
                "copyrightText": "NOASSERTION",
                "externalRefs": [{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": Bom::purl(p) }],
                "comment": format!(
                    "{STORE_DIR}/{} in layer {} ({}); name and version from {}",
                    p.base_name,
                    p.layer.0 + 1,
                    p.layer.1,
                    if p.from_derivation { "its derivation" } else { "the store path's name" }
                ),
            });
            if let Some(version) = &p.version {
                package["versionInfo"] = json!(version);
            }
            if let Some(hash) = &p.nar_hash {
                package["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": hash.hex() }]);
            }
            packages.push(package);
            relationships.push(json!({ "spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id }));
            for r in p.references.iter().flatten().filter(|r| present.contains(r.as_str())) {
                relationships.push(json!({ "spdxElementId": id, "relationshipType": "DEPENDS_ON", "relatedSpdxElement": Bom::spdx_id(r) }));
            }
        }
        json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": self.image,
            "documentNamespace": format!("https://strata.invalid/spdx/{}/{}", percent(&self.image), self.digest.hex()),
            "creationInfo": { "created": self.created, "creators": [format!("Tool: strata-{}", env!("CARGO_PKG_VERSION"))] },
            "comment": self.comment(),
            "packages": packages,
            "relationships": relationships,
        })
    }

    /// CycloneDX 1.5, JSON.
    pub fn cyclonedx(&self) -> Value {
        let (image_name, image_version) = self.image.rsplit_once(':').unwrap_or((&self.image, "latest"));
        let present: BTreeSet<&str> = self.packages.iter().map(|p| p.base_name.as_str()).collect();
        let components: Vec<Value> = self
            .packages
            .iter()
            .map(|p| {
                let mut c = json!({
                    "type": "library",
                    "bom-ref": p.base_name,
                    "name": p.name,
                    "purl": Bom::purl(p),
                    "properties": [
                        { "name": "nix:store_path", "value": format!("{STORE_DIR}/{}", p.base_name) },
                        { "name": "strata:layer", "value": (p.layer.0 + 1).to_string() },
                        { "name": "strata:layer_digest", "value": p.layer.1.to_string() },
                    ],
                });
                if let Some(version) = &p.version {
                    c["version"] = json!(version);
                }
                if let Some(hash) = &p.nar_hash {
                    c["hashes"] = json!([{ "alg": "SHA-256", "content": hash.hex() }]);
                }
                if let Some(license) = &p.license {
                    c["licenses"] = json!([{ "expression": license }]);
                }
                c
            })
            .collect();
        let mut dependencies = vec![json!({ "ref": "image", "dependsOn": self.packages.iter().map(|p| p.base_name.clone()).collect::<Vec<_>>() })];
        for p in &self.packages {
            let on: Vec<&String> = p.references.iter().flatten().filter(|r| present.contains(r.as_str())).collect();
            dependencies.push(json!({ "ref": p.base_name, "dependsOn": on }));
        }
        json!({
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "serialNumber": format!("urn:uuid:{}", uuid_of(&self.digest)),
            "version": 1,
            "metadata": {
                "timestamp": self.created,
                "tools": { "components": [{ "type": "application", "name": "strata", "version": env!("CARGO_PKG_VERSION") }] },
                "component": { "type": "container", "bom-ref": "image", "name": image_name, "version": image_version,
                               "hashes": [{ "alg": "SHA-256", "content": self.digest.hex() }] },
                "properties": [{ "name": "strata:note", "value": self.comment() }],
            },
            "components": components,
            "dependencies": dependencies,
        })
    }
}

/// A UUID (version 5's layout) made of a digest: the same image, the same serial number.
fn uuid_of(digest: &Digest) -> String {
    let hex = digest.hex();
    let mut b: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0)).collect();
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Percent-encodes what a purl or URI path segment may not hold as it is.
fn percent(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// What the local Nix database registered of `paths` (all in the store): deriver (where the
/// store has it), references and NAR hash by path; `None` if it cannot answer for them all.
fn registered(paths: &[String]) -> Option<BTreeMap<String, PathInfo>> {
    let store_paths: Vec<StorePath> = paths.iter().map(|p| StorePath::exactly(p)).collect::<Option<_>>()?;
    let registrations = crate::closure::registrations(&store_paths.iter().collect::<Vec<_>>())?;
    Some(
        registrations
            .into_iter()
            .map(|(path, r)| {
                let info = PathInfo {
                    path: None,
                    deriver: r.deriver.filter(|d| Path::new(d).exists()),
                    references: r.references.iter().map(|r| r.to_string()).collect(),
                    nar_hash: Some(r.nar_hash),
                };
                (path.to_string(), info)
            })
            .collect(),
    )
}

/// `nix path-info --json` of `paths` (all in the store): deriver and references by path.
/// Nothing where Nix cannot be asked: the packages then keep what their names say.
fn path_infos(paths: &[String]) -> BTreeMap<String, PathInfo> {
    if paths.is_empty() {
        return BTreeMap::new();
    }
    let args: Vec<&str> = ["path-info", "--json"].into_iter().chain(paths.iter().map(String::as_str)).collect();
    let Ok(output) = crate::nix::run(&args, None) else { return BTreeMap::new() };
    // Older Nix prints a list with `path`, newer an object keyed by path.
    let parsed: Vec<(String, PathInfo)> = match serde_json::from_slice::<Vec<PathInfo>>(&output.stdout) {
        Ok(list) => list.into_iter().filter_map(|i| Some((i.path.clone()?, i))).collect(),
        Err(_) => serde_json::from_slice::<BTreeMap<String, PathInfo>>(&output.stdout).map(|m| m.into_iter().collect()).unwrap_or_default(),
    };
    parsed
        .into_iter()
        .map(|(path, mut info)| {
            let full = |p: String| if p.starts_with('/') { p } else { format!("{STORE_DIR}/{p}") };
            info.references = info.references.into_iter().map(full).collect();
            info.deriver = info.deriver.filter(|d| Path::new(d).exists());
            (full(path), info)
        })
        .collect()
}

/// `pname` and `version` of the derivations `drvs` that set them (`nix show-derivation`).
fn derivation_names(drvs: Vec<String>) -> BTreeMap<String, (String, Option<String>)> {
    if drvs.is_empty() {
        return BTreeMap::new();
    }
    #[derive(Deserialize)]
    struct Drv {
        #[serde(default)]
        env: BTreeMap<String, String>,
    }
    let args: Vec<&str> = ["show-derivation"].into_iter().chain(drvs.iter().map(String::as_str)).collect();
    let Ok(output) = crate::nix::run(&args, None) else { return BTreeMap::new() };
    let drvs: BTreeMap<String, Drv> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    drvs.into_iter()
        .filter_map(|(path, drv)| {
            let pname = drv.env.get("pname")?.clone();
            let full = if path.starts_with('/') { path } else { format!("{STORE_DIR}/{path}") };
            Some((full, (pname, drv.env.get("version").cloned())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_well_formed_and_stable() {
        let digest = Digest::of(b"image");
        let uuid = uuid_of(&digest);
        assert_eq!(uuid, uuid_of(&digest));
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "5");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(percent("python3.11-pip 23"), "python3.11-pip%2023");
        assert_eq!(Bom::spdx_id("abc-hello-2.12+x"), "SPDXRef-Package-abc-hello-2.12-x");
    }
}
