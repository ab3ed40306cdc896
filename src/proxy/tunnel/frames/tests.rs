use std::borrow::Cow;
use std::ops::ControlFlow;

use proptest::prelude::*;

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn client() -> Rules {
    Rules::new(true, Extensions::default(), None)
}

fn server() -> Rules {
    Rules::new(false, Extensions::default(), None)
}

fn rules(masked: bool) -> Rules {
    if masked { client() } else { server() }
}

fn never(_: &FrameHead) -> bool {
    false
}

fn controls_whole(head: &FrameHead) -> bool {
    head.is_control()
}

/// The header of a frame, with the shortest length encoding (7, 16 or 64 bits).
fn head_bytes(fin: bool, rsv: u8, op: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | rsv | op];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out
}

/// A whole frame; `payload` is masked with `mask` when given (a client frame).
fn frame(fin: bool, rsv: u8, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = head_bytes(fin, rsv, op, payload.len(), mask);
    let key = mask.unwrap_or([0; 4]);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// What a walk through a stream found, in stream offsets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Trace {
    /// Each frame: where its header starts, its opcode, its payload length.
    frames: Vec<(usize, u8, u64)>,
    /// The status code of each Close frame, when it ended.
    closes: Vec<u16>,
    /// Where each frame ended, and whether that is also a message boundary.
    ends: Vec<(usize, bool)>,
    /// Recoverable violations: where the frame starts, and what.
    violations: Vec<(usize, Violation)>,
    /// Where the stream was lost, and why.
    lost: Option<(usize, Violation)>,
    /// Bytes carried at the end of the stream.
    carried_at_end: bool,
}

/// A byte stream built frame by frame, with the trace a tracker should find in it.
struct Stream {
    bytes: Vec<u8>,
    masked: bool,
    keys: u32,
    in_message: bool,
    expect: Trace,
}

impl Stream {
    fn new(masked: bool) -> Self {
        Stream {
            bytes: Vec::new(),
            masked,
            keys: 0,
            in_message: false,
            expect: Trace::default(),
        }
    }

    fn next_key(&mut self) -> Option<[u8; 4]> {
        self.keys = self.keys.wrapping_add(1);
        let key = self.keys.wrapping_mul(0x9e37_79b9).to_be_bytes();
        self.masked.then_some(key)
    }

    /// Appends a frame (masked with a fresh key on a client stream); returns where it starts.
    fn push(&mut self, fin: bool, rsv: u8, op: u8, payload: &[u8]) -> usize {
        let key = self.next_key();
        self.push_keyed(fin, rsv, op, payload, key)
    }

    fn push_keyed(
        &mut self,
        fin: bool,
        rsv: u8,
        op: u8,
        payload: &[u8],
        key: Option<[u8; 4]>,
    ) -> usize {
        let start = self.bytes.len();
        self.bytes
            .extend_from_slice(&frame(fin, rsv, op, payload, key));
        self.expect_frame(start, fin, op, payload);
        start
    }

    /// Appends a frame whose payload is zeros, without masking them (the content of a data
    /// payload does not matter to the tracker); quick for large frames.
    fn push_filler(&mut self, fin: bool, op: u8, len: usize, key: Option<[u8; 4]>) -> usize {
        let start = self.bytes.len();
        self.bytes
            .extend_from_slice(&head_bytes(fin, 0, op, len, key));
        self.bytes.resize(self.bytes.len() + len, 0);
        self.expect.frames.push((start, op, len as u64));
        self.frame_ends(fin, op);
        start
    }

    fn push_close(&mut self, code: u16, reason: &str) -> usize {
        self.push(
            true,
            0,
            opcode::CLOSE,
            &close_payload(code, reason.as_bytes()),
        )
    }

    /// Appends bytes that are not a well-formed frame (the expected trace is not updated).
    fn push_raw(&mut self, raw: &[u8]) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(raw);
        start
    }

    fn expect_frame(&mut self, start: usize, fin: bool, op: u8, payload: &[u8]) {
        self.expect.frames.push((start, op, payload.len() as u64));
        if op == opcode::CLOSE {
            self.expect.closes.push(match payload {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => NO_STATUS,
            });
        }
        self.frame_ends(fin, op);
    }

    fn frame_ends(&mut self, fin: bool, op: u8) {
        if op & 0x8 == 0 {
            self.in_message = !fin;
        }
        self.expect.ends.push((self.bytes.len(), !self.in_message));
    }

    fn rules(&self) -> Rules {
        rules(self.masked)
    }
}

