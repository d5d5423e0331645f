//! Turning a finished raw deflate stream into one that another can follow.
//!
//! [`crate::pgzip`] compresses each block of a layer with libdeflate, which only makes whole
//! streams: its last deflate block is marked final, and the stream ends there. To write the
//! blocks' streams one after the other as one stream (what pigz gets from zlib's sync
//! flush), every stream but the last is mended here: its final block is marked not final,
//! and an empty stored block after it brings the stream to a byte boundary, exactly the
//! bytes a sync flush ends with.
//!
//! Where the final block starts and where it ends is only known by reading the stream:
//! [`final_block`] walks it block by block (RFC 1951), decoding every Huffman code without
//! producing the data. It reads only what libdeflate just wrote in this process, but treats it
//! like any input: every read is bounded and anything that is not a well-formed stream is an
//! error, never a panic. Written here because no crate reports bit positions of deflate blocks.

use std::io;

/// Marks the final block of the raw deflate stream `stream` as not final and appends an empty
/// stored block (`00 00 ff ff` after alignment), so that another deflate stream may follow.
pub fn continue_after(stream: &mut Vec<u8>) -> io::Result<()> {
    let FinalBlock { header_bit, end_bit } = final_block(stream)?;
    stream[header_bit / 8] &= !(1u8 << (header_bit % 8));
    stream.truncate(end_bit.div_ceil(8));
    if end_bit % 8 != 0 {
        // The bits after the end-of-block code are padding: zero them.
        *stream.last_mut().expect("a stream of at least one bit") &= (1u8 << (end_bit % 8)) - 1;
    }
    // The stored block's 3 header bits (not final, type 00) are zeros: in the padding of the
    // last byte if there is room, else in one more byte; then LEN = 0 and NLEN = !0.
    let room = (8 - end_bit % 8) % 8;
    if room < 3 {
        stream.push(0);
    }
    stream.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    Ok(())
}

/// The bit offsets (from the first bit of the stream, least significant bit of a byte first)
/// of the final block's header and of the bit after its end.
#[derive(Debug, PartialEq, Eq)]
pub struct FinalBlock {
    pub header_bit: usize,
    pub end_bit: usize,
}

fn malformed(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not a well-formed deflate stream: {why}"))
}

/// Walks the blocks of the raw deflate stream `stream` up to its final block.
pub fn final_block(stream: &[u8]) -> io::Result<FinalBlock> {
    let mut bits = Bits { data: stream, pos: 0 };
    loop {
        let header_bit = bits.pos;
        let last = bits.take(1)? == 1;
        match bits.take(2)? {
            0 => {
                bits.pos = bits.pos.div_ceil(8) * 8;
                let len = bits.take(16)?;
                if bits.take(16)? != !len & 0xffff {
                    return Err(malformed("a stored block's length and its complement differ"));
                }
                bits.skip(len as usize * 8)?;
            }
            1 => skip_codes(&mut bits, &fixed_tables())?,
            2 => {
                let tables = dynamic_tables(&mut bits)?;
                skip_codes(&mut bits, &tables)?;
            }
            _ => return Err(malformed("block type 3")),
        }
        if last {
            return Ok(FinalBlock { header_bit, end_bit: bits.pos });
        }
    }
}

/// A bit reader over a byte slice, least significant bit first.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    /// The next `n` (at most 32) bits, least significant first; past the end, an error.
    fn take(&mut self, n: usize) -> io::Result<u32> {
        let value = self.peek(n);
        self.skip(n)?;
        Ok(value)
    }

    /// The next `n` (at most 32) bits without consuming them; bits past the end read as 0.
    fn peek(&self, n: usize) -> u32 {
        peek_at(self.data, self.pos, n)
    }

    fn skip(&mut self, n: usize) -> io::Result<()> {
        if self.pos + n > self.data.len() * 8 {
            return Err(malformed("it ends in the middle of a block"));
        }
        self.pos += n;
        Ok(())
    }
}

/// A canonical Huffman code as lookup tables: a first table indexed by the next
/// [`FIRST_BITS`] bits of the stream (small enough to stay in the L1 cache), and for the
/// longer codes, second tables indexed by the bits after those. An entry packs what a skip
/// needs: the symbol's kind (bits 24..), how many bits to skip for it, its code and any extra
/// bits that follow (bits 16..24; 0 for bits that start no code), and the symbol (bits 0..16),
/// or, of kind [`SECOND`], where its second table starts.
struct Table {
    /// The longest code's length.
    bits: usize,
    entries: Vec<u32>,
}

