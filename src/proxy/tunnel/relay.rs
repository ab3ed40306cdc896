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
//! - **Frames.** The gate follows frame boundaries with a [`FrameTracker`]; in the common case
//!   it keeps the whole chunk and the relay is the plain copy it always was. It drops what must
//!   not go on (a Pong that answers switchboard's own Ping, anything after a Close) by moving
//!   the kept bytes together in the same stack buffer, and it says when a Close or a Ping of
//!   switchboard's own is due, which the direction writes between frames.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frames::{self, FrameTracker, Item, Rules, Violation, opcode};

/// Bytes read per chunk. Lives on the stack of one poll, never in the tunnel.
const CHUNK: usize = 16 * 1024;

/// The payload of switchboard's Pings; a Pong carrying it answers switchboard, not the backend.
pub const PING_PAYLOAD: &[u8; 8] = b"sb-ping!";

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

/// What the gate does with the reader's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay every frame.
    Open,
    /// A polite close is under way: relay until the message in progress ends, then send the
    /// writer a Close with this code and reason.
    Finishing(u16, &'static str),
    /// The writer has had a Close: drop the reader's frames, but still see its Close.
    Closed,
    /// The reader's bytes are not WebSocket framing any more: drop them all.
    Lost,
}

/// The framing policy of one direction, without IO.
pub struct Gate {
    tracker: FrameTracker,
    /// What happens to the reader's frames.
    pub mode: Mode,
    /// The current frame's bytes are relayed.
    keep_frame: bool,
    /// Frames switchboard writes toward this writer must be masked (toward the backend).
    mask_out: bool,
    /// The reader sent a Close, with this code.
    pub close_seen: Option<u16>,
    /// A Close went toward the writer, relayed or switchboard's own.
    pub delivered: bool,
    /// The code of switchboard's own Close toward the writer, if it sent one.
    pub sent_code: Option<u16>,
    /// The reader broke the framing rules (taken by the splice).
    pub violation: Option<Violation>,
    /// A Ping of switchboard's is unanswered: consume the reader's Pong that carries its payload.
    pub watch_pong: bool,
    /// Such a Pong came (taken by the splice).
    pub pong_matched: bool,
    /// Send the writer a Ping at the next frame boundary.
    pub want_ping: bool,
}

impl Gate {
    /// A gate for frames that follow `rules`; `mask_out` for the direction toward the backend.
    pub fn new(rules: Rules, mask_out: bool) -> Self {
        Gate {
            tracker: FrameTracker::new(rules),
            mode: Mode::Open,
            keep_frame: true,
            mask_out,
            close_seen: None,
            delivered: false,
            sent_code: None,
            violation: None,
            watch_pong: false,
            pong_matched: false,
            want_ping: false,
        }
    }

    /// Switchboard's Close or Ping, if one is due at this point of the stream.
    fn due_frame(&mut self) -> Option<Vec<u8>> {
        if let Mode::Finishing(code, reason) = self.mode
            && self.tracker.at_message_boundary()
        {
            return Some(self.own_close(code, reason));
        }
        if self.want_ping && self.mode == Mode::Open && self.tracker.at_frame_boundary() {
            self.want_ping = false;
            return Some(frames::control_frame(
                opcode::PING,
                PING_PAYLOAD,
                self.mask(),
            ));
        }
        None
    }

    fn own_close(&mut self, code: u16, reason: &str) -> Vec<u8> {
        self.mode = Mode::Closed;
        self.delivered = true;
        self.sent_code = Some(code);
        frames::close_frame(code, reason, self.mask())
    }

    fn mask(&self) -> Option<[u8; 4]> {
        // A fresh, unpredictable key for every frame toward a server (RFC 6455 §5.3).
        self.mask_out.then(rand::random::<[u8; 4]>)
    }

    /// Decides, frame by frame, what of `buf` goes on. Kept bytes are moved to the front; the
    /// return is how many there are, and switchboard's own frame to write after them (a Close
    /// when the boundary it waited for came, or because the reader broke the rules). A header
    /// cut off at the end is carried to the next read.
    pub fn filter(&mut self, buf: &mut [u8]) -> (usize, Option<Vec<u8>>) {
        let mut pos = 0;
        let mut out = 0;
        let mut own = None;
        while pos < buf.len() && self.mode != Mode::Lost {
            if let Mode::Finishing(code, reason) = self.mode
                && self.tracker.at_message_boundary()
            {
                own = Some(self.own_close(code, reason));
            }
            let watch = self.watch_pong && self.mode != Mode::Closed;
            let is_our_pong = |h: &frames::FrameHead| {
                watch && h.opcode == opcode::PONG && h.len == PING_PAYLOAD.len() as u64
            };
            let n = match self.tracker.next(&buf[pos..], is_our_pong) {
                Item::Partial => {
                    self.tracker.carry(&buf[pos..]);
                    break;
                }
                Item::Payload(n) => {
                    if self.keep_frame {
                        keep(buf, pos, n, &mut out);
                    }
                    n
                }
                Item::Head(head) => {
                    let mut relay = self.mode != Mode::Closed;
                    if relay && is_our_pong(&head) {
                        let payload = &buf[pos + head.header_len..][..PING_PAYLOAD.len()];
                        let key = head.mask.unwrap_or([0; 4]);
                        if payload
                            .iter()
                            .enumerate()
                            .all(|(i, b)| b ^ key[i % 4] == PING_PAYLOAD[i])
                        {
                            relay = false;
                            self.pong_matched = true;
                        }
                    }
                    if relay && head.opcode == opcode::CLOSE {
                        self.delivered = true;
                    }
                    self.keep_frame = relay;
                    if relay {
                        keep(buf, pos, head.header_len, &mut out);
                    }
                    head.header_len
                }
                Item::Bad(violation, head) => {
                    self.violation.get_or_insert(violation);
                    self.keep_frame = false;
                    // The other side is told at this boundary; the offender by the splice.
                    if !self.delivered && own.is_none() {
                        own = Some(self.own_close(super::close::GOING_AWAY, "going away"));
                    }
                    match head {
                        Some(head) if violation.is_recoverable() => {
                            self.mode = Mode::Closed;
                            head.header_len
                        }
                        _ => {
                            self.mode = Mode::Lost;
                            break;
                        }
                    }
                }
            };
            pos += n;
            if self.tracker.frame_done() && self.tracker.opcode() == opcode::CLOSE {
                self.close_seen.get_or_insert(self.tracker.close_code());
                if self.delivered && self.mode == Mode::Open {
                    // The peer's Close went on: nothing it sends after it may.
                    self.mode = Mode::Closed;
                }
            }
        }
        (out, own)
    }
}

/// Moves `buf[from..from + n]` down to `*out`, where the kept bytes end (a no-op while all
/// bytes are kept, which is the common case).
fn keep(buf: &mut [u8], from: usize, n: usize, out: &mut usize) {
    if from != *out {
        buf.copy_within(from..from + n, *out);
    }
    *out += n;
}

/// One direction of the relay.
pub struct Direction {
    /// Data waiting for the writer, and how much of it was written.
    pending: Option<(Vec<u8>, usize)>,
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

    fn push_pending(&mut self, data: &[u8]) {
        match &mut self.pending {
            Some((buf, _)) => buf.extend_from_slice(data),
            None => self.pending = Some((data.to_vec(), 0)),
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
            if let Some((data, written)) = &mut self.pending {
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
                self.pending = Some((frame, 0));
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
                    if !self.writer_shut {
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
                        self.pending = Some((data[written..].to_vec(), 0));
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
