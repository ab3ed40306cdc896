//! Guards the cost of following WebSocket frame boundaries in a tunnel: the relay walks every
//! chunk it reads through a `FrameTracker` (headers parsed, payloads skipped, split headers
//! carried to the next read), on every chunk of every tunnel. Measured per message for small
//! masked client messages one per read, 4 KiB messages one per read, a 16 KiB read holding
//! many small frames, and a 1 MiB message fragmented in 16 KiB frames read 16 KiB at a time.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::proxy::tunnel::frames::{
    CARRY_MAX, Extensions, FrameTracker, Item, MAX_HEADER, Rules, opcode, write_head,
};

/// Bytes per read in the relay.
const CHUNK: usize = 16 * 1024;

const KEY: [u8; 4] = [0x9d, 0x31, 0x5a, 0xe2];

/// Appends a masked client frame with a payload of `len` bytes (their content does not matter
/// to the tracker).
fn push_frame(stream: &mut Vec<u8>, op: u8, fin: bool, len: usize) {
    let mut head = [0u8; MAX_HEADER];
    let n = write_head(&mut head, op, len, Some(KEY));
    if !fin {
        head[0] &= 0x7f;
    }
    stream.extend_from_slice(&head[..n]);
    stream.resize(stream.len() + len, 0x5a);
}

/// What one relay direction reads, chunk by chunk, and how many messages that is.
struct Recording {
    chunks: Vec<Vec<u8>>,
    messages: u64,
}

/// `messages` unfragmented text messages of `len` bytes, one message per read.
fn one_per_read(messages: usize, len: usize) -> Recording {
    let chunks = (0..messages)
        .map(|_| {
            let mut chunk = Vec::new();
            push_frame(&mut chunk, opcode::TEXT, true, len);
            chunk
        })
        .collect();
    Recording {
        chunks,
        messages: messages as u64,
    }
}

/// `stream` cut into reads of `CHUNK` bytes (frame headers end up split across reads).
fn cut(stream: &[u8], messages: usize) -> Recording {
    Recording {
        chunks: stream.chunks(CHUNK).map(<[u8]>::to_vec).collect(),
        messages: messages as u64,
    }
}

/// 16 reads of 16 KiB, each holding about 234 frames of 64 bytes.
fn packed_small() -> Recording {
    let mut stream = Vec::new();
    let mut messages = 0;
    while stream.len() < 16 * CHUNK {
        push_frame(&mut stream, opcode::BINARY, true, 64);
        messages += 1;
    }
    cut(&stream, messages)
}

/// One 1 MiB message in 64 fragments of 16 KiB.
fn fragmented_large() -> Recording {
    let mut stream = Vec::new();
    let fragments = (1 << 20) / CHUNK;
    for i in 0..fragments {
        let op = if i == 0 {
            opcode::BINARY
        } else {
            opcode::CONTINUATION
        };
        push_frame(&mut stream, op, i + 1 == fragments, CHUNK);
    }
    cut(&stream, 1)
}

/// Walks every chunk through a tracker as a relay direction does; returns the frames ended.
fn walk(recording: &Recording, rules: Rules) -> u64 {
    let mut tracker = FrameTracker::new(rules);
    let mut joined = Vec::with_capacity(CARRY_MAX + CHUNK);
    let mut frames = 0;
    for chunk in &recording.chunks {
        let carried = tracker.take_carry();
        let buf: &[u8] = if carried.is_empty() {
            chunk
        } else {
            joined.clear();
            joined.extend_from_slice(carried);
            joined.extend_from_slice(chunk);
            &joined
        };
        let mut pos = 0;
        while pos < buf.len() {
            pos += match tracker.next(&buf[pos..], |_| false) {
                Item::Head(head) => head.header_len,
                Item::Payload(n) => n,
                Item::Partial => {
                    tracker.carry(&buf[pos..]);
                    break;
                }
                Item::Bad(violation, _) => panic!("bench stream breaks the rules: {violation:?}"),
            };
            if tracker.frame_done() {
                frames += 1;
            }
        }
    }
    frames
}

fn tracker(c: &mut Criterion) {
    let rules = Rules::new(true, Extensions::default(), Some(16 << 20));
    let cases = [
        ("64B_per_read", one_per_read(256, 64)),
        ("4KiB_per_read", one_per_read(64, 4096)),
        ("64B_packed_16KiB_reads", packed_small()),
        ("1MiB_in_16KiB_fragments", fragmented_large()),
    ];
    let mut group = c.benchmark_group("frames");
    for (name, recording) in &cases {
        assert!(walk(recording, rules) >= recording.messages);
        group.throughput(Throughput::Elements(recording.messages));
        group.bench_with_input(
            BenchmarkId::new("walk", name),
            recording,
            |bench, recording| bench.iter(|| black_box(walk(black_box(recording), rules))),
        );
    }
    group.finish();
}

criterion_group!(benches, tracker);
criterion_main!(benches);