const FIRST_BITS: usize = 10;
const LITERAL: u32 = 0;
const LENGTH: u32 = 1;
const END_OF_BLOCK: u32 = 2;
const OTHER: u32 = 3;
const SECOND: u32 = 4;

impl Table {
    /// The code of symbols with these code lengths (0: symbol not used), as RFC 1951 3.2.2
    /// assigns it; `kind_and_extra` gives each symbol's kind and extra bits.
    fn new(lengths: &[u8], kind_and_extra: impl Fn(usize) -> (u32, u32)) -> io::Result<Table> {
        let bits = usize::from(lengths.iter().copied().max().unwrap_or(0).max(1));
        if bits > 15 {
            return Err(malformed("a code longer than 15 bits"));
        }
        let mut count = [0u32; 16];
        for &l in lengths {
            count[usize::from(l)] += 1;
        }
        count[0] = 0;
        let mut next = [0u32; 16];
        let mut code = 0u32;
        for len in 1..16 {
            code = (code + count[len - 1]) << 1;
            next[len] = code;
        }
        let first = bits.min(FIRST_BITS);
        let second = bits - first;
        let mut entries = vec![0u32; 1 << first];
        for (symbol, &len) in lengths.iter().enumerate() {
            let len = usize::from(len);
            if len == 0 {
                continue;
            }
            let code = next[len];
            next[len] += 1;
            if code >= 1 << len {
                return Err(malformed("an over-subscribed code"));
            }
            let (kind, extra) = kind_and_extra(symbol);
            let entry = kind << 24 | (len as u32 + extra) << 16 | symbol as u32;
            // Codes are sent most significant bit first; tables are indexed by stream order.
            let reversed = (code.reverse_bits() >> (32 - len)) as usize;
            if len <= first {
                for fill in 0..1usize << (first - len) {
                    entries[reversed | (fill << len)] = entry;
                }
                continue;
            }
            let prefix = reversed & ((1 << first) - 1);
            if entries[prefix] == 0 {
                entries[prefix] = SECOND << 24 | 1 << 16 | entries.len() as u32;
                entries.resize(entries.len() + (1 << second), 0);
            }
            let start = (entries[prefix] & 0xffff) as usize;
            for fill in 0..1usize << (bits - len) {
                entries[start + ((reversed >> first) | (fill << (len - first)))] = entry;
            }
        }
        Ok(Table { bits, entries })
    }

    /// The entry for the code at the start of `ahead` (the next [`Table::bits`] bits).
    #[inline(always)]
    fn lookup(&self, ahead: usize) -> u32 {
        let entry = self.entries[ahead & ((1 << FIRST_BITS) - 1)];
        if entry >> 24 == SECOND {
            return self.entries[(entry & 0xffff) as usize + (ahead >> FIRST_BITS)];
        }
        entry
    }

    /// Skips the next symbol and its extra bits; returns its symbol.
    fn skip(&self, bits: &mut Bits) -> io::Result<u32> {
        let entry = self.lookup(bits.peek(self.bits) as usize);
        match (entry >> 16) & 0xff {
            0 => Err(malformed("bits that are no code")),
            skip => {
                bits.skip(skip as usize)?;
                Ok(entry & 0xffff)
            }
        }
    }
}

/// The literal/length and distance codes of a block.
struct Tables {
    literals: Table,
    distances: Table,
}

/// A literal/length symbol's kind and extra bits.
fn literal_kind(symbol: usize) -> (u32, u32) {
    match symbol {
        0..=255 => (LITERAL, 0),
        256 => (END_OF_BLOCK, 0),
        257..=264 | 285 => (LENGTH, 0),
        265..=284 => (LENGTH, (symbol as u32 - 261) / 4),
        _ => (OTHER, 0),
    }
}

/// A distance symbol's kind and extra bits: [`LITERAL`] for a valid one (a plain symbol, as a
/// literal is), [`OTHER`] for 30 and 31, which are never valid.
fn distance_kind(symbol: usize) -> (u32, u32) {
    match symbol {
        0..=29 => (LITERAL, (symbol as u32 / 2).saturating_sub(1)),
        _ => (OTHER, 0),
    }
}

fn fixed_tables() -> Tables {
    let mut lengths = [8u8; 288];
    lengths[144..256].fill(9);
    lengths[256..280].fill(7);
    Tables { literals: Table::new(&lengths, literal_kind).expect("the fixed code"), distances: Table::new(&[5; 30], distance_kind).expect("the fixed code") }
}

