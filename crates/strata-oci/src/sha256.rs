//! SHA-256 that can hash two streams at once, for the digests strata computes in pairs: a
//! layer's tar and its compressed blob.
//!
//! Hashing is where a cold build spends the time compression leaves it: a compressed layer
//! is hashed twice (the diff ID of its tar, the digest of its blob). With the x86 SHA
//! extensions one stream runs at the latency of the round instruction (measured on this
//! project's machines, AMD Zen 3: 1.47 GB/s a core, as OpenSSL and the `sha2` crate run),
//! while the unit could take a second, independent stream in the gaps: two streams stepped
//! through their rounds together hash 2.2 GB/s a core, 1.5 times as much.
//! [`Sha256::update_pair`] does that; everything else, and every machine without the
//! extensions, goes through `sha2`'s own compression function. On Intel's cores (measured
//! here on a Xeon with AMX, Sapphire Rapids or later) the unit gains less from a second stream,
//! 1.75 GB/s a core for one stream against 2.0 for two.
//!
//! Either way, the rounds run as fast as the bytes arrive only if they are in the cache
//! already. Bytes that are not (a 2 MiB block compressed on another core, a big buffer read
//! earlier) came at 1.25 GB/s on that Xeon: its own prefetchers fetch too little ahead for a
//! reader this fast. So `compress` and `compress_pair` ask for the bytes 2 KiB ahead of
//! what they hash, 1 KiB at a time: 1.75 GB/s again (a pair, 2.0 against 1.77), and no cost
//! on bytes already cached.
//!
//! Written here because no well-kept crate hashes two streams together: `sha2` (and `ring`,
//! OpenSSL's `EVP` calls) take one stream at a time, and the multi-buffer crates hash batches
//! of whole short messages, not two long streams fed piece by piece. What is written here is
//! small: the buffering and padding of FIPS 180-4 around `sha2`'s compression, and the
//! two-stream rounds (`shani`). Tests hold every path to `sha2`'s digests.

use crate::digest::Digest;

/// A SHA-256 being computed: [`update`](Self::update) with bytes,
/// [`update_pair`](Self::update_pair) with the bytes of two streams at once,
/// [`finish`](Self::finish) for the digest.
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    /// The start of a block, `buffered` bytes long, waiting for the rest of it.
    buffer: [u8; 64],
    buffered: usize,
    /// Bytes hashed in all.
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Sha256 {
        const H0: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
        Sha256 { state: H0, buffer: [0; 64], buffered: 0, len: 0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        let rest = self.top_up(data);
        self.absorb(rest);
    }

    /// `a.update(data_a)` and `b.update(data_b)`, with the blocks both have hashed together.
    pub fn update_pair(a: &mut Sha256, data_a: &[u8], b: &mut Sha256, data_b: &[u8]) {
        a.len = a.len.wrapping_add(data_a.len() as u64);
        b.len = b.len.wrapping_add(data_b.len() as u64);
        let (rest_a, rest_b) = (a.top_up(data_a), b.top_up(data_b));
        let together = rest_a.len().min(rest_b.len()) / 64 * 64;
        compress_pair(&mut a.state, &rest_a[..together], &mut b.state, &rest_b[..together]);
        a.absorb(&rest_a[together..]);
        b.absorb(&rest_b[together..]);
    }

    /// The digest of everything hashed.
    pub fn finish(mut self) -> Digest {
        // FIPS 180-4, 5.1.1: a one bit, zeros up to 8 bytes short of a block's end, then the
        // message's length in bits (modulo 2^64), big-endian.
        let mut tail = [0u8; 128];
        tail[..self.buffered].copy_from_slice(&self.buffer[..self.buffered]);
        tail[self.buffered] = 0x80;
        let end = if self.buffered < 56 { 64 } else { 128 };
        tail[end - 8..end].copy_from_slice(&self.len.wrapping_mul(8).to_be_bytes());
        compress(&mut self.state, &tail[..end]);
        let mut digest = [0u8; 32];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        Digest(digest)
    }

    /// Completes the buffered start of a block from `data`, hashing it once whole; returns
    /// the rest of `data` (empty if the block is still not whole).
    fn top_up<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        if self.buffered == 0 {
            return data;
        }
        let n = (64 - self.buffered).min(data.len());
        self.buffer[self.buffered..self.buffered + n].copy_from_slice(&data[..n]);
        self.buffered += n;
        if self.buffered == 64 {
            let block = self.buffer;
            compress(&mut self.state, &block);
            self.buffered = 0;
        }
        &data[n..]
    }

    /// Hashes the whole blocks of `data` and buffers the rest; the buffer is empty, or
    /// `data` is.
    fn absorb(&mut self, data: &[u8]) {
        let whole = data.len() / 64 * 64;
        compress(&mut self.state, &data[..whole]);
        self.buffer[self.buffered..self.buffered + data.len() - whole].copy_from_slice(&data[whole..]);
        self.buffered += data.len() - whole;
    }
}

