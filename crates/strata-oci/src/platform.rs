//! Platforms as OCI image indexes name them: `linux/amd64`, `linux/arm64/v8`.

use std::fmt;

/// An OS, an architecture and an optional variant, with OCI's (Go's) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Linux on `architecture`.
    pub fn linux(architecture: &str) -> Platform {
        Platform { os: "linux".to_owned(), architecture: architecture.to_owned(), variant: None }
    }

    /// Linux on the host's architecture.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::linux(architecture)
    }

    /// Whether an index entry's platform is this one. A variant is compared only when both
    /// name one, except that arm64's only variant, `v8`, is the same as none.
    pub fn matches(&self, other: &oci_spec::image::Platform) -> bool {
        let variant = |v: Option<&str>| match (self.architecture.as_str(), v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_owned),
        };
        let theirs = variant(other.variant().as_deref());
        let ours = variant(self.variant.as_deref());
        other.os().to_string() == self.os && other.architecture().to_string() == self.architecture && (ours.is_none() || theirs.is_none() || ours == theirs)
    }

    /// The platform an index entry names.
    pub fn from_oci(p: &oci_spec::image::Platform) -> Platform {
        Platform { os: p.os().to_string(), architecture: p.architecture().to_string(), variant: p.variant().clone() }
    }

    /// The platform an image's config names (`os`, `architecture`, `variant`).
    pub fn of_config(config: &oci_spec::image::ImageConfiguration) -> Platform {
        Platform { os: config.os().to_string(), architecture: config.architecture().to_string(), variant: config.variant().clone() }
    }

    /// As an index entry names it: arm64 with its variant, `v8`, as Docker and containerd
    /// write it.
    pub fn to_oci(&self) -> oci_spec::image::Platform {
        let mut p = oci_spec::image::Platform::default();
        p.set_os(self.os.as_str().into());
        p.set_architecture(self.architecture.as_str().into());
        let variant = match (self.architecture.as_str(), &self.variant) {
            ("arm64", None) => Some("v8".to_owned()),
            (_, v) => v.clone(),
        };
        p.set_variant(variant);
        p
    }

    /// Whether two platforms are the same (arm64 with or without `v8`).
    pub fn same_as(&self, other: &Platform) -> bool {
        self.matches(&other.to_oci()) && other.matches(&self.to_oci())
    }
}

/// A platform that is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a platform: expected OS/ARCH[/VARIANT], such as linux/amd64 or linux/arm64/v8")]
pub struct BadPlatform(pub String);

impl std::str::FromStr for Platform {
    type Err = BadPlatform;

    fn from_str(text: &str) -> Result<Platform, BadPlatform> {
        let part = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] if part(os) && part(arch) => Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None }),
            [os, arch, variant] if part(os) && part(arch) && part(variant) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: Some(variant.to_string()) })
            }
            _ => Err(BadPlatform(text.to_owned())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(os: &str, arch: &str, variant: Option<&str>) -> oci_spec::image::Platform {
        let mut p = oci_spec::image::Platform::default();
        p.set_os(os.into());
        p.set_architecture(arch.into());
        p.set_variant(variant.map(str::to_owned));
        p
    }

    #[test]
    fn platforms_match_as_indexes_mean_them() {
        let arm = Platform::linux("arm64");
        assert!(arm.matches(&oci("linux", "arm64", Some("v8"))) && arm.matches(&oci("linux", "arm64", None)));
        assert!(!arm.matches(&oci("linux", "amd64", None)) && !arm.matches(&oci("windows", "arm64", None)));
        let v7 = Platform { variant: Some("v7".into()), ..Platform::linux("arm") };
        assert!(v7.matches(&oci("linux", "arm", Some("v7"))) && !v7.matches(&oci("linux", "arm", Some("v6"))));
        assert_eq!(v7.to_string(), "linux/arm/v7");
    }

    #[test]
    fn platforms_parse_and_arm64_is_v8() {
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(arm.to_oci().variant().as_deref(), Some("v8"));
        assert!(arm.same_as(&"linux/arm64/v8".parse().unwrap()) && !arm.same_as(&Platform::linux("amd64")));
        for bad in ["linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