/// Feeds `stream` cut at `cuts` through a tracker the way a relay direction does: the carry
/// goes in front of each chunk, and each chunk is walked item by item.
fn drive(
    stream: &[u8],
    cuts: &[usize],
    rules: Rules,
    want_whole: impl Fn(&FrameHead) -> bool,
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
    for end in ends {
        let chunk = &stream[start..end];
        start = end;
        let carried = tracker.take_carry();
        let base = end - chunk.len() - carried.len();
        let buf: Cow<[u8]> = if carried.is_empty() {
            Cow::Borrowed(chunk)
        } else {
            Cow::Owned([carried, chunk].concat())
        };
        if walk(&mut tracker, &buf, base, &want_whole, &mut trace).is_break() {
            return trace;
        }
    }
    trace.carried_at_end = tracker.has_carry();
    trace
}

/// Walks one chunk (carry included) that starts at stream offset `base`.
fn walk(
    tracker: &mut FrameTracker,
    buf: &[u8],
    base: usize,
    want_whole: &impl Fn(&FrameHead) -> bool,
    trace: &mut Trace,
) -> ControlFlow<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let data = &buf[pos..];
        let at = base + pos;
        let on_head = |head: FrameHead, trace: &mut Trace| {
            assert!(
                head.header_len <= data.len(),
                "a Head comes with its whole header"
            );
            if head.total_len() <= CARRY_MAX as u64 && want_whole(&head) {
                assert!(
                    data.len() as u64 >= head.total_len(),
                    "a frame asked for whole is all in the data"
                );
            }
            trace.frames.push((at, head.opcode, head.len));
            head.header_len
        };
        let n = match tracker.next(data, want_whole) {
            Item::Head(h) => on_head(h, trace),
            Item::Bad(violation, Some(h)) => {
                assert!(violation.is_recoverable());
                trace.violations.push((at, violation));
                on_head(h, trace)
            }
            Item::Bad(violation, None) => {
                assert!(!violation.is_recoverable());
                trace.lost = Some((at, violation));
                return ControlFlow::Break(());
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
                assert!(data.len() <= CARRY_MAX);
                assert!(tracker.at_frame_boundary());
                tracker.carry(data);
                assert!(tracker.has_carry());
                return ControlFlow::Continue(());
            }
        };
        pos += n;
        assert_eq!(tracker.at_frame_boundary(), tracker.frame_done());
        if tracker.frame_done() {
            if tracker.opcode() == opcode::CLOSE {
                trace.closes.push(tracker.close_code());
            }
            trace.ends.push((base + pos, tracker.at_message_boundary()));
        } else {
            assert!(!tracker.at_message_boundary());
        }
    }
    ControlFlow::Continue(())
}

fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// Text, 16-bit and 64-bit binary, a Ping, a fragmented message with controls between its
/// fragments, and a Close.
fn fixture(masked: bool) -> Stream {
    let mut s = Stream::new(masked);
    s.push(true, 0, opcode::TEXT, b"hello");
    s.push(true, 0, opcode::BINARY, &filler(200));
    s.push(true, 0, opcode::BINARY, &filler(70_000));
    s.push(true, 0, opcode::PING, b"ping");
    s.push(false, 0, opcode::TEXT, b"frag");
    s.push(true, 0, opcode::PING, b"");
    s.push(false, 0, opcode::CONTINUATION, b"ment");
    s.push(true, 0, opcode::PONG, b"pong");
    s.push(true, 0, opcode::CONTINUATION, b"ed!");
    s.push_close(1001, "going away");
    s
}

/// Offsets near every frame start (the header bytes and the first payload bytes).
fn near_headers(s: &Stream) -> Vec<usize> {
    let mut near: Vec<usize> = s
        .expect
        .frames
        .iter()
        .flat_map(|&(start, _, _)| start.saturating_sub(1)..=start + 16)
        .filter(|&at| at > 0 && at < s.bytes.len())
        .collect();
    near.sort_unstable();
    near.dedup();
    near
}

#[test]
fn fixture_unsplit_matches_what_was_built() {
    for masked in [true, false] {
        let s = fixture(masked);
        let trace = drive(&s.bytes, &[], s.rules(), never);
        assert_eq!(trace, s.expect);
        assert_eq!(trace.frames.len(), 10);
        assert_eq!(trace.closes, [1001]);
        // 5 B text, 200 B with a 16-bit length, 70000 B with a 64-bit length.
        let header = if masked { 4 } else { 0 };
        assert_eq!(trace.frames[1].0, 2 + header + 5);
        assert_eq!(trace.frames[2].0, trace.frames[1].0 + 4 + header + 200);
        assert_eq!(trace.frames[3].0, trace.frames[2].0 + 10 + header + 70_000);
        // The message boundary is not reached between the fragments, controls included.
        let boundaries: Vec<bool> = trace.ends.iter().map(|&(_, b)| b).collect();
        assert_eq!(
            boundaries,
            [
                true, true, true, true, false, false, false, false, true, true
            ]
        );
    }
}

