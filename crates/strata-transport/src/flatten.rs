//! An image's file system as one tar (`strata export`, nixpkgs' `dockerTools.exportImage`,
//! `docker export` of a container that changed nothing): its layers applied in order, as
//! overlayfs does, OCI whiteouts included.
//!
//! Two passes, nothing held in memory but names. The first reads every layer's headers and
//! keeps, for each path, the layer and entry that wins: a layer's `.wh.NAME` removes `NAME`
//! (and what is under it) from the layers below, `.wh..wh..opq` empties its directory of
//! theirs, and an entry replaces what was at its path (a file replacing a directory hides
//! what the directory held). The second reads the layers again and writes each winning entry,
//! layer by layer; base layers are read again from their source (and checked again), layers
//! strata builds are written to a scratch file once. Layers are read as hostile: paths are
//! normalised (no `..`, no leading `/`), and an image of more than [`MAX_ENTRIES`] entries
//! is refused.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::PathBuf;

use strata_oci::compress::Compression;
use strata_oci::image::{Image, LayerSource, LayerTar, TarError};
use strata_scratch::ScratchFile;

use crate::SinkError;

/// The most entries (files, directories, links) an image may have, over all its layers.
pub const MAX_ENTRIES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("layer {layer}: {source}")]
    Read { layer: usize, source: io::Error },
    #[error("layer {layer}: entry {path:?} escapes the image's root")]
    Escapes { layer: usize, path: String },
    #[error("the image has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// One layer's tar, readable twice.
enum LayerReader<'a> {
    /// A base layer, read from its source (and verified) each time.
    Base(&'a strata_oci::image::SourceImage, usize),
    /// A built layer, written once to a scratch file.
    Scratch(ScratchFile),
}

impl LayerReader<'_> {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            LayerReader::Base(base, j) => {
                let blob = &base.layers[*j];
                let codec = Compression::of_media_type(&blob.media_type).unwrap_or(Compression::None);
                let reader = base.open_layer(*j)?;
                Ok(Box::new(codec.decoder(BufReader::new(reader))?))
            }
            LayerReader::Scratch(file) => {
                let mut file = file.as_file();
                file.rewind()?;
                Ok(Box::new(BufReader::new(file)))
            }
        }
    }
}

/// A path inside the image: relative, `/`-separated, no `.`, `..` or empty parts; `None` if
/// it would leave the root.
fn normalise(path: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            _ => parts.push(part),
        }
    }
    Some(parts.join(&b'/'))
}

/// Removes what is under `dir` (not `dir` itself; everything for the root, `dir` empty):
/// the names `dir/…` sort together, between `dir/` and `dir0` (`0` follows `/`), so this
/// costs what it removes, not the size of the map.
fn remove_under<V>(map: &mut BTreeMap<Vec<u8>, V>, dir: &[u8]) {
    if dir.is_empty() {
        map.clear();
        return;
    }
    let (from, to) = ([dir, b"/"].concat(), [dir, b"0"].concat());
    let under: Vec<Vec<u8>> = map.range(from..to).map(|(k, _)| k.clone()).collect();
    for key in under {
        map.remove(&key);
    }
}