/// Bytes hashed between two requests to fetch what comes next, and how far ahead of them
/// that is (see the module's essay).
const PIECE: usize = 1024;
const AHEAD: usize = 2048;

/// Hashes `blocks` (whole 64-byte blocks) into `state`.
fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % 64, 0);
    for (start, piece) in (0..).step_by(PIECE).zip(blocks.chunks(PIECE)) {
        prefetch(blocks, start + AHEAD);
        sha2::block_api::compress256(state, piece.as_chunks::<64>().0);
    }
}

/// [`compress`] of two streams of as many blocks, together where the machine can.
fn compress_pair(a: &mut [u32; 8], blocks_a: &[u8], b: &mut [u32; 8], blocks_b: &[u8]) {
    debug_assert_eq!(blocks_a.len(), blocks_b.len());
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        for (start, (piece_a, piece_b)) in (0..).step_by(PIECE).zip(blocks_a.chunks(PIECE).zip(blocks_b.chunks(PIECE))) {
            prefetch(blocks_a, start + AHEAD);
            prefetch(blocks_b, start + AHEAD);
            // SAFETY: the CPU has the features `shani::compress_pair` is compiled for.
            unsafe { shani::compress_pair(a, piece_a, b, piece_b) };
        }
        return;
    }
    compress(a, blocks_a);
    compress(b, blocks_b);
}