#[test]
fn every_two_chunk_split_finds_the_same_boundaries() {
    for masked in [true, false] {
        let s = fixture(masked);
        let whole = drive(&s.bytes, &[], s.rules(), never);
        for cut in 1..s.bytes.len() {
            let split = drive(&s.bytes, &[cut], s.rules(), never);
            assert_eq!(split, whole, "masked {masked}, cut at {cut}");
        }
    }
}

#[test]
fn three_chunk_splits_find_the_same_boundaries() {
    for masked in [true, false] {
        let s = fixture(masked);
        let whole = drive(&s.bytes, &[], s.rules(), never);
        let near = near_headers(&s);
        for (i, &a) in near.iter().enumerate() {
            for &b in &near[i + 1..] {
                let split = drive(&s.bytes, &[a, b], s.rules(), never);
                assert_eq!(split, whole, "masked {masked}, cuts at {a} and {b}");
            }
        }
        for a in (1..s.bytes.len()).step_by(4099) {
            for b in (a + 1..s.bytes.len()).step_by(2999) {
                let split = drive(&s.bytes, &[a, b], s.rules(), controls_whole);
                assert_eq!(split, whole, "masked {masked}, cuts at {a} and {b}");
            }
        }
        for &a in near.iter().step_by(5) {
            for &b in near.iter().skip(2).step_by(7).filter(|&&b| b > a) {
                let split = drive(&s.bytes, &[a, b], s.rules(), controls_whole);
                assert_eq!(
                    split, whole,
                    "masked {masked}, cuts at {a} and {b}, controls whole"
                );
            }
        }
    }
}

#[test]
fn one_byte_chunks_find_the_same_boundaries() {
    for masked in [true, false] {
        let s = fixture(masked);
        let whole = drive(&s.bytes, &[], s.rules(), never);
        let every: Vec<usize> = (1..s.bytes.len()).collect();
        assert_eq!(drive(&s.bytes, &every, s.rules(), never), whole);
        assert_eq!(drive(&s.bytes, &every, s.rules(), controls_whole), whole);
    }
}

fn violations(s: &Stream, rules: Rules) -> Vec<(usize, Violation)> {
    let trace = drive(&s.bytes, &[], rules, never);
    assert_eq!(trace.lost, None);
    trace.violations
}

#[test]
fn rsv1_only_on_the_first_frame_of_a_data_message_with_deflate() {
    let deflate = Extensions {
        deflate: true,
        unknown: false,
    };
    for masked in [true, false] {
        let with = Rules::new(masked, deflate, None);
        let without = rules(masked);

        let mut s = Stream::new(masked);
        s.push(true, 0x40, opcode::TEXT, b"compressed");
        s.push(false, 0x40, opcode::BINARY, b"first");
        s.push(true, 0, opcode::PING, b"");
        s.push(true, 0, opcode::CONTINUATION, b"rest");
        assert_eq!(violations(&s, with), []);

        let mut s = Stream::new(masked);
        let text = s.push(true, 0x40, opcode::TEXT, b"compressed");
        let binary = s.push(true, 0x40, opcode::BINARY, b"compressed");
        s.push(true, 0, opcode::TEXT, b"plain");
        assert_eq!(violations(&s, with), []);
        assert_eq!(
            violations(&s, without),
            [
                (text, Violation::ReservedBits),
                (binary, Violation::ReservedBits)
            ]
        );

        let mut s = Stream::new(masked);
        s.push(false, 0x40, opcode::TEXT, b"first");
        let continuation = s.push(true, 0x40, opcode::CONTINUATION, b"rest");
        let ping = s.push(true, 0x40, opcode::PING, b"");
        let close = s.push(true, 0x40, opcode::CLOSE, &close_payload(1000, b""));
        assert_eq!(
            violations(&s, with),
            [
                (continuation, Violation::ReservedBits),
                (ping, Violation::ReservedBits),
                (close, Violation::ReservedBits),
            ]
        );

        // RSV2 and RSV3 mean nothing to permessage-deflate.
        for rsv in [0x20, 0x10, 0x60] {
            let mut s = Stream::new(masked);
            s.push(true, rsv, opcode::TEXT, b"x");
            assert_eq!(violations(&s, with), [(0, Violation::ReservedBits)]);
        }
    }
}

