//! Compression on every core, with the same bytes whatever the number of cores.
//!
//! The input is cut into blocks of a fixed size, each block is compressed on its own, and the
//! compressed blocks are written in input order. A block's bytes depend only on its input and
//! on whether it is the last, never on which thread compressed it or when, so the output is
//! the same on one core or on many: a compressed digest can be recorded once and trusted on
//! any machine. A [`BlockFormat`] says how one block is compressed and what goes around the
//! blocks: gzip joins them into one deflate stream as pigz does ([`crate::pgzip`]); zstd
//! writes each as a frame of its own, as zstd's own `pzstd` does ([`crate::pzstd`]).
//!
//! Every stream of the process compresses on one pool, a thread per core: strata compresses
//! several layers at once, and they share the cores rather than each starting threads of its
//! own (as the `gzp` crate, or zstd's multi-threaded mode, would). Only a format's
//! `compress` runs on the pool, and it never waits on anything, so a writer blocking on its
//! jobs can never be one of the threads that would run them.
//!
//! Memory is bounded: the streams open at once share two blocks a core handed to the pool
//! (each holding its input and its output), each stream at least two; and each fills one
//! more. How many a stream may hand over changes when it is compressed, never its bytes.
//!
//! A layer's writer ([`ParallelWriter::hashing`]) also hashes what goes in (the tar: the
//! diff ID) and what comes out (the blob), when a block is written out: its input and its
//! output then hash together ([`Sha256::update_pair`]), for a third less time than one after
//! the other.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, LazyLock};

use crate::digest::Digest;
use crate::sha256::Sha256;

/// How one block is compressed, and what goes before and after the blocks.
pub trait BlockFormat: Copy + Send + 'static {
    /// Input bytes in every block but the last, which holds what is left (at least one byte,
    /// unless the whole input is empty).
    const BLOCK: usize;
    /// What a block tells the end of the stream (gzip: its CRC-32); summed over the stream.
    type Check: Default + Send + 'static;

    /// What the stream starts with.
    fn header(self) -> &'static [u8];
    /// One block compressed, `last` if it ends the stream; with its check.
    fn compress(self, block: &[u8], last: bool) -> io::Result<(Vec<u8>, Self::Check)>;
    /// Adds a block's check to the stream's, blocks in input order.
    fn combine(total: &mut Self::Check, block: Self::Check);
    /// What the stream ends with, from the sum of the checks and the input's length.
    fn trailer(self, total: Self::Check, length: u64) -> Vec<u8>;
}

/// The threads that compress blocks, one per core, shared by every stream of the process.
static POOL: LazyLock<Arc<rayon::ThreadPool>> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("strata-compress-{i}")).build();
    Arc::new(pool.expect("cannot start the compression threads"))
});

/// The streams open in the process, which share the pool's slots (see [`StreamShare`]).
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// A stream's count in [`STREAMS`], while it lives.
struct StreamShare;

impl StreamShare {
    fn new() -> StreamShare {
        STREAMS.fetch_add(1, Ordering::Relaxed);
        StreamShare
    }

    /// How many blocks a stream may have handed to a pool of `threads`: two a core, shared
    /// among the streams open now, at least two.
    fn in_flight(&self, threads: usize) -> usize {
        (2 * threads).div_ceil(STREAMS.load(Ordering::Relaxed).max(1)).max(2)
    }
}

impl Drop for StreamShare {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A block handed to the pool: its output and check, and its input back.
type Job<C> = mpsc::Receiver<(io::Result<(Vec<u8>, C)>, Vec<u8>)>;

/// A writer that compresses into `W` in `F`'s blocks on the pool; [`finish`](Self::finish)
/// ends the stream.
pub struct ParallelWriter<W: Write, F: BlockFormat> {
    out: W,
    format: F,
    pool: Arc<rayon::ThreadPool>,
    /// The block being filled. A full block waits here until more input comes, so that the
    /// last block is never empty (unless the input is).
    block: Vec<u8>,
    /// Jobs handed to the pool, oldest first; written to `out` in this order.
    pending: VecDeque<Job<F::Check>>,
    share: StreamShare,
    check: F::Check,
    length: u64,
    /// The input's and the output's digests, if asked for.
    digests: Option<Box<StreamDigests>>,
    /// A block's input buffer, written out and free to fill again.
    spare: Option<Vec<u8>>,
}

/// What [`ParallelWriter::finish_hashed`] tells of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    pub input: Digest,
    pub output: Digest,
    pub output_len: u64,
}

struct StreamDigests {
    input: Sha256,
    output: Sha256,
    output_len: u64,
}

impl StreamDigests {
    fn output(&mut self, bytes: &[u8]) {
        self.output.update(bytes);
        self.output_len += bytes.len() as u64;
    }
}

impl<W: Write, F: BlockFormat> ParallelWriter<W, F> {
    pub fn new(out: W, format: F) -> io::Result<Self> {
        Self::with_pool(out, format, POOL.clone())
    }

