//! The frame-boundary tracker (`proxy::tunnel::frames`) on arbitrary byte streams.
//!
//! Input: a flags byte (masked or unmasked rules, permessage-deflate, an unknown extension, a
//! message limit, which frames are wanted whole), a limit byte, three 16-bit cut points, then
//! the stream. The stream is fed the way the relay feeds it (the carry in front of each read,
//! each read walked item by item, as `Gate::filter` and `frames/tests.rs` `drive` do): in one
//! read, cut at the three points, and one byte per read.
//!
//! Checked: the three feeds find the same frames, frame ends, message boundaries, Close codes,
//! violations and the same lost point; never more than `CARRY_MAX` bytes are carried, a header
//! always comes whole and a frame asked for whole is all in the data; and up to the first
//! violation the frames and verdicts match RFC 6455 §5.2–§5.5 as written out here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::proxy::tunnel::frames::{
    CARRY_MAX, Extensions, FrameHead, FrameTracker, Item, NO_STATUS, Rules, Violation, opcode,
};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Trace {
    /// Each frame header: where it starts and what it says.
    frames: Vec<(usize, FrameHead)>,
    /// Where each frame ended, and whether that is a message boundary too.
    ends: Vec<(usize, bool)>,
    /// Where each Close frame that broke no rule ended, and its status code. (The code the
    /// tracker reports for a Close frame it flagged, over 125 bytes or with RSV bits, is not
    /// compared: past 255 bytes it depends on the read boundaries, see fuzz/README.md.)
    closes: Vec<(usize, u16)>,
    /// Recoverable violations: where the frame starts, and what.
    violations: Vec<(usize, Violation)>,
    /// Where the stream was lost, and why.
    lost: Option<(usize, Violation)>,
    /// Bytes carried at the end of the stream.
    carried_at_end: usize,
    /// The current frame was flagged (walk state, the same in every feed at the end).
    current_bad: bool,
}

fn drive(
    stream: &[u8],
    cuts: &[usize],
    rules: Rules,
    want_whole: &dyn Fn(&FrameHead) -> bool,
) -> Trace {
    let mut tracker = FrameTracker::new(rules);
    let mut trace = Trace::default();
    let mut ends: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&cut| cut > 0 && cut < stream.len())
        .collect();
    ends.sort_unstable();
    ends.dedup();
    ends.push(stream.len());
    let mut start = 0;
    let mut buf = Vec::new();
    for end in ends {
        // As the relay does: the carried bytes go in front of the read, then are forgotten.
        let carried = tracker.carried();
        assert!(
            carried.len() <= CARRY_MAX,
            "{} bytes carried",
            carried.len()
        );
        buf.clear();
        buf.extend_from_slice(carried);
        tracker.clear_carry();
        let base = start - buf.len();
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        if !walk(&mut tracker, &buf, base, want_whole, &mut trace) {
            return trace;
        }
    }
    trace.carried_at_end = tracker.carried().len();
    trace
}

/// Walks one read (carry included) that starts at stream offset `base`; false when lost.
fn walk(
    tracker: &mut FrameTracker,
    buf: &[u8],
    base: usize,
    want_whole: &dyn Fn(&FrameHead) -> bool,
    trace: &mut Trace,
) -> bool {
    let mut pos = 0;
    while pos < buf.len() {
        let data = &buf[pos..];
        let at = base + pos;
        let on_head = |head: FrameHead, trace: &mut Trace| {
            assert!(
                head.header_len <= data.len(),
                "a Head without its whole header"
            );
            assert!((2..=14).contains(&head.header_len));
            if head.total_len() <= CARRY_MAX as u64 && want_whole(&head) {
                assert!(
                    data.len() as u64 >= head.total_len(),
                    "a frame asked for whole is not all in the data"
                );
            }
            trace.frames.push((at, head));
            head.header_len
        };
        let n = match tracker.next(data, want_whole) {
            Item::Head(head) => {
                trace.current_bad = false;
                on_head(head, trace)
            }
            Item::Bad(violation, Some(head)) => {
                assert!(violation.is_recoverable(), "{violation:?} with a head");
                trace.violations.push((at, violation));
                trace.current_bad = true;
                on_head(head, trace)
            }
            Item::Bad(violation, None) => {
                assert!(!violation.is_recoverable(), "{violation:?} without a head");
                trace.lost = Some((at, violation));
                return false;
            }
            Item::Payload(n) => {
                assert!(
                    n > 0 && n <= data.len(),
                    "payload of {n} in {} bytes",
                    data.len()
                );
                n
            }
            Item::Partial => {
                assert!(data.len() <= CARRY_MAX, "partial of {} bytes", data.len());
                assert!(tracker.at_frame_boundary(), "partial inside a frame");
                tracker.carry(data);
                return true;
            }
        };
        pos += n;
        assert_eq!(tracker.at_frame_boundary(), tracker.frame_done());
        if tracker.frame_done() {
            if tracker.opcode() == opcode::CLOSE && !trace.current_bad {
                trace.closes.push((base + pos, tracker.close_code()));
            }
            trace.ends.push((base + pos, tracker.at_message_boundary()));
        } else {
            assert!(!tracker.at_message_boundary());
        }
    }
    true
}

