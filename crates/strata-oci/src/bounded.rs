//! Reads that stop at a bound. Every input strata reads whole (a spec, a closure graph, a
//! manifest or config, a key, a credentials file) is read through here: a file of any size,
//! or one that never ends (`/dev/zero`, a fifo nobody closes), costs at most its bound in
//! memory and then fails, saying so. A size asked of the file first would not do: a device
//! or a fifo says 0, and a file can grow between the asking and the reading.

use std::io::{self, Read};
use std::path::Path;

/// The most an input of strata's own formats may hold (a spec, a modes file, a closure graph,
/// an environment's manifest, a description, licences): far more than any real one (a spec
/// the Nix library writes for a closure of ten thousand paths is about 2 MiB), so that only
/// a runaway input is refused.
pub const MAX_INPUT_SIZE: u64 = 256 << 20;

/// Reads all of `reader`, failing past `limit` bytes.
pub fn read_bounded(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("larger than {}", human_size(limit))));
    }
    Ok(bytes)
}

/// The file at `path`, failing past `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_bounded(std::fs::File::open(path)?, limit)
}

/// The file at `path` as text, failing past `limit` bytes or where it is not UTF-8.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_file(path, limit)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text: {}", e.utf8_error())))
}

/// `limit` bytes for people: in MiB or KiB where it is a whole number of them.
pub fn human_size(limit: u64) -> String {
    match limit {
        l if l >= 1 << 20 && l.is_multiple_of(1 << 20) => format!("{} MiB", l >> 20),
        l if l >= 1 << 10 && l.is_multiple_of(1 << 10) => format!("{} KiB", l >> 10),
        l => format!("{l} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_and_no_further() {
        assert_eq!(read_bounded(&b"abc"[..], 3).unwrap(), b"abc");
        let err = read_bounded(&b"abcd"[..], 3).unwrap_err();
        assert_eq!((err.kind(), err.to_string()), (io::ErrorKind::FileTooLarge, "larger than 3 bytes".to_owned()));
        // A source without end fails as soon as it passes the limit.
        let err = read_file(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(err.to_string(), "larger than 1 MiB");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("latin1"), b"caf\xe9").unwrap();
        assert!(read_text(&dir.path().join("latin1"), 10).unwrap_err().to_string().starts_with("not UTF-8 text"));
    }
}
