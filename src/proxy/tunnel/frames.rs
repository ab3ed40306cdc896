//! A frame-boundary tracker for one direction of a tunnel (RFC 6455 §5.2), sans-IO.
//!
//! The relay stays a byte relay: this module reads only frame *headers* (FIN, RSV, opcode, MASK,
//! the 7/16/64-bit payload length and the masking key) and skips payloads without copying or
//! unmasking them, so the tunnel always knows where the next frame starts. That is all a proxy
//! needs to end a WebSocket the way a server would: stop at a frame boundary, inject a Close or
//! a Ping, measure a message before relaying it. The state is a few words plus the bytes of a
//! header split across reads (at most [`CARRY_MAX`]); the relay puts those back in front of the
//! next read, so every decision is taken on a whole header.
//!
//! Checked, because an endpoint must fail the connection on them (§5.1–§5.5) and because they
//! are how a peer that is not speaking WebSocket shows itself: masking in the wrong direction,
//! RSV bits no negotiated extension defines (permessage-deflate, RFC 7692, allows RSV1 on the
//! first frame of a data message), reserved opcodes, control frames that are fragmented or longer
//! than 125 bytes (they may come between the fragments of a message, §5.4), continuation frames
//! outside a message and data frames inside one, and a 64-bit length with its top bit set.

/// Longest frame header: 2 bytes, a 64-bit length, a masking key.
pub const MAX_HEADER: usize = 14;

/// Most bytes carried from one read to the next: a split header, or a whole small control
/// frame that the caller asked to see at once (a masked Pong of 8 bytes, which it may have to
/// consume, is exactly this long).
pub const CARRY_MAX: usize = MAX_HEADER;

/// Opcodes (§5.2).
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// First frame of a text message.
    pub const TEXT: u8 = 0x1;
    /// First frame of a binary message.
    pub const BINARY: u8 = 0x2;
    /// Close (§5.5.1).
    pub const CLOSE: u8 = 0x8;
    /// Ping (§5.5.2).
    pub const PING: u8 = 0x9;
    /// Pong (§5.5.3).
    pub const PONG: u8 = 0xA;
}

/// Close status of a Close frame with no payload (§7.1.5: "no status received").
pub const NO_STATUS: u16 = 1005;

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Last frame of its message.
    pub fin: bool,
    /// The three RSV bits, as the top bits of the first byte (0x70 mask).
    pub rsv: u8,
    /// The opcode.
    pub opcode: u8,
    /// The masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Header length in bytes (2 to 14).
    pub header_len: usize,
}

impl FrameHead {
    /// Control frames (Close, Ping, Pong and the reserved 0xB–0xF) have the top opcode bit set.
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Header plus payload.
    pub fn total_len(&self) -> u64 {
        self.header_len as u64 + self.len
    }
}

/// Parses the header at the start of `data`; `Ok(None)` when `data` holds only part of it.
pub fn parse_head(data: &[u8]) -> Result<Option<FrameHead>, Violation> {
    let [b0, b1, ..] = *data else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            let Some(bytes) = data.get(2..4) else {
                return Ok(None);
            };
            (u16::from_be_bytes([bytes[0], bytes[1]]) as u64, 4)
        }
        127 => {
            let Some(bytes) = data.get(2..10) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(Violation::LengthOverflow);
            }
            (len, 10)
        }
        short => (short as u64, 2),
    };
    let mask = if masked {
        let Some(key) = data.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some(key.try_into().expect("4 bytes"))
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0f,
        mask,
        len,
        header_len: at,
    }))
}

/// A breach of the framing rules; the tunnel is closed with 1002 (or 1009 for [`TooBig`]).
///
/// [`TooBig`]: Violation::TooBig
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A 64-bit length with the most significant bit set: the stream cannot be followed.
    LengthOverflow,
    /// A frame from the client without a mask, or one from the server with one (§5.1).
    Masking,
    /// RSV bits that no negotiated extension defines.
    ReservedBits,
    /// An opcode that RFC 6455 reserves.
    ReservedOpcode,
    /// A control frame longer than 125 bytes or without FIN (§5.5).
    BadControl,
    /// A continuation frame with no message open, or a new data frame inside one (§5.4).
    Fragmentation,
    /// A data message longer than `websocket.max_message_bytes`.
    TooBig,
}

impl Violation {
    /// For log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::LengthOverflow => "64-bit length with the top bit set",
            Violation::Masking => "frame masked in the wrong direction",
            Violation::ReservedBits => "RSV bits without an extension for them",
            Violation::ReservedOpcode => "reserved opcode",
            Violation::BadControl => "control frame fragmented or over 125 bytes",
            Violation::Fragmentation => "continuation frame out of place",
            Violation::TooBig => "message over websocket.max_message_bytes",
        }
    }

    /// Whether the tracker can still follow the stream after this (it knows the frame's length).
    pub fn is_recoverable(self) -> bool {
        self != Violation::LengthOverflow
    }
}