#[test]
fn any_rsv_passes_with_an_unknown_extension() {
    for deflate in [false, true] {
        let extensions = Extensions {
            deflate,
            unknown: true,
        };
        for masked in [true, false] {
            let mut s = Stream::new(masked);
            for rsv in [0x10, 0x20, 0x40, 0x70] {
                s.push(false, rsv, opcode::TEXT, b"a");
                s.push(true, rsv, opcode::PING, b"p");
                s.push(true, rsv, opcode::CONTINUATION, b"b");
                s.push(true, rsv, opcode::BINARY, b"c");
            }
            s.push(true, 0x70, opcode::CLOSE, &close_payload(1000, b""));
            assert_eq!(violations(&s, Rules::new(masked, extensions, None)), []);
        }
    }
}

#[test]
fn extensions_from_header() {
    let parse = |values: &[&str]| Extensions::from_header(values.iter().map(|v| v.as_bytes()));
    assert_eq!(parse(&[]), Extensions::default());
    assert_eq!(parse(&[""]), Extensions::default());
    assert_eq!(
        parse(&["permessage-deflate; client_max_window_bits=10"]),
        Extensions {
            deflate: true,
            unknown: false
        }
    );
    assert_eq!(
        parse(&[" Permessage-Deflate ", "x-webkit-foo"]),
        Extensions {
            deflate: true,
            unknown: true
        }
    );
    assert_eq!(
        parse(&["x-foo, permessage-deflate"]),
        Extensions {
            deflate: true,
            unknown: true
        }
    );
}

#[test]
fn masking_in_the_wrong_direction() {
    // A client frame without a mask: the tracker still follows the stream after it.
    let mut s = Stream::new(true);
    s.push_keyed(true, 0, opcode::TEXT, b"unmasked", None);
    let next = s.push(true, 0, opcode::TEXT, b"masked");
    let trace = drive(&s.bytes, &[], client(), never);
    assert_eq!(trace.violations, [(0, Violation::Masking)]);
    assert_eq!(trace.frames, s.expect.frames);
    assert_eq!(trace.frames[1].0, next);

    // A server frame with one.
    let mut s = Stream::new(false);
    s.push(true, 0, opcode::BINARY, b"fine");
    let bad = s.push_keyed(true, 0, opcode::BINARY, b"masked", Some(KEY));
    assert_eq!(violations(&s, server()), [(bad, Violation::Masking)]);
    assert_eq!(
        drive(&s.bytes, &[], server(), never).frames,
        s.expect.frames
    );
}

#[test]
fn reserved_opcodes() {
    for masked in [true, false] {
        for op in [0x3, 0x7, 0xB, 0xF] {
            let mut s = Stream::new(masked);
            s.push(true, 0, opcode::TEXT, b"ok");
            let bad = s.push(true, 0, op, b"what");
            s.push(true, 0, opcode::TEXT, b"ok");
            assert_eq!(
                violations(&s, s.rules()),
                [(bad, Violation::ReservedOpcode)]
            );
            assert_eq!(
                drive(&s.bytes, &[], s.rules(), never).frames,
                s.expect.frames
            );
        }
    }
}

#[test]
fn control_frames_too_long_or_fragmented() {
    for masked in [true, false] {
        let mut s = Stream::new(masked);
        s.push(true, 0, opcode::PING, &[1; 125]);
        let long = s.push(true, 0, opcode::PING, &[1; 126]);
        let long_pong = s.push(true, 0, opcode::PONG, &[1; 200]);
        let unfinished = s.push(false, 0, opcode::CLOSE, &close_payload(1000, b""));
        let unfinished_ping = s.push(false, 0, opcode::PING, b"");
        assert_eq!(
            violations(&s, s.rules()),
            [
                (long, Violation::BadControl),
                (long_pong, Violation::BadControl),
                (unfinished, Violation::BadControl),
                (unfinished_ping, Violation::BadControl),
            ]
        );
        // The stream is still followed, and a fragmented control does not open a message.
        let trace = drive(&s.bytes, &[], s.rules(), never);
        assert_eq!(trace.frames, s.expect.frames);
        assert!(trace.ends.iter().all(|&(_, boundary)| boundary));
    }
}

#[test]
fn fragmentation_out_of_place() {
    for masked in [true, false] {
        let mut s = Stream::new(masked);
        let orphan = s.push(true, 0, opcode::CONTINUATION, b"orphan");
        assert_eq!(
            violations(&s, s.rules()),
            [(orphan, Violation::Fragmentation)]
        );

        let mut s = Stream::new(masked);
        s.push(false, 0, opcode::TEXT, b"open");
        s.push(true, 0, opcode::PING, b"");
        let text = s.push(true, 0, opcode::TEXT, b"inside");
        assert_eq!(
            violations(&s, s.rules()),
            [(text, Violation::Fragmentation)]
        );

        let mut s = Stream::new(masked);
        s.push(false, 0, opcode::BINARY, b"open");
        let binary = s.push(false, 0, opcode::BINARY, b"inside");
        assert_eq!(
            violations(&s, s.rules()),
            [(binary, Violation::Fragmentation)]
        );

        // Once the message ends, a continuation is out of place again.
        let mut s = Stream::new(masked);
        s.push(false, 0, opcode::TEXT, b"a");
        s.push(true, 0, opcode::CONTINUATION, b"b");
        let late = s.push(true, 0, opcode::CONTINUATION, b"c");
        assert_eq!(
            violations(&s, s.rules()),
            [(late, Violation::Fragmentation)]
        );
    }
}