/// RFC 6455 §5.2 header decoding, written out: `None` when `data` holds only part of it.
fn decode(data: &[u8]) -> Option<Result<FrameHead, Violation>> {
    let b0 = *data.first()?;
    let b1 = *data.get(1)?;
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(data.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => {
            let len = u64::from_be_bytes(data.get(2..10)?.try_into().ok()?);
            if len > i64::MAX as u64 {
                return Some(Err(Violation::LengthOverflow));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let key: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    Some(Ok(FrameHead {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0f,
        mask,
        len,
        header_len: at,
    }))
}

/// What a reader that holds the whole stream finds, up to and including the first violation
/// (after one the relay stops relaying, so what the tracker says then is not compared).
fn reference(stream: &[u8], rules: Rules, want_whole: &dyn Fn(&FrameHead) -> bool) -> Trace {
    let mut trace = Trace::default();
    let (mut pos, mut in_message, mut message_len) = (0usize, false, 0u64);
    while pos < stream.len() {
        let head = match decode(&stream[pos..]) {
            None => {
                trace.carried_at_end = stream.len() - pos;
                break;
            }
            Some(Err(violation)) => {
                trace.lost = Some((pos, violation));
                break;
            }
            Some(Ok(head)) => head,
        };
        let left = (stream.len() - pos) as u64;
        if head.total_len() <= CARRY_MAX as u64 && left < head.total_len() && want_whole(&head) {
            trace.carried_at_end = stream.len() - pos;
            break;
        }
        trace.frames.push((pos, head));
        let verdict = if head.mask.is_some() != rules.masked {
            Err(Violation::Masking)
        } else if head.rsv
            & !(rules.rsv_any
                | if matches!(head.opcode, opcode::TEXT | opcode::BINARY) {
                    rules.rsv_first
                } else {
                    0
                })
            != 0
        {
            Err(Violation::ReservedBits)
        } else {
            match head.opcode {
                opcode::CLOSE | opcode::PING | opcode::PONG if !head.fin || head.len > 125 => {
                    Err(Violation::BadControl)
                }
                opcode::CLOSE | opcode::PING | opcode::PONG => Ok(()),
                opcode::CONTINUATION if !in_message => Err(Violation::Fragmentation),
                opcode::TEXT | opcode::BINARY if in_message => Err(Violation::Fragmentation),
                opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                    let so_far = if head.opcode == opcode::CONTINUATION {
                        message_len
                    } else {
                        0
                    };
                    let total = so_far.saturating_add(head.len);
                    if total > rules.max_message {
                        Err(Violation::TooBig)
                    } else {
                        message_len = total;
                        in_message = !head.fin;
                        Ok(())
                    }
                }
                _ => Err(Violation::ReservedOpcode),
            }
        };
        if let Err(violation) = verdict {
            trace.violations.push((pos, violation));
            return trace;
        }
        let end = pos as u64 + head.total_len();
        if end > stream.len() as u64 {
            break;
        }
        let end = end as usize;
        if head.opcode == opcode::CLOSE {
            let payload = &stream[pos + head.header_len..end];
            let key = head.mask.unwrap_or([0; 4]);
            let code = match payload {
                [a, b, ..] => u16::from_be_bytes([a ^ key[0], b ^ key[1]]),
                _ => NO_STATUS,
            };
            trace.closes.push((end, code));
        }
        trace.ends.push((end, !in_message));
        pos = end;
    }
    trace
}

/// `trace` cut at its first violation, with what comes after it dropped.
fn up_to_first_violation(trace: &Trace) -> Trace {
    let Some(&(at, _)) = trace.violations.first() else {
        return trace.clone();
    };
    Trace {
        frames: trace
            .frames
            .iter()
            .copied()
            .filter(|&(p, _)| p <= at)
            .collect(),
        ends: trace
            .ends
            .iter()
            .copied()
            .filter(|&(e, _)| e <= at)
            .collect(),
        closes: trace
            .closes
            .iter()
            .copied()
            .filter(|&(e, _)| e <= at)
            .collect(),
        violations: trace.violations[..1].to_vec(),
        lost: None,
        carried_at_end: 0,
        current_bad: false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<8>() else {
        return;
    };
    let flags = head[0];
    let extensions = Extensions {
        deflate: flags & 2 != 0,
        unknown: flags & 4 != 0,
    };
    let max_message = (flags & 8 != 0).then(|| u64::from(head[1]) * 64);
    let rules = Rules::new(flags & 1 != 0, extensions, max_message);
    let whole_mode = (flags >> 4) & 3;
    let want_whole = move |h: &FrameHead| match whole_mode {
        0 => false,
        // The relay's own Pong (8-byte payload), as `Gate::filter` asks for it.
        1 => h.opcode == opcode::PONG && h.len == 8,
        2 => h.is_control(),
        _ => true,
    };
    let len = stream.len().max(1);
    let cuts: Vec<usize> = head[2..]
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % len)
        .collect();

    let whole = drive(stream, &[], rules, &want_whole);
    let split = drive(stream, &cuts, rules, &want_whole);
    assert_eq!(split, whole, "cut at {cuts:?}");
    let every: Vec<usize> = (1..stream.len()).collect();
    let bytewise = drive(stream, &every, rules, &want_whole);
    assert_eq!(bytewise, whole, "one byte per read");

    let expected = reference(stream, rules, &want_whole);
    if expected.violations.is_empty() {
        assert_eq!(whole, expected, "against RFC 6455 as written out");
    } else {
        assert_eq!(
            up_to_first_violation(&whole),
            expected,
            "against RFC 6455 as written out"
        );
    }
});
