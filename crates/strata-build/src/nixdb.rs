//! A Nix database for the image (`initialize_nix_database`): `/nix/var/nix/db/db.sqlite`
//! registering every store path of the image with its NAR hash, NAR size and references, so
//! Nix inside the container knows what it has.
//!
//! The NAR hash is computed here by serialising each path in Nix's archive format (NAR) into
//! SHA-256; this is written by hand because the one Rust implementation of NAR (nix-compat)
//! is GPL and unpublished. The database is written with rusqlite's bundled SQLite, whose
//! version Cargo.lock pins, and filled in sorted order: the same closure gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::closure::Closure;
use crate::layer::Entry;
use crate::store::StorePath;
use strata_oci::digest::{Digest, HashingWriter};

/// Nix's database schema, version 10 (Nix 2.0 and later).
const SCHEMA: &str = "
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
";

#[derive(Debug, thiserror::Error)]
pub enum NixDbError {
    #[error("cannot read {path} for its NAR hash")]
    Read { path: String, source: io::Error },
    #[error("cannot write the Nix database")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot write the Nix database")]
    Io(#[from] io::Error),
}

/// The NAR hash and size of `path`.
pub fn nar_hash(path: &Path) -> io::Result<(Digest, u64)> {
    let mut out = HashingWriter::new(io::sink());
    write_str(&mut out, b"nix-archive-1")?;
    write_node(&mut out, path)?;
    let (digest, size, _) = out.finish();
    Ok((digest, size))
}

fn write_str(out: &mut impl Write, s: &[u8]) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s)?;
    out.write_all(&[0u8; 8][..(8 - s.len() % 8) % 8])
}

fn write_node(out: &mut impl Write, path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    write_str(out, b"(")?;
    write_str(out, b"type")?;
    if meta.is_symlink() {
        write_str(out, b"symlink")?;
        write_str(out, b"target")?;
        write_str(out, std::fs::read_link(path)?.as_os_str().as_bytes())?;
    } else if meta.is_dir() {
        write_str(out, b"directory")?;
        let mut names: Vec<_> = std::fs::read_dir(path)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            write_str(out, b"entry")?;
            write_str(out, b"(")?;
            write_str(out, b"name")?;
            write_str(out, name.as_bytes())?;
            write_str(out, b"node")?;
            write_node(out, &path.join(&name))?;
            write_str(out, b")")?;
        }
    } else if meta.is_file() {
        write_str(out, b"regular")?;
        if meta.permissions().mode() & 0o100 != 0 {
            write_str(out, b"executable")?;
            write_str(out, b"")?;
        }
        write_str(out, b"contents")?;
        out.write_all(&meta.len().to_le_bytes())?;
        let copied = io::copy(&mut crate::layer::open_store_file(path)?.take(meta.len()), out)?;
        if copied != meta.len() {
            return Err(io::Error::other("the file changed while it was read"));
        }
        out.write_all(&[0u8; 8][..(8 - (meta.len() % 8) as usize) % 8])?;
    } else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a fifo, socket or device, which NAR cannot hold"));
    }
    write_str(out, b")")
}

/// The entries of the database layer: `nix/var/nix/db/{db.sqlite,schema}` registering
/// `paths` (references from `closure`), registered at `mtime`. With an `owner` (uid, gid),
/// the database and `/nix/store` are that user's (nix2container's `nixUid`/`nixGid`), so Nix
/// run by that user can add to the store; else root's, and `/nix/store` is left to the
/// store layers.
pub fn database_entries(closure: &Closure, paths: &BTreeSet<StorePath>, mtime: u64, owner: Option<(u32, u32)>) -> Result<Vec<Entry>, NixDbError> {
    let mut hashes = BTreeMap::new();
    for path in paths {
        let (hash, size) = nar_hash(path.as_ref()).map_err(|source| NixDbError::Read { path: path.to_string(), source })?;
        hashes.insert(path, (hash, size));
    }
    let dir = strata_scratch::ScratchDir::temporary()?;
    let file = dir.path().join("db.sqlite");
    {
        let mut db = rusqlite::Connection::open(&file)?;
        db.execute_batch(SCHEMA)?;
        let tx = db.transaction()?;
        let mut ids = BTreeMap::new();
        for (path, (hash, size)) in &hashes {
            tx.execute(
                "insert into ValidPaths (path, hash, registrationTime, narSize) values (?1, ?2, ?3, ?4)",
                rusqlite::params![path.as_str(), format!("sha256:{}", hash.hex()), mtime as i64, *size as i64],
            )?;
            ids.insert(*path, tx.last_insert_rowid());
        }
        for (path, id) in &ids {
            for reference in closure.references(path) {
                if let Some(ref_id) = ids.get(reference) {
                    tx.execute("insert into Refs (referrer, reference) values (?1, ?2)", rusqlite::params![id, ref_id])?;
                }
            }
        }
        tx.commit()?;
        db.close().map_err(|(_, e)| e)?;
    }
    let mut entries: Vec<Entry> = ["nix", "nix/var", "nix/var/nix", "nix/var/nix/db", "nix/var/nix/gcroots", "nix/var/nix/profiles"]
        .iter()
        .map(|d| Entry::directory(d.as_bytes(), 0o755))
        .collect();
    entries.push(Entry::contents(b"nix/var/nix/db/db.sqlite", std::fs::read(&file)?, 0o644));
    entries.push(Entry::contents(b"nix/var/nix/db/schema", b"10".to_vec(), 0o644));
    if let Some((uid, gid)) = owner {
        entries.push(Entry::directory(b"nix/store", 0o755));
        for entry in &mut entries {
            (entry.uid, entry.gid) = (uid, gid);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NAR of a small tree, checked byte for byte against the format.
    #[test]
    fn nar_of_a_file_and_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hi").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        let mut expected = Vec::new();
        for s in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"f",
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hi",
            b")",
            b")",
            b"entry",
            b"(",
            b"name",
            b"l",
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"f",
            b")",
            b")",
            b")",
        ] {
            write_str(&mut expected, s).unwrap();
        }
        let (digest, size) = nar_hash(dir.path()).unwrap();
        assert_eq!((digest, size), (Digest::of(&expected), expected.len() as u64));
    }
}