/// What the frames of one direction must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Frames must be masked (client to server) or must not be (server to client).
    pub masked: bool,
    /// RSV bits allowed on the first frame of a data message (0x40 with permessage-deflate).
    pub rsv_first: u8,
    /// RSV bits allowed on every frame (an extension switchboard does not know: all of them).
    pub rsv_any: u8,
    /// Longest data message, summed over its fragments (`u64::MAX`: no limit).
    pub max_message: u64,
}

impl Rules {
    /// Rules for frames from the client (`masked`) or the backend, given the extensions the
    /// backend accepted in its 101 (`Sec-WebSocket-Extensions`).
    pub fn new(masked: bool, extensions: Extensions, max_message: Option<u64>) -> Self {
        Rules {
            masked,
            rsv_first: if extensions.deflate { 0x40 } else { 0 },
            rsv_any: if extensions.unknown { 0x70 } else { 0 },
            max_message: max_message.unwrap_or(u64::MAX),
        }
    }
}

/// The extensions a handshake negotiated, as far as framing is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// permessage-deflate (RFC 7692): RSV1 marks a compressed message.
    pub deflate: bool,
    /// Some other extension, whose use of RSV bits is unknown: they are not checked.
    pub unknown: bool,
}

impl Extensions {
    /// From the `Sec-WebSocket-Extensions` values of the backend's 101.
    pub fn from_header<'a>(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut found = Extensions::default();
        for value in values {
            for item in value.split(|&b| b == b',') {
                let name = item.split(|&b| b == b';').next().unwrap_or_default();
                let name = name.trim_ascii();
                if name.is_empty() {
                    continue;
                }
                if name.eq_ignore_ascii_case(b"permessage-deflate") {
                    found.deflate = true;
                } else {
                    found.unknown = true;
                }
            }
        }
        found
    }
}

/// What the next bytes of a direction are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A whole header starts the data; the tracker is now inside that frame.
    Head(FrameHead),
    /// The next `n` bytes are payload of the current frame.
    Payload(usize),
    /// The data is an incomplete header (or an incomplete frame the caller wants whole): the
    /// caller must [`FrameTracker::carry`] it and put it in front of the next read.
    Partial,
    /// The header breaks the rules. If the violation [`is_recoverable`](Violation::is_recoverable)
    /// the tracker is inside that frame as with [`Item::Head`]; otherwise it is lost.
    Bad(Violation, Option<FrameHead>),
}

/// Frame boundaries of one direction. A few words of state, no buffer but the carry.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    rules: Rules,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Payload length of the current frame when it is a control frame (at most 125 when
    /// valid), for the Close code's position.
    control_len: u8,
    /// Masking key of the current frame (zeros when unmasked).
    mask: [u8; 4],
    /// Opcode of the current frame.
    opcode: u8,
    /// A fragmented data message is open.
    in_message: bool,
    /// Bytes of the open data message so far.
    message_len: u64,
    /// The status code of the current Close frame, assembled from its first two payload bytes.
    close_code: u16,
    carry: [u8; CARRY_MAX],
    carry_len: u8,
}

impl FrameTracker {
    /// A tracker at the start of a stream.
    pub fn new(rules: Rules) -> Self {
        FrameTracker {
            rules,
            remaining: 0,
            control_len: 0,
            mask: [0; 4],
            opcode: 0,
            in_message: false,
            message_len: 0,
            close_code: 0,
            carry: [0; CARRY_MAX],
            carry_len: 0,
        }
    }

    /// Reads what starts `data`. `want_whole` may ask for a header's whole frame at once (for
    /// frames of at most `CARRY_MAX` bytes); `data` must not be empty.
    pub fn next(&mut self, data: &[u8], want_whole: impl Fn(&FrameHead) -> bool) -> Item {
        debug_assert!(!data.is_empty());
        if self.remaining > 0 {
            let n = data
                .len()
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            self.note_payload(&data[..n]);
            self.remaining -= n as u64;
            return Item::Payload(n);
        }
        let head = match parse_head(data) {
            Ok(Some(head)) => head,
            Ok(None) if data.len() < MAX_HEADER => return Item::Partial,
            Ok(None) => unreachable!("a header is at most {MAX_HEADER} bytes"),
            Err(violation) => return Item::Bad(violation, None),
        };
        if head.total_len() <= CARRY_MAX as u64
            && (data.len() as u64) < head.total_len()
            && want_whole(&head)
        {
            return Item::Partial;
        }
        let verdict = self.check(&head);
        self.enter(&head);
        match verdict {
            Ok(()) => Item::Head(head),
            Err(violation) => Item::Bad(violation, Some(head)),
        }
    }

