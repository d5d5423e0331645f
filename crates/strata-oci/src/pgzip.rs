//! gzip on every core, with the same bytes whatever the number of cores.
//!
//! The input is cut into blocks of a fixed size ([`BLOCK`]). Each block is deflated on its
//! own (on rayon's pool) by libdeflate, and its stream mended so that the next one can follow
//! it (see [`crate::deflate_tail`]: its final block marked not final, then an empty stored
//! block, as a sync flush ends); the deflate streams of all blocks, written in order, form
//! one deflate stream, which the last block ends. The gzip member around it carries the
//! CRC-32 of the whole input, combined from the blocks' CRCs. This is pigz's scheme; as with
//! pigz, a block's bytes depend only on its input, never on which thread compressed it or
//! when, so the output is the same on one core or on many. It is one gzip member, which every
//! gzip reader reads whole (several members would be faster to make, and some readers stop
//! after the first).
//!
//! libdeflate rather than zlib: measured on layers of binaries and of Python sources, its
//! level 5 (strata's, see [`crate::compress`]) deflates about 1.6 times as fast as zlib-rs at
//! level 6, and 2–3% smaller. It takes no preset dictionary, so a block does not see the
//! 32 KiB before it: a small loss at 1 MiB blocks (held under 1% against one stream by the
//! test below).
//!
//! Written here rather than with the `gzp` crate: gzp runs a thread pool of its own per
//! stream, and strata compresses several layers at once into one pool sized to the cores.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{mpsc, Arc, LazyLock};

/// The input of one job: big enough that a job's overhead (finding its stream's end, a
/// thread hand-off, a cold start without the data before it) is noise, small enough that a
/// layer of a few MiB uses every core.
pub const BLOCK: usize = 1 << 20;

/// The threads that deflate blocks, one per core, shared by every stream of the process.
/// Only `deflate_block` runs there, which never waits on anything: a writer blocking on its
/// jobs can never be one of the threads that would run them.
static POOL: LazyLock<Arc<rayon::ThreadPool>> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("strata-gzip-{i}")).build();
    Arc::new(pool.expect("cannot start the compression threads"))
});

type Job = mpsc::Receiver<io::Result<(Vec<u8>, crc32fast::Hasher)>>;

/// A writer that gzips into `W` on rayon's pool; [`ParallelGzip::finish`] ends the stream.
pub struct ParallelGzip<W: Write> {
    out: W,
    pool: Arc<rayon::ThreadPool>,
    level: libdeflater::CompressionLvl,
    block: Vec<u8>,
    /// Jobs handed to the pool, oldest first; written to `out` in this order.
    pending: VecDeque<Job>,
    in_flight: usize,
    crc: crc32fast::Hasher,
    length: u64,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(out: W, level: u32) -> io::Result<ParallelGzip<W>> {
        Self::with_pool(out, level, POOL.clone())
    }

    /// Compresses on `pool`, which must not be the thread writing.
    pub fn with_pool(mut out: W, level: u32, pool: Arc<rayon::ThreadPool>) -> io::Result<ParallelGzip<W>> {
        // ID1 ID2 CM FLG, MTIME 0, XFL 0, OS 255 (unknown): nothing of the machine or the time.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
        let level = libdeflater::CompressionLvl::new(level as i32).map_err(|_| io::Error::other(format!("gzip has no level {level}")))?;
        let in_flight = 2 * pool.current_num_threads().max(1);
        Ok(ParallelGzip { out, pool, level, block: Vec::with_capacity(BLOCK), pending: VecDeque::new(), in_flight, crc: crc32fast::Hasher::new(), length: 0 })
    }

    /// Hands the current block to the pool, `last` if it ends the stream.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        while self.pending.len() >= self.in_flight {
            self.write_oldest()?;
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(if last { 0 } else { BLOCK }));
        let level = self.level;
        let (done, job) = mpsc::sync_channel(1);
        self.pool.spawn(move || {
            let _ = done.send(deflate_block(&block, level, last));
        });
        self.pending.push_back(job);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let job = self.pending.pop_front().expect("a pending job");
        let (deflated, crc) = job.recv().map_err(|_| io::Error::other("a compression job was lost"))??;
        self.crc.combine(&crc);
        self.out.write_all(&deflated)
    }

    /// Compresses what is left, writes the gzip trailer and returns `out`.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&(self.length as u32).to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        self.length += n as u64;
        if self.block.len() == BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Writes out the blocks already compressed; the block being filled stays (a flush never
    /// changes the bytes of the stream).
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One block as raw deflate, ready for the next block's stream to follow (or, `last`,
/// ending the stream); with the block's CRC-32.
fn deflate_block(block: &[u8], level: libdeflater::CompressionLvl, last: bool) -> io::Result<(Vec<u8>, crc32fast::Hasher)> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(block);
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(libdeflater::CompressionLvl, libdeflater::Compressor)>> = const { std::cell::RefCell::new(None) };
    }
    let mut out = COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((l, c)) if *l == level => c,
            _ => &mut slot.insert((level, libdeflater::Compressor::new(level))).1,
        };
        let mut out = vec![0; compressor.deflate_compress_bound(block.len())];
        let n = compressor.deflate_compress(block, &mut out).map_err(io::Error::other)?;
        out.truncate(n);
        io::Result::Ok(out)
    })?;
    if !last {
        crate::deflate_tail::continue_after(&mut out)?;
    }
    Ok((out, crc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivially: words from a small vocabulary, in a varying order.
        let words = ["layer", "store", "nix", "closure", "digest", "blob", "tar", "image", "/nix/store/", "\n"];
        let mut state = 0x2545_f491_u32;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            out.extend_from_slice(words[state as usize % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    fn gzip_in_pool(data: &[u8], threads: usize, chunk: usize) -> Vec<u8> {
        let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap());
        let mut gz = ParallelGzip::with_pool(Vec::new(), 6, pool).unwrap();
        for piece in data.chunks(chunk) {
            gz.write_all(piece).unwrap();
        }
        gz.finish().unwrap()
    }

    #[test]
    fn same_bytes_on_one_thread_and_many_and_any_write_sizes() {
        for len in [0, 1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345] {
            let data = sample(len);
            let one = gzip_in_pool(&data, 1, 65_536);
            for (threads, chunk) in [(2, 7_919), (4, BLOCK), (8, 1)] {
                if len > 2 * BLOCK && chunk == 1 {
                    continue; // byte by byte is slow and shows nothing more
                }
                assert_eq!(one, gzip_in_pool(&data, threads, chunk), "{len} bytes on {threads} threads, written {chunk} at a time");
            }
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{len} bytes do not round-trip");
        }
    }

    /// Cutting the input into blocks costs next to nothing against libdeflate on all of it.
    #[test]
    fn compresses_about_as_well_as_one_stream() {
        let data = sample(4 * BLOCK);
        let parallel = gzip_in_pool(&data, 2, BLOCK).len();
        let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut single = vec![0; compressor.gzip_compress_bound(data.len())];
        let single = compressor.gzip_compress(&data, &mut single).unwrap();
        assert!(parallel as f64 <= single as f64 * 1.01, "parallel {parallel} bytes, one stream {single}");
    }
}