/// Writes the file system of `image` to `out` as an uncompressed tar, each name after
/// `prefix` (`./` as `tar -C root -c .` names them; empty as `docker export` does).
pub fn flatten<L: LayerTar, W: Write>(image: &Image<L>, out: W, prefix: &str) -> Result<(), FlattenError> {
    let mut layers: Vec<LayerReader> = Vec::new();
    for (k, source) in image.layer_sources().into_iter().enumerate() {
        layers.push(match source {
            LayerSource::Base(base, j) => LayerReader::Base(base, j),
            LayerSource::Built(recipe) => {
                let read_err = |source| FlattenError::Read { layer: k + 1, source };
                let file = ScratchFile::temporary().map_err(read_err)?;
                let mut writer = io::BufWriter::new(file.as_file());
                recipe.write_tar(&mut writer)?;
                writer.flush().map_err(read_err)?;
                drop(writer);
                LayerReader::Scratch(file)
            }
        });
    }

    // Pass 1: the winning (layer, entry index) of every path.
    let mut winners: BTreeMap<Vec<u8>, (usize, usize, bool)> = BTreeMap::new();
    for (k, layer) in layers.iter_mut().enumerate() {
        let read_err = |source| FlattenError::Read { layer: k + 1, source };
        let mut whiteouts: Vec<Vec<u8>> = Vec::new();
        let mut opaque: Vec<Vec<u8>> = Vec::new();
        let mut own: Vec<(Vec<u8>, usize, bool)> = Vec::new();
        {
            let reader = layer.open().map_err(read_err)?;
            let mut archive = tar::Archive::new(reader);
            for (i, entry) in archive.entries().map_err(read_err)?.enumerate() {
                let entry = entry.map_err(read_err)?;
                let raw = entry.path_bytes();
                let path = normalise(&raw).ok_or_else(|| FlattenError::Escapes { layer: k + 1, path: String::from_utf8_lossy(&raw).into_owned() })?;
                let (dir, name) = path.iter().rposition(|b| *b == b'/').map_or((&b""[..], &path[..]), |p| (&path[..p], &path[p + 1..]));
                if name == b".wh..wh..opq" {
                    opaque.push(dir.to_vec());
                } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                    whiteouts.push(if dir.is_empty() { hidden.to_vec() } else { [dir, b"/", hidden].concat() });
                } else if !path.is_empty() {
                    own.push((path, i, entry.header().entry_type().is_dir()));
                }
                if winners.len() + own.len() > MAX_ENTRIES {
                    return Err(FlattenError::TooManyEntries);
                }
            }
        }
        for dir in &opaque {
            remove_under(&mut winners, dir);
        }
        for hidden in &whiteouts {
            winners.remove(hidden);
            remove_under(&mut winners, hidden);
        }
        for (path, i, is_dir) in own {
            if !is_dir {
                // What a file or link replaces, it hides entirely.
                remove_under(&mut winners, &path);
            }
            winners.insert(path, (k, i, is_dir));
        }
    }

    // Pass 2: each layer's winning entries, in the layer's order.
    let mut by_layer: Vec<Vec<usize>> = vec![Vec::new(); layers.len()];
    for (k, i, _) in winners.values() {
        by_layer[*k].push(*i);
    }
    drop(winners);
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    for (k, layer) in layers.iter_mut().enumerate() {
        let read_err = |source| FlattenError::Read { layer: k + 1, source };
        let wanted = &mut by_layer[k];
        wanted.sort_unstable();
        if wanted.is_empty() {
            continue;
        }
        let reader = layer.open().map_err(read_err)?;
        let mut archive = tar::Archive::new(reader);
        let mut next = wanted.iter().peekable();
        for (i, entry) in archive.entries().map_err(read_err)?.enumerate() {
            let Some(&&want) = next.peek() else { break };
            let mut entry = entry.map_err(read_err)?;
            if i != want {
                continue;
            }
            next.next();
            let path = [prefix.as_bytes(), &normalise(&entry.path_bytes()).expect("checked in the first pass")].concat();
            let mut header = entry.header().clone();
            let link = entry.link_name_bytes().map(|t| t.into_owned());
            let write_err = |source| FlattenError::Sink(SinkError::Write { path: PathBuf::from("the exported tar"), source });
            append_named(&mut builder, &mut header, &path, link.as_deref(), &mut entry).map_err(write_err)?;
        }
        // Read to the end, so that a base layer's digest is checked.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(read_err)?;
    }
    let write_err = |source| FlattenError::Sink(SinkError::Write { path: PathBuf::from("the exported tar"), source });
    builder.into_inner().map_err(write_err)?.flush().map_err(write_err)?;
    Ok(())
}

/// Appends `header` with `name` (and `link`) set byte for byte, GNU long-name entries before
/// it for what does not fit: tar-rs's own path setters would drop a leading `./`.
fn append_named<W: Write>(builder: &mut tar::Builder<W>, header: &mut tar::Header, name: &[u8], link: Option<&[u8]>, data: impl Read) -> io::Result<()> {
    fn long_entry<W: Write>(builder: &mut tar::Builder<W>, kind: tar::EntryType, bytes: &[u8]) -> io::Result<()> {
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().expect("a GNU header").name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_mtime(0);
        long.set_size(bytes.len() as u64 + 1);
        long.set_entry_type(kind);
        long.set_cksum();
        builder.append(&long, bytes.chain(&[0u8][..]))
    }
    fn set_field(field: &mut [u8], bytes: &[u8]) {
        field.fill(0);
        let n = bytes.len().min(field.len());
        field[..n].copy_from_slice(&bytes[..n]);
    }
    if name.len() > 100 {
        long_entry(builder, tar::EntryType::GNULongName, name)?;
    }
    if let Some(ustar) = header.as_ustar_mut() {
        ustar.prefix.fill(0);
    }
    set_field(&mut header.as_old_mut().name, name);
    if let Some(link) = link {
        if link.len() > 100 {
            long_entry(builder, tar::EntryType::GNULongLink, link)?;
        }
        set_field(&mut header.as_old_mut().linkname, link);
    }
    header.set_cksum();
    builder.append(header, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(normalise(b"./a//b/./c/"), Some(b"a/b/c".to_vec()));
        assert_eq!(normalise(b"/etc/passwd"), Some(b"etc/passwd".to_vec()));
        assert_eq!(normalise(b"a/../../etc"), None);
        let mut map: BTreeMap<Vec<u8>, ()> = [&b"a"[..], b"a/b", b"a/b/c", b"ab", b"a0", b"a.b"].iter().map(|k| (k.to_vec(), ())).collect();
        remove_under(&mut map, b"a");
        assert_eq!(map.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(), ["a", "a.b", "a0", "ab"]);
        remove_under(&mut map, b"");
        assert!(map.is_empty());
    }
}
