//! zstd in blocks, for [`crate::parallel`]: the same bytes on one core or on many.
//!
//! Each block of the input is compressed as a zstd frame of its own (with its content size,
//! without a checksum: the layer's digests check it), and the frames are written one after
//! the other. A zstd stream may hold any number of frames, and its decoders read them all
//! as one content (RFC 8878, section 3.1). zstd's own `pzstd` cuts its input into frames
//! the same way, and containers' `zstd:chunked` layers are many frames too.
//!
//! Why not zstd's own multi-threaded mode, whose output is also the same for any number of
//! workers: its threads belong to one stream, where strata compresses several layers at once
//! on one pool; and it costs more. Each of its jobs first reloads the end of the previous one
//! to match against, and jobs must be small here to bound memory (several layers are
//! compressed at once). Measured on the benchmark's closure (1.07 GB of binaries, level 3):
//! multi-threaded with 1 MiB jobs, 350.1 MB in 5.9 s of CPU; frames of 2 MiB, 350.7 MB in
//! 4.8 s; frames of 4 MiB, 348.1 MB in 4.9 s, for twice the memory.

use std::cell::RefCell;
use std::io;

use crate::parallel::BlockFormat;

/// zstd frames of [`BlockFormat::BLOCK`] at a level: a [`BlockFormat`] for
/// [`crate::parallel::ParallelWriter`].
#[derive(Clone, Copy)]
pub struct Zstd {
    level: i32,
}

impl Zstd {
    pub fn new(level: i32) -> io::Result<Zstd> {
        if !zstd::compression_level_range().contains(&level) {
            return Err(io::Error::other(format!("zstd has no level {level}")));
        }
        Ok(Zstd { level })
    }
}

impl BlockFormat for Zstd {
    /// Part of the output's definition (see `Compression::id`).
    const BLOCK: usize = 2 << 20;
    type Check = ();

    fn header(self) -> &'static [u8] {
        &[]
    }

    fn compress(self, block: &[u8], _last: bool) -> io::Result<(Vec<u8>, ())> {
        thread_local! {
            static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
        }
        COMPRESSOR.with_borrow_mut(|slot| {
            let compressor = match slot {
                Some((level, c)) if *level == self.level => c,
                _ => {
                    let mut c = zstd::bulk::Compressor::new(self.level)?;
                    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false))?;
                    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
                    &mut slot.insert((self.level, c)).1
                }
            };
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(block.len()));
            compressor.compress_to_buffer(block, &mut out)?;
            Ok((out, ()))
        })
    }

    fn combine(_: &mut (), _: ()) {}

    fn trailer(self, _: (), _: u64) -> Vec<u8> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::testing::{on_pool, same_bytes_everywhere, sample};

    fn decode(compressed: &[u8]) -> Vec<u8> {
        zstd::stream::decode_all(compressed).unwrap()
    }

    #[test]
    fn same_bytes_on_one_thread_and_many_and_any_write_sizes() {
        same_bytes_everywhere(Zstd::new(3).unwrap(), decode);
    }

    /// Frames cost little against one stream over the whole input.
    #[test]
    fn compresses_about_as_well_as_one_stream() {
        let data = sample(4 * Zstd::BLOCK);
        let frames = on_pool(Zstd::new(3).unwrap(), &data, 2, 100_000);
        let single = zstd::bulk::compress(&data, 3).unwrap();
        assert!(frames.len() as f64 <= single.len() as f64 * 1.01, "frames {} bytes, one stream {}", frames.len(), single.len());
        assert_eq!(decode(&frames), data);
    }

    #[test]
    fn one_frame_a_block_each_with_its_content_size() {
        let data = sample(2 * Zstd::BLOCK + 1);
        let frames = on_pool(Zstd::new(3).unwrap(), &data, 2, 65_536);
        let mut rest = &frames[..];
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            sizes.push(zstd::zstd_safe::get_frame_content_size(rest).unwrap().unwrap());
            rest = &rest[zstd::zstd_safe::find_frame_compressed_size(rest).unwrap()..];
        }
        assert_eq!(sizes, [Zstd::BLOCK as u64, Zstd::BLOCK as u64, 1]);
    }

    #[test]
    fn levels_outside_zstds_are_refused() {
        assert!(Zstd::new(3).is_ok());
        assert!(Zstd::new(1000).is_err());
    }
}