/// A header with a 64-bit length whose top bit is set.
fn overflowing_head(masked: bool) -> Vec<u8> {
    let mut raw = vec![0x82, if masked { 0xff } else { 0x7f }];
    raw.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    if masked {
        raw.extend_from_slice(&KEY);
    }
    raw
}

#[test]
fn length_with_the_top_bit_loses_the_stream() {
    for masked in [true, false] {
        let raw = overflowing_head(masked);
        assert_eq!(parse_head(&raw), Err(Violation::LengthOverflow));
        for cut in 0..10 {
            assert_eq!(parse_head(&raw[..cut]), Ok(None));
        }
        assert_eq!(parse_head(&raw[..10]), Err(Violation::LengthOverflow));
        assert!(!Violation::LengthOverflow.is_recoverable());

        let mut s = Stream::new(masked);
        s.push(true, 0, opcode::TEXT, b"before");
        let bad = s.push_raw(&raw);
        s.push_raw(b"whatever follows");
        let whole = drive(&s.bytes, &[], s.rules(), never);
        assert_eq!(whole.lost, Some((bad, Violation::LengthOverflow)));
        assert_eq!(whole.frames.len(), 1);
        for cut in 1..s.bytes.len() {
            assert_eq!(
                drive(&s.bytes, &[cut], s.rules(), never),
                whole,
                "cut at {cut}"
            );
        }
    }
    // The largest length that is allowed parses.
    let mut raw = vec![0x82, 0x7f];
    raw.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    let head = parse_head(&raw).unwrap().unwrap();
    assert_eq!(head.len, u64::MAX >> 1);
    let mut tracker = FrameTracker::new(server());
    assert_eq!(tracker.next(&raw, never), Item::Head(head));
    assert_eq!(tracker.next(&[0; 100], never), Item::Payload(100));
    assert!(!tracker.frame_done());
}

#[test]
fn max_message_counts_fragments_and_not_controls() {
    for masked in [true, false] {
        let limited = Rules::new(masked, Extensions::default(), Some(100));

        // 40 + 40 + 21 crosses 100 on the third fragment, not before.
        let mut s = Stream::new(masked);
        s.push(false, 0, opcode::TEXT, &[b'a'; 40]);
        s.push(true, 0, opcode::PING, &[0; 125]);
        s.push(false, 0, opcode::CONTINUATION, &[b'b'; 40]);
        s.push(true, 0, opcode::PONG, &[0; 125]);
        let crossing = s.push(true, 0, opcode::CONTINUATION, &[b'c'; 21]);
        assert_eq!(violations(&s, limited), [(crossing, Violation::TooBig)]);
        assert_eq!(
            Violation::TooBig.as_str(),
            "message over websocket.max_message_bytes"
        );

        // 40 + 40 + 20 is exactly the limit, and the next message starts from zero.
        let mut s = Stream::new(masked);
        s.push(false, 0, opcode::BINARY, &[0; 40]);
        s.push(false, 0, opcode::CONTINUATION, &[0; 40]);
        s.push(true, 0, opcode::CONTINUATION, &[0; 20]);
        s.push(true, 0, opcode::TEXT, &[b'x'; 100]);
        s.push(false, 0, opcode::TEXT, &[b'x'; 99]);
        s.push(true, 0, opcode::CONTINUATION, &[b'x'; 1]);
        s.push(false, 0, opcode::TEXT, &[b'x'; 0]);
        s.push(true, 0, opcode::CONTINUATION, &[b'x'; 100]);
        assert_eq!(violations(&s, limited), []);

        // One frame over the limit.
        let mut s = Stream::new(masked);
        let big = s.push(true, 0, opcode::TEXT, &[b'x'; 101]);
        assert_eq!(violations(&s, limited), [(big, Violation::TooBig)]);

        // A frame asked for whole is counted once, however often it comes back Partial.
        let limited = Rules::new(masked, Extensions::default(), Some(10));
        let mut s = Stream::new(masked);
        s.push(false, 0, opcode::TEXT, &[b'x'; 5]);
        s.push(true, 0, opcode::CONTINUATION, &[b'x'; 5]);
        let every: Vec<usize> = (1..s.bytes.len()).collect();
        let trace = drive(&s.bytes, &every, limited, |_| true);
        assert_eq!(trace.violations, []);
        assert_eq!(trace.frames, s.expect.frames);
    }
}

