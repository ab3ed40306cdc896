//! One direction of the splice: read a chunk, let the [`Gate`] decide what of it goes on, write.
//!
//! - **No buffer while idle.** Each read goes into a buffer on the poll's own stack. Data that
//!   the writer cannot take right away is copied to the heap and freed once written, so an idle
//!   tunnel holds no relay buffer at all (`copy_bidirectional` would hold 2 × 8 KiB for the
//!   tunnel's whole life).
//! - **Half-close.** EOF from the reader becomes a write shutdown (FIN) to the writer, and the
//!   other direction keeps flowing until it ends too (RFC 9293 §3.6).
//! - **Backpressure.** While a direction has unwritten data it does not read, so a slow reader
//!   slows the writer instead of growing memory. The writer is flushed after every completed
//!   write, including the tail of a backlog (TLS writers hold bytes until flushed).
//! - **Frames.** The gate follows frame boundaries with a frame tracker; in the common case
//!   it keeps the whole chunk and the relay is the plain copy it always was. It drops what must
//!   not go on (a Pong that answers switchboard's own Ping, anything after a Close) by moving
//!   the kept bytes together in the same stack buffer, and it says when a Close or a Ping of
//!   switchboard's own is due, which the direction writes between frames.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::gate::Gate;

/// Bytes read per chunk. Lives on the stack of one poll, never in the tunnel.
const CHUNK: usize = 16 * 1024;

/// The state of one direction's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Relaying.
    Open,
    /// The reader hit EOF; the writer's shutdown is in progress.
    ShuttingDown,
    /// Finished.
    Done,
}

/// One direction of the relay.
pub struct Direction {
    /// Data waiting for the writer, and how much of it was written; boxed, as it is rare and
    /// an idle tunnel should not carry its room.
    pending: Option<Box<(Vec<u8>, usize)>>,
    /// The writer needs a flush before more is read (matters for TLS writers).
    needs_flush: bool,
    /// Where the byte stream is.
    pub flow: Flow,
    /// The framing policy.
    pub gate: Gate,
    /// Bytes relayed (kept by the gate, plus switchboard's own frames).
    pub bytes: u64,
    /// Of `bytes`, how many were published to the shared counters.
    pub published: u64,
    /// The closing handshakes are over: shut the writer down, then read until EOF.
    pub settle: bool,
    /// The writer was shut down (FIN sent).
    writer_shut: bool,
    /// EOF from the reader ends this direction without a FIN to the writer: the closing
    /// handshake is over both ways and the tunnel is about to close both sockets anyway.
    pub skip_fin: bool,
}

impl Direction {
    /// A direction whose frames follow `gate`'s rules.
    pub fn new(gate: Gate) -> Self {
        Direction {
            pending: None,
            needs_flush: false,
            flow: Flow::Open,
            gate,
            bytes: 0,
            published: 0,
            settle: false,
            writer_shut: false,
            skip_fin: false,
        }
    }

    /// Whether a Close can still be written toward this writer.
    pub fn writer_open(&self) -> bool {
        self.flow == Flow::Open && !self.writer_shut && !self.settle
    }

    /// Whether the reader can still send anything.
    pub fn reader_open(&self) -> bool {
        self.flow == Flow::Open
    }

    /// Everything read has been written and flushed.
    pub fn is_flushed(&self) -> bool {
        self.pending.is_none() && !self.needs_flush
    }

    fn push_pending(&mut self, data: &[u8]) {
        match &mut self.pending {
            Some(pending) => pending.0.extend_from_slice(data),
            None => self.pending = Some(Box::new((data.to_vec(), 0))),
        }
    }

    /// Moves bytes from `reader` to `writer` until the reader would block, or to the end.
    /// Sets `*active` when bytes moved. `Ready(Ok)` means this direction is finished.
    pub fn poll_relay<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some(pending) = &mut self.pending {
                let (data, written) = &mut **pending;
                while *written < data.len() {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, &data[*written..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *written += n;
                    *active = true;
                }
                self.pending = None;
                self.needs_flush = true;
            }
            if self.needs_flush {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                self.needs_flush = false;
            }
            if self.flow == Flow::Open
                && !self.writer_shut
                && !self.settle
                && let Some(frame) = self.gate.due_frame()
            {
                self.bytes += frame.len() as u64;
                self.pending = Some(Box::new((frame, 0)));
                continue;
            }
            match self.flow {
                Flow::Open if self.settle && !self.writer_shut => {
                    let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                    self.writer_shut = true;
                }
                Flow::Open => {}
                Flow::ShuttingDown => {
                    // The peer may already be gone; a failed FIN changes nothing for us.
                    if !self.writer_shut && !self.skip_fin {
                        let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                        self.writer_shut = true;
                    }
                    self.flow = Flow::Done;
                    return Poll::Ready(Ok(()));
                }
                Flow::Done => return Poll::Ready(Ok(())),
            }

            let mut storage = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut storage);
            let carried = self.gate.tracker.carried().len();
            buf.put_slice(self.gate.tracker.carried());
            ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
            // The carried bytes are in front of the new ones now (on Pending they stay carried).
            self.gate.tracker.clear_carry();
            if buf.filled().len() == carried {
                self.flow = Flow::ShuttingDown;
                continue;
            }
            *active = true;
            let (out, own) = self.gate.filter(buf.filled_mut());
            let data = &buf.filled()[..out];
            self.bytes += out as u64;
            if let Some(frame) = own {
                // Rare: switchboard's Close goes right behind the kept bytes.
                self.bytes += frame.len() as u64;
                self.push_pending(data);
                self.push_pending(&frame);
                continue;
            }
            let mut written = 0;
            while written < data.len() {
                match Pin::new(&mut *writer).poll_write(cx, &data[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Only now does this direction need memory of its own.
                        self.pending = Some(Box::new((data[written..].to_vec(), 0)));
                        return Poll::Pending;
                    }
                }
            }
            if written > 0 {
                self.needs_flush = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
