//! Two layers' tars hashed on one thread: the one it writes, and one made for it elsewhere.
//!
//! A writer hashing the tar it writes (the docker-archive stream's diff IDs) leaves half of
//! the SHA extensions idle: one SHA-256 stream runs at the latency of their round instruction
//! (see `strata_oci::sha256`). A [`Feeder`] fills the other half. It claims another layer,
//! has its tar made on a thread of its own (reading files is cheap next to hashing them) and
//! handed over in chunks, and hashes those chunks in the same instructions as the bytes the
//! writer writes ([`PairedWriter`]). When a fed layer ends, the feeder claims the next; what
//! is left of one when the writer is done is hashed alone ([`Feeder::finish`]).

use std::io::{self, Write};
use std::marker::PhantomData;
use std::sync::mpsc;
use std::thread::Scope;

use strata_oci::digest::Digest;
use strata_oci::image::{LayerTar, TarError};
use strata_oci::sha256::Sha256;

use crate::progress::{Counted, Progress, Stage};

/// The size of the chunks a fed layer's tar is handed over in.
const CHUNK: usize = 256 << 10;

/// What the thread making a fed layer's tar sends: bytes, then how it ended.
enum Fed {
    Bytes(Vec<u8>),
    End(Result<(), TarError>),
}

/// A layer whose tar is being made on another thread, and its hash so far.
struct FedLayer {
    index: usize,
    chunks: mpsc::Receiver<Fed>,
    /// The chunk being hashed, from `at`.
    chunk: Vec<u8>,
    at: usize,
    hasher: Sha256,
    /// Chunks hashed, for the making thread to fill again.
    give_back: mpsc::Sender<Vec<u8>>,
}

/// Claims layers to feed (`claim` gives one nobody else hashes: its index and recipe), starts
/// their tars on `scope`, and hashes them together with the bytes of [`PairedWriter`]s.
pub(crate) struct Feeder<'scope, 'env, L, C> {
    scope: &'scope Scope<'scope, 'env>,
    progress: &'env dyn Progress,
    claim: C,
    /// No layer is left to claim.
    exhausted: bool,
    fed: Option<FedLayer>,
    /// The layers fed to the end: their index and diff ID.
    done: Vec<(usize, Result<Digest, TarError>)>,
    _recipes: PhantomData<fn() -> &'env L>,
}

impl<'scope, 'env, L: LayerTar, C: FnMut() -> Option<(usize, &'env L)>> Feeder<'scope, 'env, L, C> {
    pub(crate) fn new(scope: &'scope Scope<'scope, 'env>, progress: &'env dyn Progress, claim: C) -> Self {
        Feeder { scope, progress, claim, exhausted: false, fed: None, done: Vec::new(), _recipes: PhantomData }
    }

    /// Hashes `bytes` into `own`, each with as many bytes of the fed layers as there are.
    fn hash_with(&mut self, own: &mut Sha256, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let Some(fed) = self.fed_with_bytes() else {
                own.update(bytes);
                return;
            };
            let n = bytes.len().min(fed.chunk.len() - fed.at);
            Sha256::update_pair(own, &bytes[..n], &mut fed.hasher, &fed.chunk[fed.at..fed.at + n]);
            fed.at += n;
            bytes = &bytes[n..];
        }
    }

    /// The fed layer, with bytes not yet hashed: the one being fed, or the next claimed
    /// when it ends; `None` when no layer is left.
    fn fed_with_bytes(&mut self) -> Option<&mut FedLayer> {
        loop {
            let Some(fed) = &mut self.fed else {
                if self.exhausted {
                    return None;
                }
                match (self.claim)() {
                    Some((index, recipe)) => self.fed = Some(self.start(index, recipe)),
                    None => self.exhausted = true,
                }
                continue;
            };
            if fed.at < fed.chunk.len() {
                break;
            }
            let ended = match fed.chunks.recv() {
                Ok(Fed::Bytes(chunk)) => {
                    let hashed = std::mem::replace(&mut fed.chunk, chunk);
                    let _ = fed.give_back.send(hashed);
                    fed.at = 0;
                    continue;
                }
                Ok(Fed::End(result)) => result,
                Err(mpsc::RecvError) => Err(TarError::Write(io::Error::other("the thread making the layer's tar stopped"))),
            };
            let fed = self.fed.take().expect("a fed layer");
            self.progress.finish(fed.index);
            self.done.push((fed.index, ended.map(|()| fed.hasher.finish())));
        }
        self.fed.as_mut()
    }

    fn start(&self, index: usize, recipe: &'env L) -> FedLayer {
        let (sender, chunks) = mpsc::sync_channel(4);
        let (give_back, given_back) = mpsc::channel();
        let progress = self.progress;
        progress.start(index, Stage::Hashing, recipe.tar_len());
        self.scope.spawn(move || {
            let mut out = Counted { inner: ChunkWriter { chunk: Vec::with_capacity(CHUNK), sender: &sender, given_back }, layer: index, progress };
            let result = recipe.write_tar(&mut out).and_then(|()| out.inner.send().map_err(TarError::Write));
            let _ = sender.send(Fed::End(result));
        });
        FedLayer { index, chunks, chunk: Vec::new(), at: 0, hasher: Sha256::new(), give_back }
    }

    /// Hashes what is left of the fed layer alone; returns the diff ID of every layer fed.
    pub(crate) fn finish(mut self) -> Vec<(usize, Result<Digest, TarError>)> {
        self.exhausted = true;
        while let Some(fed) = self.fed_with_bytes() {
            fed.hasher.update(&fed.chunk[fed.at..]);
            fed.at = fed.chunk.len();
        }
        self.done
    }
}

/// Passes bytes through to `inner`, hashing them together with a [`Feeder`]'s.
pub(crate) struct PairedWriter<'f, W, F> {
    pub(crate) inner: W,
    pub(crate) own: Sha256,
    pub(crate) feeder: &'f mut F,
}

impl<'env, W: Write, L: LayerTar, C: FnMut() -> Option<(usize, &'env L)>> Write for PairedWriter<'_, W, Feeder<'_, 'env, L, C>> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.feeder.hash_with(&mut self.own, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts what is written into chunks and sends them to a [`Feeder`].
struct ChunkWriter<'a> {
    chunk: Vec<u8>,
    sender: &'a mpsc::SyncSender<Fed>,
    given_back: mpsc::Receiver<Vec<u8>>,
}

impl ChunkWriter<'_> {
    /// Sends the chunk filled so far, if any.
    fn send(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let next = self.given_back.try_recv().map_or_else(
            |_| Vec::with_capacity(CHUNK),
            |mut c| {
                c.clear();
                c
            },
        );
        let full = std::mem::replace(&mut self.chunk, next);
        // The feeder is gone only if the stream failed: its error is reported.
        self.sender.send(Fed::Bytes(full)).map_err(|_| io::Error::other("the layer's hashing stopped"))
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