    /// Like [`new`](Self::new), hashing the input and the output: see
    /// [`finish_hashed`](Self::finish_hashed).
    pub fn hashing(out: W, format: F) -> io::Result<Self> {
        Self::on_pool(out, format, POOL.clone(), true)
    }

    /// Compresses on `pool`, which must not be the thread writing.
    pub fn with_pool(out: W, format: F, pool: Arc<rayon::ThreadPool>) -> io::Result<Self> {
        Self::on_pool(out, format, pool, false)
    }

    fn on_pool(mut out: W, format: F, pool: Arc<rayon::ThreadPool>, hashing: bool) -> io::Result<Self> {
        out.write_all(format.header())?;
        let mut digests = hashing.then(|| Box::new(StreamDigests { input: Sha256::new(), output: Sha256::new(), output_len: 0 }));
        if let Some(d) = &mut digests {
            d.output(format.header());
        }
        Ok(ParallelWriter {
            out,
            format,
            pool,
            block: Vec::with_capacity(F::BLOCK),
            pending: VecDeque::new(),
            share: StreamShare::new(),
            check: F::Check::default(),
            length: 0,
            digests,
            spare: None,
        })
    }

    /// Hands the current block to the pool, `last` if it ends the stream.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        while self.pending.len() >= self.share.in_flight(self.pool.current_num_threads()) {
            self.write_oldest()?;
        }
        let next = if last { Vec::new() } else { self.spare.take().unwrap_or_else(|| Vec::with_capacity(F::BLOCK)) };
        let block = std::mem::replace(&mut self.block, next);
        let format = self.format;
        let (done, job) = mpsc::sync_channel(1);
        self.pool.spawn(move || {
            let _ = done.send((format.compress(&block, last), block));
        });
        self.pending.push_back(job);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let job = self.pending.pop_front().expect("a pending job");
        let (compressed, mut input) = job.recv().map_err(|_| io::Error::other("a compression job was lost"))?;
        let (compressed, check) = compressed?;
        F::combine(&mut self.check, check);
        if let Some(d) = &mut self.digests {
            Sha256::update_pair(&mut d.input, &input, &mut d.output, &compressed);
            d.output_len += compressed.len() as u64;
        }
        input.clear();
        self.spare = Some(input);
        self.out.write_all(&compressed)
    }

    /// Compresses what is left, writes the stream's end and returns `out`.
    pub fn finish(self) -> io::Result<W> {
        Ok(self.finish_hashed()?.0)
    }

    /// [`finish`](Self::finish), with the digests of the input and the output (and its length)
    /// if the writer was made [`hashing`](Self::hashing).
    pub fn finish_hashed(mut self) -> io::Result<(W, Option<Hashed>)> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let trailer = self.format.trailer(std::mem::take(&mut self.check), self.length);
        self.out.write_all(&trailer)?;
        let hashed = self.digests.take().map(|mut d| {
            d.output(&trailer);
            Hashed { input: d.input.finish(), output: d.output.finish(), output_len: d.output_len }
        });
        Ok((self.out, hashed))
    }
}

impl<W: Write, F: BlockFormat> Write for ParallelWriter<W, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.block.len() == F::BLOCK {
            self.submit(false)?;
        }
        let n = buf.len().min(F::BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        self.length += n as u64;
        Ok(n)
    }

    /// Writes out the blocks already compressed; the block being filled stays (a flush never
    /// changes the bytes of the stream).
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Helpers for the formats' tests: one sample, and a stream written on a pool of its own.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Compressible but not trivially: words from a small vocabulary, in a varying order.
    pub fn sample(len: usize) -> Vec<u8> {
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

    /// `data` compressed in `format` on `threads` threads, written `chunk` bytes at a time.
    pub fn on_pool<F: BlockFormat>(format: F, data: &[u8], threads: usize, chunk: usize) -> Vec<u8> {
        let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap());
        let mut writer = ParallelWriter::with_pool(Vec::new(), format, pool).unwrap();
        for piece in data.chunks(chunk) {
            writer.write_all(piece).unwrap();
        }
        writer.finish().unwrap()
    }

    /// The same bytes on one thread and on many, however the input is written; `decode`
    /// gives the input back. Lengths around the block size, and several blocks.
    pub fn same_bytes_everywhere<F: BlockFormat>(format: F, decode: impl Fn(&[u8]) -> Vec<u8>) {
        for len in [0, 1, 100, F::BLOCK - 1, F::BLOCK, F::BLOCK + 1, 2 * F::BLOCK, 3 * F::BLOCK + 12_345] {
            let data = sample(len);
            let one = on_pool(format, &data, 1, 65_536);
            for (threads, chunk) in [(2, 7_919), (4, F::BLOCK), (8, 1)] {
                if len > F::BLOCK && chunk == 1 {
                    continue; // byte by byte is slow and shows nothing more
                }
                assert_eq!(one, on_pool(format, &data, threads, chunk), "{len} bytes on {threads} threads, written {chunk} at a time");
            }
            assert_eq!(decode(&one), data, "{len} bytes do not round-trip");
        }
    }
}
