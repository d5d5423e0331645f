//! Layer compression. Every codec here is deterministic: the same tar gives the same bytes
//! (gzip with a zero mtime and no file name, zstd single-threaded at a fixed level), so a
//! compressed digest can be recorded once and trusted later.

use std::io::{self, Write};

use oci_spec::image::MediaType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// gzip -6, zstd -3: the usual defaults of the command-line tools.
const GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn layer_media_type(self) -> MediaType {
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }

    /// Wraps `out` in this codec's encoder.
    pub fn encoder<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(flate2::GzBuilder::new().mtime(0).write(out, flate2::Compression::new(GZIP_LEVEL))),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(out, ZSTD_LEVEL)?),
        })
    }
}

/// A writer that compresses into `W`; [`Encoder::finish`] ends the stream.
pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_are_deterministic_and_round_trip() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let once = |d: &[u8]| {
                let mut e = c.encoder(Vec::new()).unwrap();
                e.write_all(d).unwrap();
                e.finish().unwrap()
            };
            let (a, b) = (once(&data), once(&data));
            assert_eq!(a, b, "{c:?} is not deterministic");
            let back = match c {
                Compression::None => a,
                Compression::Gzip => {
                    let mut out = Vec::new();
                    io::copy(&mut flate2::read::GzDecoder::new(&a[..]), &mut out).unwrap();
                    out
                }
                Compression::Zstd => zstd::decode_all(&a[..]).unwrap(),
            };
            assert_eq!(back, data, "{c:?} does not round-trip");
        }
    }
}