#[test]
fn close_code_split_between_its_bytes() {
    for masked in [true, false] {
        for code in [1000, 1001, 4321, 0xffff, 0x0100] {
            for reason in ["", "bye"] {
                let mut s = Stream::new(masked);
                s.push(true, 0, opcode::TEXT, b"hi");
                s.push_close(code, reason);
                let whole = drive(&s.bytes, &[], s.rules(), never);
                assert_eq!(whole.closes, [code]);
                assert_eq!(whole, s.expect);
                let len = s.bytes.len();
                for a in 1..len {
                    assert_eq!(drive(&s.bytes, &[a], s.rules(), never), whole, "cut at {a}");
                    for b in a + 1..len {
                        let split = drive(&s.bytes, &[a, b], s.rules(), never);
                        assert_eq!(split, whole, "cuts at {a} and {b}");
                    }
                }
                let every: Vec<usize> = (1..len).collect();
                assert_eq!(drive(&s.bytes, &every, s.rules(), never), whole);
            }
        }
        // No payload: no status received.
        let mut s = Stream::new(masked);
        s.push(true, 0, opcode::CLOSE, b"");
        s.push(true, 0, opcode::TEXT, b"after");
        let trace = drive(&s.bytes, &[], s.rules(), never);
        assert_eq!(trace.closes, [NO_STATUS]);
        assert_eq!(trace.closes, [1005]);
        // Two Closes in a row: the second's code is its own.
        let mut s = Stream::new(masked);
        s.push_close(4000, "first");
        s.push(true, 0, opcode::CLOSE, b"");
        s.push_close(1002, "");
        let every: Vec<usize> = (1..s.bytes.len()).collect();
        let trace = drive(&s.bytes, &every, s.rules(), never);
        assert_eq!(trace.closes, [4000, NO_STATUS, 1002]);
    }
}

