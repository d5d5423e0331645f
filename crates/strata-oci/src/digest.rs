//! SHA-256 digests of the bytes that flow through a writer.
//!
//! Every blob strata writes is hashed while it is written, never in a second pass:
//! [`HashingWriter`] sits in the stream and counts and hashes what goes by.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use crate::sha256::Sha256;

/// A `sha256:` content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub(crate) [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The 64 hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a `sha256:<64 hex>` digest.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a sha256 digest")]
pub struct BadDigest(String);

impl FromStr for Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Digest, BadDigest> {
        let bad = || BadDigest(s.to_owned());
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(Digest(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        <String as serde::Deserialize>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Digest> for oci_spec::image::Digest {
    fn from(digest: Digest) -> oci_spec::image::Digest {
        digest.to_string().parse().expect("a sha256 digest is a valid OCI digest")
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = BadDigest;
    fn try_from(digest: &oci_spec::image::Digest) -> Result<Digest, BadDigest> {
        digest.to_string().parse()
    }
}

/// Passes bytes through to `inner`, hashing and counting them.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (self.hasher.finish(), self.written, self.inner)
    }

    /// How many bytes went through so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads through, hashing, never past `size` bytes; at the end, an error unless exactly
/// `size` bytes with digest `expected` went by.
pub struct VerifiedReader<R> {
    reader: R,
    hasher: HashingWriter<io::Sink>,
    expected: Digest,
    size: u64,
    path: PathBuf,
    /// The outcome of the check, once made: every later read repeats it.
    checked: Option<Result<(), String>>,
}

impl<R: Read> VerifiedReader<R> {
    pub fn new(reader: R, expected: Digest, size: u64, path: PathBuf) -> VerifiedReader<R> {
        VerifiedReader { reader, hasher: HashingWriter::new(io::sink()), expected, size, path, checked: None }
    }

    /// Reads what is left (for readers that stop before the end, such as decoders) and
    /// checks size and digest.
    pub fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(())
    }

    fn check(&mut self) -> io::Result<()> {
        let outcome = self.checked.get_or_insert_with(|| {
            let hasher = std::mem::replace(&mut self.hasher, HashingWriter::new(io::sink()));
            let (actual, len, _) = hasher.finish();
            if len != self.size {
                return Err(format!(
                    "{}: blob {} has {len} bytes where its descriptor says {}: the image is corrupt",
                    self.path.display(),
                    self.expected,
                    self.size
                ));
            }
            if actual != self.expected {
                return Err(format!("{}: blob {} has digest {actual}: the image is corrupt", self.path.display(), self.expected));
            }
            Ok(())
        });
        outcome.clone().map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.checked.is_some() {
            return self.check().map(|()| 0);
        }
        // One byte past the size is asked for, to notice a blob that is longer.
        let room = (self.size - self.hasher_len()).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.reader.read(&mut buf[..want])?;
        if n == 0 {
            self.check()?;
            return Ok(0);
        }
        io::Write::write_all(&mut self.hasher, &buf[..n])?;
        if self.hasher_len() > self.size {
            return self.check().map(|()| unreachable!("a blob longer than its size fails the check"));
        }
        Ok(n)
    }
}

impl<R> VerifiedReader<R> {
    fn hasher_len(&self) -> u64 {
        self.hasher.bytes_written()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_passes_through() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (digest, len, inner) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(len, 11);
        assert_eq!(digest, Digest::of(b"hello world"));
        assert_eq!(digest.to_string(), "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
        assert!("sha256:xyz".parse::<Digest>().is_err());
    }

    #[test]
    fn verified_reads_stop_at_the_size_and_check_it() {
        let data = b"hello world";
        let digest = Digest::of(data);
        let read = |bytes: &[u8], size: u64| {
            let mut r = VerifiedReader::new(bytes, digest, size, PathBuf::from("blob"));
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        };
        assert_eq!(read(data, 11).unwrap(), data);
        assert!(read(data, 5).unwrap_err().to_string().contains("has 6 bytes where its descriptor says 5"));
        assert!(read(data, 20).unwrap_err().to_string().contains("has 11 bytes"));
        let mut longer = data.to_vec();
        longer.extend(std::iter::repeat_n(0u8, 1 << 20));
        assert!(read(&longer, 11).is_err(), "a longer blob is refused after one byte more");
        let mut flipped = data.to_vec();
        flipped[0] ^= 1;
        assert!(read(&flipped, 11).unwrap_err().to_string().contains("corrupt"));
    }
}