/// Reads a dynamic block's code definitions (RFC 1951 3.2.7).
fn dynamic_tables(bits: &mut Bits) -> io::Result<Tables> {
    const ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
    let literals = bits.take(5)? as usize + 257;
    let distances = bits.take(5)? as usize + 1;
    let code_lengths = bits.take(4)? as usize + 4;
    let mut lengths_of_lengths = [0u8; 19];
    for &i in &ORDER[..code_lengths] {
        lengths_of_lengths[i] = bits.take(3)? as u8;
    }
    let table = Table::new(&lengths_of_lengths, |_| (LITERAL, 0))?;
    let mut lengths = Vec::with_capacity(literals + distances);
    while lengths.len() < literals + distances {
        let (value, repeat) = match table.skip(bits)? {
            symbol @ 0..=15 => (symbol as u8, 1),
            16 => (*lengths.last().ok_or_else(|| malformed("a repeat with nothing before it"))?, 3 + bits.take(2)?),
            17 => (0, 3 + bits.take(3)?),
            _ => (0, 11 + bits.take(7)?),
        };
        if lengths.len() + repeat as usize > literals + distances {
            return Err(malformed("code lengths past the end"));
        }
        lengths.extend(std::iter::repeat_n(value, repeat as usize));
    }
    if lengths[256] == 0 {
        return Err(malformed("no end-of-block code"));
    }
    Ok(Tables { literals: Table::new(&lengths[..literals], literal_kind)?, distances: Table::new(&lengths[literals..], distance_kind)? })
}

/// Skips a Huffman-coded block's symbols up to and with its end-of-block code. The hot loop
/// of this module: one table lookup a literal, two a match, and the stream's bits kept in a
/// 64-bit buffer refilled 8 bytes at a time (as libdeflate's decompressor does), so that each
/// lookup waits only on the one before it, never on a load of the stream.
fn skip_codes(bits: &mut Bits, tables: &Tables) -> io::Result<()> {
    let (literals, distances) = (&tables.literals, &tables.distances);
    let data = bits.data;
    // The bits from `bits.pos` on: `buffer` holds the next `held` of them, and `next` is
    // the first byte not yet in it.
    let (mut next, mut buffer, mut held) = (bits.pos / 8, 0u64, 0u32);
    refill(data, &mut next, &mut buffer, &mut held);
    let start_bit = bits.pos % 8;
    buffer >>= start_bit;
    held -= start_bit as u32;
    let mut taken = 0usize;
    loop {
        // A length code with its extra bits and a distance code with its take at most 48.
        if held < 48 {
            refill(data, &mut next, &mut buffer, &mut held);
        }
        let entry = literals.lookup((buffer & mask(literals.bits)) as usize);
        let mut skip = (entry >> 16) & 0xff;
        if skip == 0 {
            return Err(malformed("bits that are no code"));
        }
        if entry >> 24 == LENGTH {
            let distance = distances.lookup(((buffer >> skip) & mask(distances.bits)) as usize);
            let more = (distance >> 16) & 0xff;
            if more == 0 || distance >> 24 != LITERAL {
                return Err(malformed("a bad distance code"));
            }
            skip += more;
        }
        if skip > held {
            return Err(malformed("it ends in the middle of a block"));
        }
        buffer >>= skip;
        held -= skip;
        taken += skip as usize;
        match entry >> 24 {
            LITERAL | LENGTH => {}
            END_OF_BLOCK => {
                bits.pos += taken;
                return Ok(());
            }
            _ => return Err(malformed("a length code over 285")),
        }
    }
}

/// The lowest `n` bits set.
#[inline(always)]
fn mask(n: usize) -> u64 {
    (1u64 << n) - 1
}

/// Adds whole bytes of `data` from `next` on to the `held` bits of `buffer`: at least 56 held
/// after, unless the stream ends first. Eight bytes are read at once where there are eight:
/// the bits beyond the bytes counted are the stream's own, and OR-ed in again by the next
/// refill.
#[inline(always)]
fn refill(data: &[u8], next: &mut usize, buffer: &mut u64, held: &mut u32) {
    if let Some(eight) = data.get(*next..*next + 8) {
        *buffer |= u64::from_le_bytes(eight.try_into().expect("eight bytes")) << *held;
        *next += ((63 - *held) / 8) as usize;
        *held |= 56;
        return;
    }
    while *held <= 56 && *next < data.len() {
        *buffer |= u64::from(data[*next]) << *held;
        *next += 1;
        *held += 8;
    }
}

