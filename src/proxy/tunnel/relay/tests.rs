//! The relay against writers that misbehave the way real ones do.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Direction, Flow};
use crate::proxy::tunnel::frames::{Extensions, Rules};
use crate::proxy::tunnel::gate::Gate;

/// Hands out its chunks one read at a time, then would block (or ends, with `eof`).
struct Chunks {
    chunks: VecDeque<Vec<u8>>,
    eof: bool,
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.chunks.pop_front() {
            Some(chunk) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            None if self.eof => Poll::Ready(Ok(())),
            None => Poll::Pending,
        }
    }
}

/// A writer like a TLS stream: bytes it accepts are only sent on flush. It also refuses every
/// other write at first (`Pending`), so the relay has to keep a backlog of its own.
#[derive(Default)]
struct BuffersUntilFlushed {
    buffered: Vec<u8>,
    sent: Vec<u8>,
    refuse_next: bool,
    writes: usize,
}

impl AsyncWrite for BuffersUntilFlushed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        self.refuse_next = !self.refuse_next;
        if self.refuse_next {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Takes at most 3 bytes at a time.
        let n = data.len().min(3);
        self.buffered.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let buffered = std::mem::take(&mut self.buffered);
        self.sent.extend_from_slice(&buffered);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Unmasked server frames (backend → client): a text "hello" and a binary of 20 bytes.
fn server_frames() -> Vec<u8> {
    let mut bytes = vec![0x81, 5];
    bytes.extend_from_slice(b"hello");
    bytes.extend_from_slice(&[0x82, 20]);
    bytes.extend((0..20).map(|i| i as u8));
    bytes
}

fn toward_client() -> Direction {
    Direction::new(Gate::new(
        Rules::new(false, Extensions::default(), None),
        false,
    ))
}

/// Polls until the direction would block on its reader (or ends), at most `limit` times.
fn drive(
    direction: &mut Direction,
    reader: &mut Chunks,
    writer: &mut BuffersUntilFlushed,
    limit: usize,
) -> Poll<io::Result<()>> {
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..limit {
        let mut active = false;
        match direction.poll_relay(&mut cx, reader, writer, &mut active) {
            Poll::Ready(result) => return Poll::Ready(result),
            Poll::Pending if reader.chunks.is_empty() && writer.writes > 0 && !active => {
                return Poll::Pending;
            }
            Poll::Pending => {}
        }
    }
    panic!("the relay did not settle within {limit} polls");
}

#[test]
fn the_tail_of_a_backlog_is_flushed() {
    let frames = server_frames();
    let mut reader = Chunks {
        chunks: VecDeque::from([frames.clone()]),
        eof: false,
    };
    let mut writer = BuffersUntilFlushed::default();
    let mut direction = toward_client();
    assert!(drive(&mut direction, &mut reader, &mut writer, 1000).is_pending());
    // Everything reached the peer although the reader has gone quiet: nothing sits in the
    // writer's buffer waiting for a flush that only the next read would have caused.
    assert_eq!(writer.sent, frames);
    assert!(writer.buffered.is_empty());
    assert_eq!(direction.bytes, frames.len() as u64);
}

#[test]
fn a_header_split_across_reads_is_relayed_whole_and_in_order() {
    let frames = server_frames();
    let chunks: VecDeque<Vec<u8>> = frames.iter().map(|&b| vec![b]).collect();
    let mut reader = Chunks { chunks, eof: true };
    let mut writer = BuffersUntilFlushed::default();
    let mut direction = toward_client();
    assert!(matches!(
        drive(&mut direction, &mut reader, &mut writer, 10_000),
        Poll::Ready(Ok(()))
    ));
    assert_eq!(direction.flow, Flow::Done);
    assert_eq!(writer.sent, frames);
}
