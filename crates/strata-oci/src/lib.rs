//! strata's image model, and nothing else: no Nix, no network, no I/O runtime.
//! What every other crate of strata speaks:
//!
//! - [`digest`]: `sha256:` digests, and a writer that hashes what goes through it;
//!   [`sha256`]: SHA-256 that hashes two streams at once (a tar and its compressed blob);
//! - [`reference`](crate::reference): the one grammar of image references for every
//!   transport (`docker-archive:`, `oci:`, `oci-archive:`, `docker://`, `docker-daemon:`,
//!   `podman:`), Docker's grammar of names, tags and digests;
//! - [`platform`]: OS, architecture and variant, as OCI indexes name them;
//! - [`compress`]: the layer codecs and their media types; [`parallel`]: compression in
//!   blocks on every core, as gzip ([`pgzip`]) and as zstd ([`pzstd`]);
//! - [`manifest`]: the one record of a layer blob, and the manifest that lists them;
//! - [`canonical`]: JSON written canonically, so equal images have equal digests;
//! - [`image`]: an image, its config and its layers, built or copied;
//! - [`time`]: RFC 3339 as configs hold it; [`ustar`]: the headers of the tars strata writes;
//! - [`bounded`]: reads of whole inputs that stop at a bound.
//!
//! The rest of strata depends on this crate; it depends on no strata crate.

pub mod bounded;
pub mod canonical;
pub mod compress;
pub mod deflate_tail;
pub mod digest;
pub mod image;
pub mod manifest;
pub mod parallel;
pub mod pgzip;
pub mod platform;
pub mod pzstd;
pub mod reference;
pub mod sha256;
pub mod time;
pub mod ustar;