/// The `n` (at most 32) bits of `data` from bit `pos` on; bits past the end read as 0.
#[inline(always)]
fn peek_at(data: &[u8], pos: usize, n: usize) -> u32 {
    let (byte, shift) = (pos / 8, pos % 8);
    let word = match data.get(byte..byte + 8) {
        Some(eight) => u64::from_le_bytes(eight.try_into().expect("eight bytes")),
        None => data.iter().skip(byte).enumerate().fold(0u64, |w, (i, b)| w | u64::from(*b) << (8 * i)),
    };
    ((word >> shift) & ((1u64 << n) - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Data with long and short matches, literals and runs: every kind of code.
    fn sample(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            match state % 4 {
                0 => out.extend_from_slice(b"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-name-1.0/bin/"),
                1 => out.push(state as u8),
                2 => out.extend(std::iter::repeat_n(b'a', (state % 300) as usize)),
                _ => {
                    let back = out.len().min((state % 40_000) as usize);
                    let start = out.len() - back;
                    out.extend_from_within(start..start + back.min(200));
                }
            }
        }
        out.truncate(len);
        out
    }

    /// The end found is the end zlib finds (its decoder reports how many bytes it used), and
    /// the final header is the last header: a stream cut there does not decode.
    #[test]
    fn finds_the_end_of_libdeflate_streams_of_every_level_and_size() {
        for (len, seed) in [(0, 1), (1, 2), (100, 3), (70_000, 4), (1 << 20, 5), (300_000, 6)] {
            let data = sample(len, seed);
            for level in [0, 1, 6, 12] {
                let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
                let mut stream = vec![0; compressor.deflate_compress_bound(data.len())];
                let n = compressor.deflate_compress(&data, &mut stream).unwrap();
                stream.truncate(n);
                let end = final_block(&stream).unwrap();
                assert_eq!(end.end_bit.div_ceil(8), n, "{len} bytes, level {level}");
                assert_eq!(stream[end.header_bit / 8] >> (end.header_bit % 8) & 1, 1, "the final bit is set there");
            }
        }
    }

    /// Streams mended with `continue_after`, written one after the other, are one stream that
    /// zlib and gzip decode to the inputs joined.
    #[test]
    fn mended_streams_follow_one_another() {
        let pieces: Vec<Vec<u8>> = (0..40).map(|i| sample([0, 1, 7, 513, 65_536, 200_000][i % 6] + i, i as u32)).collect();
        let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut joined = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let mut stream = vec![0; compressor.deflate_compress_bound(piece.len())];
            let n = compressor.deflate_compress(piece, &mut stream).unwrap();
            stream.truncate(n);
            if i + 1 < pieces.len() {
                continue_after(&mut stream).unwrap();
                assert!(stream.ends_with(&[0, 0, 0xff, 0xff]));
            }
            joined.extend_from_slice(&stream);
        }
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&joined[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, pieces.concat());
    }

    #[test]
    fn malformed_streams_are_errors() {
        let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let data = sample(50_000, 9);
        let mut stream = vec![0; compressor.deflate_compress_bound(data.len())];
        let n = compressor.deflate_compress(&data, &mut stream).unwrap();
        stream.truncate(n);
        for cut in [0, 1, 2, n / 2, n - 1] {
            assert!(final_block(&stream[..cut]).is_err(), "cut at {cut}");
        }
        assert!(final_block(&[0x07]).is_err(), "block type 3");
        assert!(final_block(&[0x01, 0x05, 0x00, 0x00, 0x00]).is_err(), "a stored block with a bad complement");
        // A stream cut anywhere is short of its end, however the bits before the cut read.
        let small = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap()).deflate_compress(&data[..8_000], &mut stream).unwrap();
        let whole = final_block(&stream[..small]).unwrap();
        assert_eq!(whole.end_bit.div_ceil(8), small);
        for cut in 0..small {
            assert!(final_block(&stream[..cut]).is_err(), "cut at {cut}");
        }
        // Arbitrary bytes, and a stream with a bit flipped anywhere: an error or an answer
        // within the bytes, never a panic.
        for seed in 0..2000u32 {
            let noise: Vec<u8> = sample(64, seed).iter().map(|b| b.wrapping_mul(seed as u8 | 1)).collect();
            let _ = final_block(&noise);
        }
        for bit in 0..small * 8 {
            stream[bit / 8] ^= 1 << (bit % 8);
            if let Ok(found) = final_block(&stream[..small]) {
                assert!(found.header_bit < found.end_bit && found.end_bit <= small * 8, "bit {bit}: {found:?}");
            }
            stream[bit / 8] ^= 1 << (bit % 8);
        }
        let mut gz = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&data).unwrap();
        let zlib = gz.finish().unwrap();
        assert_eq!(final_block(&zlib).unwrap().end_bit.div_ceil(8), zlib.len(), "zlib's streams too");
    }
}
