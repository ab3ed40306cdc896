//! What of a direction's bytes goes on, decided frame by frame without IO.
//!
//! In the common case the gate keeps the whole chunk and the relay is the plain copy it always
//! was. It drops what must not go on (a Pong that answers switchboard's own Ping, anything the
//! reader sends after the writer had a Close, the frames of a peer that broke the rules) by
//! moving the kept bytes together in the same stack buffer, and it says when a Close or a Ping
//! of switchboard's own is due between frames.

use super::CloseReason;
use super::close::{GOING_AWAY, INTERNAL_ERROR};
use super::frames::{self, FrameTracker, Item, Rules, Violation, opcode};

/// The payload of switchboard's Pings; a Pong carrying it answers switchboard, not the backend.
pub const PING_PAYLOAD: &[u8; 8] = b"sb-ping!";

/// What the gate does with the reader's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay every frame.
    Open,
    /// A polite close is under way: relay until the message in progress ends, then send the
    /// writer a Close with this code and reason.
    Finishing(u16, CloseReason),
    /// The writer has had a Close: drop the reader's frames, but still see its Close.
    Closed,
    /// The reader's bytes are not WebSocket framing any more: drop them all.
    Lost,
}

/// The framing policy of one direction, without IO.
pub struct Gate {
    pub(super) tracker: FrameTracker,
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
    pub(super) fn due_frame(&mut self) -> Option<Vec<u8>> {
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

    fn own_close(&mut self, code: u16, reason: CloseReason) -> Vec<u8> {
        self.mode = Mode::Closed;
        self.delivered = true;
        self.sent_code = Some(code);
        frames::close_frame(code, reason.close_text(), self.mask())
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
                        // Toward the client, a backend's broken framing is switchboard's error.
                        let code = if !self.mask_out && violation != Violation::TooBig {
                            INTERNAL_ERROR
                        } else {
                            GOING_AWAY
                        };
                        let reason = if violation == Violation::TooBig {
                            CloseReason::MessageTooBig
                        } else {
                            CloseReason::BadFraming
                        };
                        own = Some(self.own_close(code, reason));
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