/// Asks the CPU to bring `data[from..from + PIECE]` (what is of it) into its cache.
fn prefetch(data: &[u8], from: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in data.get(from..).unwrap_or_default().chunks(64).take(PIECE / 64) {
        // SAFETY: a prefetch reads nothing and cannot fault; the line is in `data` anyway.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, from);
}

/// Two streams' rounds on the SHA extensions, interleaved instruction by instruction.
///
/// The instructions keep the eight working words as two vectors, A B E F and C D G H;
/// `sha256rnds2` does two rounds, `sha256msg1`/`sha256msg2` extend the message schedule four
/// words at a time (Intel, "New Instructions Supporting the Secure Hash Algorithm on Intel
/// Architecture Processors", 2013).
#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::*;

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
        0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
        0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    pub fn available() -> bool {
        std::is_x86_feature_detected!("sha") && std::is_x86_feature_detected!("sse4.1") && std::is_x86_feature_detected!("ssse3")
    }

    #[derive(Clone, Copy)]
    struct Lanes {
        abef: __m128i,
        cdgh: __m128i,
    }

    #[inline(always)]
    unsafe fn load(state: &[u32; 8]) -> Lanes {
        let dcba = _mm_loadu_si128(state.as_ptr().cast());
        let hgfe = _mm_loadu_si128(state.as_ptr().add(4).cast());
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        Lanes { abef: _mm_alignr_epi8(cdab, efgh, 8), cdgh: _mm_blend_epi16(efgh, cdab, 0xF0) }
    }

    #[inline(always)]
    unsafe fn store(lanes: Lanes, state: &mut [u32; 8]) {
        let feba = _mm_shuffle_epi32(lanes.abef, 0x1B);
        let dchg = _mm_shuffle_epi32(lanes.cdgh, 0xB1);
        _mm_storeu_si128(state.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128(state.as_mut_ptr().add(4).cast(), _mm_alignr_epi8(dchg, feba, 8));
    }

    /// A block's sixteen words, big-endian, four to a vector.
    #[inline(always)]
    unsafe fn message(block: &[u8]) -> [__m128i; 4] {
        let big_endian = _mm_set_epi64x(0x0c0d0e0f_08090a0b, 0x04050607_00010203);
        [0, 1, 2, 3].map(|i| _mm_shuffle_epi8(_mm_loadu_si128(block.as_ptr().add(16 * i).cast()), big_endian))
    }

    /// Words 4g..4g+4 of the schedule (g >= 4) in place of words 4g-16..4g-12, from the four
    /// vectors before them, held in `w` at g % 4 (the oldest) to (g + 3) % 4.
    #[inline(always)]
    unsafe fn schedule(w: &mut [__m128i; 4], g: usize) {
        let (oldest, older, old, last) = (w[g % 4], w[(g + 1) % 4], w[(g + 2) % 4], w[(g + 3) % 4]);
        let sum = _mm_add_epi32(_mm_sha256msg1_epu32(oldest, older), _mm_alignr_epi8(last, old, 4));
        w[g % 4] = _mm_sha256msg2_epu32(sum, last);
    }

    /// Rounds 4g..4g+4.
    #[inline(always)]
    unsafe fn rounds(lanes: &mut Lanes, words: __m128i, g: usize) {
        let k = _mm_add_epi32(words, _mm_loadu_si128(K.as_ptr().add(4 * g).cast()));
        lanes.cdgh = _mm_sha256rnds2_epu32(lanes.cdgh, lanes.abef, k);
        lanes.abef = _mm_sha256rnds2_epu32(lanes.abef, lanes.cdgh, _mm_shuffle_epi32(k, 0x0E));
    }

    /// # Safety
    /// The CPU must have SHA, SSE4.1 and SSSE3 ([`available`]).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress_pair(a: &mut [u32; 8], blocks_a: &[u8], b: &mut [u32; 8], blocks_b: &[u8]) {
        let (mut la, mut lb) = (load(a), load(b));
        for (block_a, block_b) in blocks_a.chunks_exact(64).zip(blocks_b.chunks_exact(64)) {
            let (before_a, before_b) = (la, lb);
            let (mut wa, mut wb) = (message(block_a), message(block_b));
            for g in 0..16 {
                if g >= 4 {
                    schedule(&mut wa, g);
                    schedule(&mut wb, g);
                }
                rounds(&mut la, wa[g % 4], g);
                rounds(&mut lb, wb[g % 4], g);
            }
            la = Lanes { abef: _mm_add_epi32(la.abef, before_a.abef), cdgh: _mm_add_epi32(la.cdgh, before_a.cdgh) };
            lb = Lanes { abef: _mm_add_epi32(lb.abef, before_b.abef), cdgh: _mm_add_epi32(lb.cdgh, before_b.cdgh) };
        }
        store(la, a);
        store(lb, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn bytes(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect()
    }

    fn reference(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    #[test]
    fn one_stream_gives_sha2s_digest_at_every_length_around_the_padding() {
        for len in (0..200).chain([1000, 65_536, 65_537]) {
            let data = bytes(len, len as u32);
            let mut h = Sha256::new();
            h.update(&data);
            assert_eq!(h.finish().0, reference(&data), "{len} bytes at once");
            let mut h = Sha256::new();
            for piece in data.chunks(7) {
                h.update(piece);
            }
            assert_eq!(h.finish().0, reference(&data), "{len} bytes, 7 at a time");
        }
    }

    /// Pairs of streams of different lengths, fed in pieces of different sizes (so that each
    /// side is sometimes mid-block, sometimes done first), with single updates between.
    #[test]
    fn two_streams_together_give_each_its_own_digest() {
        for (len_a, len_b, piece_a, piece_b) in
            [(0, 0, 1, 1), (64, 64, 64, 64), (10_000, 3_333, 1000, 333), (3_333, 10_000, 333, 1000), (100_000, 100_000, 4096, 4095), (5, 70_000, 1, 7000)]
        {
            let (data_a, data_b) = (bytes(len_a, 1), bytes(len_b, 2));
            let (mut a, mut b) = (Sha256::new(), Sha256::new());
            let mut pieces_a = data_a.chunks(piece_a);
            let mut pieces_b = data_b.chunks(piece_b);
            for round in 0.. {
                let (pa, pb) = (pieces_a.next(), pieces_b.next());
                if pa.is_none() && pb.is_none() {
                    break;
                }
                let (pa, pb) = (pa.unwrap_or_default(), pb.unwrap_or_default());
                if round % 5 == 4 {
                    a.update(pa);
                    b.update(pb);
                } else {
                    Sha256::update_pair(&mut a, pa, &mut b, pb);
                }
            }
            assert_eq!(a.finish().0, reference(&data_a), "stream a, {len_a} bytes by {piece_a}");
            assert_eq!(b.finish().0, reference(&data_b), "stream b, {len_b} bytes by {piece_b}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_two_stream_rounds_match_sha2s_rounds() {
        if !shani::available() {
            eprintln!("no SHA extensions here: compress_pair falls back to sha2, tested above");
            return;
        }
        let (data_a, data_b) = (bytes(64 * 100, 3), bytes(64 * 100, 4));
        let (mut a, mut b) = (Sha256::new().state, Sha256::new().state);
        // SAFETY: checked just above.
        unsafe { shani::compress_pair(&mut a, &data_a, &mut b, &data_b) };
        let (mut ra, mut rb) = (Sha256::new().state, Sha256::new().state);
        compress(&mut ra, &data_a);
        compress(&mut rb, &data_b);
        assert_eq!((a, b), (ra, rb));
    }
}
