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
}
