//! How long work reports itself. Every sink tells a [`Progress`] when it starts a layer's
//! work (hashing, compressing, copying, uploading) over how many bytes, how far it got, and
//! when it finished; the command line draws bars of it on a terminal, and anyone else may
//! ignore it ([`Silent`]). Reports come from many threads at once, in any order between
//! layers; each layer's own reports come in order: start, advances, finish.

use std::io::{self, Write};

/// What is being done to a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its tar read and hashed (and written, where it goes out as it is).
    Hashing,
    /// Its tar read, compressed and hashed.
    Compressing,
    /// A stored blob copied, verified on the way.
    Copying,
    /// A stored blob decoded and compared with its tar (`--previous`).
    Checking,
    /// Its blob sent to a registry.
    Uploading,
}

impl Stage {
    pub fn verb(self) -> &'static str {
        match self {
            Stage::Hashing => "hashing",
            Stage::Compressing => "compressing",
            Stage::Copying => "copying",
            Stage::Checking => "checking",
            Stage::Uploading => "uploading",
        }
    }
}

/// Where reports go. `layer` is the layer's position in the image, bottom first; `bytes` is
/// 0 where the size is not known before the work is done.
pub trait Progress: Send + Sync {
    fn start(&self, layer: usize, stage: Stage, bytes: u64);
    fn advance(&self, layer: usize, bytes: u64);
    fn finish(&self, layer: usize);
    /// The write is over (done or failed): nothing more is reported.
    fn done(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: usize, _: Stage, _: u64) {}
    fn advance(&self, _: usize, _: u64) {}
    fn finish(&self, _: usize) {}
}

/// A writer that reports the bytes written through it as layer `layer`'s progress.
pub(crate) struct Counted<'a, W> {
    pub inner: W,
    pub layer: usize,
    pub progress: &'a dyn Progress,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(self.layer, n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