#[test]
fn want_whole_holds_a_small_pong_until_it_is_all_there() {
    let payload = b"sb-ping!";
    let pong = frame(true, 0, opcode::PONG, payload, Some(KEY));
    assert_eq!(pong.len(), 14);
    let ours = |h: &FrameHead| h.opcode == opcode::PONG && h.len == 8;
    for cut in 1..pong.len() {
        let mut tracker = FrameTracker::new(client());
        assert_eq!(
            tracker.next(&pong[..cut], ours),
            Item::Partial,
            "cut at {cut}"
        );
        tracker.carry(&pong[..cut]);
        let mut data = tracker.take_carry().to_vec();
        assert!(!tracker.has_carry());
        data.extend_from_slice(&pong[cut..]);
        assert_eq!(data, pong);
        let Item::Head(head) = tracker.next(&data, ours) else {
            panic!("cut at {cut}: no Head");
        };
        assert_eq!(head.total_len(), data.len() as u64);
        assert_eq!(head.mask, Some(KEY));
        let unmasked: Vec<u8> = data[head.header_len..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ KEY[i % 4])
            .collect();
        assert_eq!(unmasked, payload);
        assert_eq!(
            tracker.next(&data[head.header_len..], ours),
            Item::Payload(8)
        );
        assert!(tracker.frame_done());
        assert!(tracker.at_message_boundary());
    }

    // Carried again and again in 1-byte reads, it still comes whole.
    let every: Vec<usize> = (1..pong.len()).collect();
    let trace = drive(&pong, &every, client(), ours);
    assert_eq!(trace.frames, [(0, opcode::PONG, 8)]);

    // Without want_whole, the header alone is enough.
    let mut tracker = FrameTracker::new(client());
    assert!(matches!(tracker.next(&pong[..6], never), Item::Head(_)));
    assert_eq!(tracker.next(&pong[6..9], never), Item::Payload(3));

    // A frame longer than CARRY_MAX is never held.
    let long = frame(true, 0, opcode::PONG, &[0; 20], Some(KEY));
    assert!(long.len() > CARRY_MAX);
    let mut tracker = FrameTracker::new(client());
    assert!(matches!(tracker.next(&long[..10], |_| true), Item::Head(_)));

    // Among other frames, split everywhere, the boundaries do not move.
    for masked in [true, false] {
        let mut s = Stream::new(masked);
        s.push(true, 0, opcode::TEXT, b"one");
        s.push(true, 0, opcode::PONG, payload);
        s.push(false, 0, opcode::BINARY, &[7; 300]);
        s.push(true, 0, opcode::PONG, payload);
        s.push(true, 0, opcode::PONG, b"other");
        s.push(true, 0, opcode::CONTINUATION, b"end");
        s.push(true, 0, opcode::PONG, payload);
        let whole = drive(&s.bytes, &[], s.rules(), never);
        assert_eq!(whole, s.expect);
        for cut in 1..s.bytes.len() {
            assert_eq!(
                drive(&s.bytes, &[cut], s.rules(), ours),
                whole,
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn carry_is_handed_out_once() {
    let mut tracker = FrameTracker::new(client());
    assert!(!tracker.has_carry());
    assert_eq!(tracker.take_carry(), b"");
    tracker.carry(&[0x81, 0x85, 1]);
    assert!(tracker.has_carry());
    assert_eq!(tracker.take_carry(), [0x81, 0x85, 1]);
    assert!(!tracker.has_carry());
    assert_eq!(tracker.take_carry(), b"");
}

#[test]
fn write_head_round_trips_through_parse_head() {
    let ops = [
        opcode::CONTINUATION,
        opcode::TEXT,
        opcode::BINARY,
        opcode::CLOSE,
        opcode::PING,
        opcode::PONG,
    ];
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 32] {
        for mask in [None, Some(KEY), Some([0; 4])] {
            for op in ops {
                let mut out = [0u8; MAX_HEADER];
                let n = write_head(&mut out, op, len, mask);
                let length_bytes = match len {
                    0..=125 => 0,
                    126..=65535 => 2,
                    _ => 8,
                };
                assert_eq!(n, 2 + length_bytes + if mask.is_some() { 4 } else { 0 });
                assert_eq!(&out[..n], head_bytes(true, 0, op, len, mask));
                let head = FrameHead {
                    fin: true,
                    rsv: 0,
                    opcode: op,
                    mask,
                    len: len as u64,
                    header_len: n,
                };
                assert_eq!(parse_head(&out[..n]), Ok(Some(head)));
                assert_eq!(head.is_control(), op & 0x8 != 0);
                assert_eq!(head.total_len(), (n + len) as u64);
                for cut in 0..n {
                    assert_eq!(parse_head(&out[..cut]), Ok(None), "len {len}, cut at {cut}");
                }
            }
        }
    }
}

#[test]
fn control_frames_round_trip() {
    for mask in [None, Some(KEY)] {
        for op in [opcode::PING, opcode::PONG, opcode::CLOSE] {
            for len in [0usize, 1, 2, 5, 125] {
                let payload = filler(len);
                let built = control_frame(op, &payload, mask);
                assert_eq!(built, frame(true, 0, op, &payload, mask));
                let head = parse_head(&built).unwrap().unwrap();
                assert_eq!(head.opcode, op);
                assert!(head.fin && head.is_control());
                assert_eq!(head.mask, mask);
                assert_eq!(head.total_len(), built.len() as u64);

                // The tracker of the receiving direction accepts it whole.
                let trace = drive(&built, &[], rules(mask.is_some()), never);
                assert_eq!(trace.violations, []);
                assert_eq!(trace.frames, [(0, op, len as u64)]);
                assert_eq!(trace.ends, [(built.len(), true)]);
            }
        }
    }
}

#[test]
fn close_frames_round_trip() {
    for mask in [None, Some(KEY)] {
        let rules = rules(mask.is_some());
        for (code, reason) in [(1000, ""), (1001, "going away"), (1011, "x"), (4999, "ok")] {
            let built = close_frame(code, reason, mask);
            let expected = close_payload(code, reason.as_bytes());
            assert_eq!(built, frame(true, 0, opcode::CLOSE, &expected, mask));
            let trace = drive(&built, &[], rules, never);
            assert_eq!(trace.violations, []);
            assert_eq!(trace.closes, [code]);
        }

        // A long reason is cut to fit the 125 bytes of a control frame.
        let long = "r".repeat(300);
        let built = close_frame(1000, &long, mask);
        let head = parse_head(&built).unwrap().unwrap();
        assert_eq!(head.len, 125);
        assert_eq!(
            built,
            frame(
                true,
                0,
                opcode::CLOSE,
                &close_payload(1000, &[b'r'; 123]),
                mask
            )
        );
        assert_eq!(drive(&built, &[], rules, never).closes, [1000]);

        // ... and never in the middle of a character: the reason must stay UTF-8 (§5.5.1).
        for ascii in 118..=123 {
            let reason = format!("{}{}", "a".repeat(ascii), "é€😀");
            let built = close_frame(1001, &reason, mask);
            let head = parse_head(&built).unwrap().unwrap();
            assert!(head.len <= 125);
            let key = mask.unwrap_or([0; 4]);
            let payload: Vec<u8> = built[head.header_len..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(payload[..2], 1001u16.to_be_bytes());
            let text = std::str::from_utf8(&payload[2..]).expect("reason is UTF-8");
            assert!(reason.starts_with(text));
            // As much of the reason as fits.
            assert!(text.len() > 123 - 4, "reason cut to {} bytes", text.len());
        }
    }
}

#[test]
fn violation_texts() {
    let all = [
        Violation::LengthOverflow,
        Violation::Masking,
        Violation::ReservedBits,
        Violation::ReservedOpcode,
        Violation::BadControl,
        Violation::Fragmentation,
        Violation::TooBig,
    ];
    for v in all {
        assert!(!v.as_str().is_empty());
        assert_eq!(v.is_recoverable(), v != Violation::LengthOverflow);
    }
}

/// One step of a random, valid frame sequence.
#[derive(Debug, Clone)]
enum Step {
    /// A data frame: TEXT or BINARY outside a message, CONTINUATION inside one.
    Data { binary: bool, fin: bool, len: usize },
    /// A control frame; a Close carries `code` when its length is 2 or more.
    Control { op: u8, len: usize, code: u16 },
}

fn data_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..300,
        1 => Just(0usize),
        1 => Just(125usize),
        1 => Just(126usize),
        1 => Just(127usize),
        1 => Just(65535usize),
        1 => Just(65536usize),
        1 => 65537usize..120_000,
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<bool>(), any::<bool>(), data_len())
            .prop_map(|(binary, fin, len)| Step::Data { binary, fin, len }),
        1 => (
            prop::sample::select(vec![opcode::PING, opcode::PONG, opcode::CLOSE]),
            prop_oneof![Just(0usize), Just(1usize), Just(2usize), Just(8usize), 0usize..=125, Just(125usize)],
            any::<u16>(),
        )
            .prop_map(|(op, len, code)| Step::Control { op, len, code }),
    ]
}

/// Total stream size stays under this, so that a case stays quick in a debug build.
const BUDGET: usize = 280_000;

fn build(steps: &[Step], keys: &[[u8; 4]], masked: bool) -> Stream {
    let mut s = Stream::new(masked);
    let key = |i: usize| masked.then(|| keys[i % keys.len()]);
    for (i, step) in steps.iter().enumerate() {
        match *step {
            Step::Data { binary, fin, len } => {
                let op = match (s.in_message, binary) {
                    (true, _) => opcode::CONTINUATION,
                    (false, false) => opcode::TEXT,
                    (false, true) => opcode::BINARY,
                };
                let len = if s.bytes.len() + len > BUDGET {
                    len % 300
                } else {
                    len
                };
                s.push_filler(fin, op, len, key(i));
            }
            Step::Control { op, len, code } => {
                let payload = if op == opcode::CLOSE && len >= 2 {
                    close_payload(code, &filler(len - 2))
                } else if op == opcode::CLOSE && len == 1 {
                    // A 1-byte Close is not a valid status; make it empty.
                    Vec::new()
                } else {
                    filler(len)
                };
                s.push_keyed(true, 0, op, &payload, key(i));
            }
        }
    }
    if s.in_message {
        s.push_filler(true, opcode::CONTINUATION, 3, key(steps.len()));
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_split_anywhere_keep_their_boundaries(
        steps in prop::collection::vec(step(), 1..16),
        keys in prop::collection::vec(any::<[u8; 4]>(), 1..8),
        masked in any::<bool>(),
        near in prop::collection::vec((any::<prop::sample::Index>(), 0usize..20), 0..6),
        anywhere in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        whole_pongs in any::<bool>(),
    ) {
        let s = build(&steps, &keys, masked);
        prop_assert!(s.bytes.len() < BUDGET + 4096);
        let whole = drive(&s.bytes, &[], s.rules(), never);
        prop_assert_eq!(&whole, &s.expect);

        let mut cuts: Vec<usize> = anywhere.iter().map(|i| i.index(s.bytes.len() + 1)).collect();
        cuts.extend(near.iter().map(|(i, off)| s.expect.frames[i.index(s.expect.frames.len())].0 + off));
        let want = |h: &FrameHead| whole_pongs && h.opcode == opcode::PONG;
        let split = drive(&s.bytes, &cuts, s.rules(), want);
        prop_assert_eq!(&split, &whole, "cuts {:?}", cuts);

        let split = drive(&s.bytes, &cuts, s.rules(), controls_whole);
        prop_assert_eq!(&split, &whole, "cuts {:?}, controls whole", cuts);

        if s.bytes.len() <= 4096 {
            let every: Vec<usize> = (1..s.bytes.len()).collect();
            prop_assert_eq!(&drive(&s.bytes, &every, s.rules(), want), &whole);
        }
    }
}