    fn check(&mut self, head: &FrameHead) -> Result<(), Violation> {
        if head.mask.is_some() != self.rules.masked {
            return Err(Violation::Masking);
        }
        let allowed = self.rules.rsv_any
            | match head.opcode {
                opcode::TEXT | opcode::BINARY => self.rules.rsv_first,
                _ => 0,
            };
        if head.rsv & !allowed != 0 {
            return Err(Violation::ReservedBits);
        }
        match head.opcode {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !head.fin || head.len > 125 {
                    return Err(Violation::BadControl);
                }
                Ok(())
            }
            opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => {
                let continuation = head.opcode == opcode::CONTINUATION;
                if continuation != self.in_message {
                    return Err(Violation::Fragmentation);
                }
                let so_far = if continuation { self.message_len } else { 0 };
                let total = so_far.saturating_add(head.len);
                if total > self.rules.max_message {
                    return Err(Violation::TooBig);
                }
                self.message_len = total;
                self.in_message = !head.fin;
                Ok(())
            }
            _ => Err(Violation::ReservedOpcode),
        }
    }

    fn enter(&mut self, head: &FrameHead) {
        self.remaining = head.len;
        // A control frame over 125 bytes breaks the rules: no Close code is read from it, so
        // what is reported cannot depend on how reads split it.
        self.control_len = if head.len <= 125 { head.len as u8 } else { 0 };
        self.mask = head.mask.unwrap_or([0; 4]);
        self.opcode = head.opcode;
        self.close_code = 0;
    }

    /// Follows a Close frame's status code (§5.5.1) through its first two payload bytes.
    fn note_payload(&mut self, payload: &[u8]) {
        if self.opcode != opcode::CLOSE || self.control_len < 2 {
            return;
        }
        let offset = u64::from(self.control_len).saturating_sub(self.remaining);
        for (i, byte) in payload
            .iter()
            .take(2usize.saturating_sub(offset as usize))
            .enumerate()
        {
            let at = offset as usize + i;
            self.close_code = (self.close_code << 8) | u16::from(byte ^ self.mask[at % 4]);
        }
    }

    /// The current frame's opcode.
    pub fn opcode(&self) -> u8 {
        self.opcode
    }

    /// The whole current frame has gone by.
    pub fn frame_done(&self) -> bool {
        self.remaining == 0
    }

    /// Between frames: a control frame (a Ping) may be sent here.
    pub fn at_frame_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Between messages: a Close sent here leaves no message cut short.
    pub fn at_message_boundary(&self) -> bool {
        self.remaining == 0 && !self.in_message
    }

    /// The status code of the Close frame that just ended ([`NO_STATUS`] without one).
    pub fn close_code(&self) -> u16 {
        if self.control_len >= 2 {
            self.close_code
        } else {
            NO_STATUS
        }
    }

    /// Keeps the start of a header (an [`Item::Partial`]) until the next read.
    pub fn carry(&mut self, partial: &[u8]) {
        self.carry[..partial.len()].copy_from_slice(partial);
        self.carry_len = partial.len() as u8;
    }

    /// The carried bytes, to put in front of the next read; they are handed out once.
    pub fn take_carry(&mut self) -> &[u8] {
        let len = std::mem::take(&mut self.carry_len) as usize;
        &self.carry[..len]
    }

    /// The carried bytes, left in place (for a read that may not happen yet).
    pub fn carried(&self) -> &[u8] {
        &self.carry[..self.carry_len as usize]
    }

    /// Forgets the carried bytes once they are in front of new data.
    pub fn clear_carry(&mut self) {
        self.carry_len = 0;
    }

    /// Whether bytes are carried.
    pub fn has_carry(&self) -> bool {
        self.carry_len > 0
    }
}

/// Writes a frame header into `out` and returns its length; `mask` makes it a client frame.
pub fn write_head(out: &mut [u8], opcode: u8, len: usize, mask: Option<[u8; 4]>) -> usize {
    out[0] = 0x80 | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// A whole control frame (Close or Ping) with `payload`, masked with `mask` when given.
pub fn control_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    debug_assert!(payload.len() <= 125);
    let mut frame = vec![0; MAX_HEADER + payload.len()];
    let at = write_head(&mut frame, opcode, payload.len(), mask);
    frame.truncate(at + payload.len());
    let key = mask.unwrap_or([0; 4]);
    for (i, (out, byte)) in frame[at..].iter_mut().zip(payload).enumerate() {
        *out = byte ^ key[i % 4];
    }
    frame
}

/// A Close frame with a status `code` and a short `reason` (§5.5.1).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    let reason = &reason.as_bytes()[..reason.floor_char_boundary(123)];
    payload[2..2 + reason.len()].copy_from_slice(reason);
    control_frame(opcode::CLOSE, &payload[..2 + reason.len()], mask)
}

#[cfg(test)]
mod tests;
