//! The hand-over's messages: short text lines on a Unix stream socket, the listening sockets
//! riding on the offer as SCM_RIGHTS ancillary data (through rustix's safe wrappers of
//! `sendmsg`/`recvmsg`). The text is built and parsed apart from the socket, so it is tested
//! without one.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::Role;

/// The new process's first line: what it asks for, and the protocol's version.
pub const GREETING: &str = "switchboard-take-over 1\n";
/// The new process accepts on every socket it was given.
pub const READY: &str = "ready\n";
/// The old process no longer serves the hand-over socket and stops accepting now.
pub const BYE: &str = "bye\n";
/// The old process waited too long for `ready` and keeps serving.
pub const TIMED_OUT: &str = "timeout\n";
/// More sockets than any config has (two client listeners and the admin one).
pub const MAX_SOCKETS: usize = 8;
/// Longest message either side reads.
const MAX_MESSAGE: usize = 4096;

/// What the old process answers to the greeting.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// The listeners, in the order of the sockets attached.
    Listeners(Vec<(Role, SocketAddr)>),
    /// No hand-over, and why.
    Refused(String),
}

/// The offer's text: `listeners N`, one `ROLE ADDR` line per socket, `end`.
pub fn offer_text(listeners: &[(Role, SocketAddr)]) -> String {
    let mut text = format!("listeners {}\n", listeners.len());
    for (role, addr) in listeners {
        text.push_str(&format!("{} {addr}\n", role.as_str()));
    }
    text.push_str("end\n");
    text
}

/// A refusal's text, on one line.
pub fn refusal_text(reason: &str) -> String {
    format!("refused {}\n", reason.replace(['\n', '\r'], " "))
}

/// Whether `text` is a whole offer or refusal (so reading can stop).
fn complete(text: &str) -> bool {
    text.ends_with("\nend\n") || (text.starts_with("refused ") && text.ends_with('\n'))
}

/// Parses an offer or a refusal.
pub fn parse_offer(text: &str) -> Result<Offer, String> {
    if let Some(reason) = text.strip_prefix("refused ") {
        return Ok(Offer::Refused(reason.trim_end().to_owned()));
    }
    let mut lines = text.lines();
    let count: usize = lines
        .next()
        .and_then(|l| l.strip_prefix("listeners "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("not an offer of listeners: {text:?}"))?;
    let mut listeners = Vec::with_capacity(count.min(MAX_SOCKETS));
    for line in lines.by_ref().take(count) {
        let (role, addr) = line
            .split_once(' ')
            .ok_or_else(|| format!("bad listener line {line:?}"))?;
        let role = Role::parse(role).ok_or_else(|| format!("unknown listener kind {role:?}"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("bad listener address {addr:?}"))?;
        listeners.push((role, addr));
    }
    if listeners.len() != count || lines.next() != Some("end") {
        return Err(format!("offer cut short: {text:?}"));
    }
    Ok(Offer::Listeners(listeners))
}

/// Sends the offer with its sockets attached.
pub fn send_offer(
    stream: &UnixStream,
    listeners: &[(Role, SocketAddr, OwnedFd)],
) -> io::Result<()> {
    let text = offer_text(
        &listeners
            .iter()
            .map(|(role, addr, _)| (*role, *addr))
            .collect::<Vec<_>>(),
    );
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, _, fd)| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("too many sockets for one message"));
    }
    let bytes = text.as_bytes();
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // The sockets went with the first byte; the rest of a short write is plain text.
    (&*stream).write_all(&bytes[sent..])
}

/// Receives the offer (or refusal) and the sockets attached to it, each close-on-exec.
pub fn recv_offer(stream: &UnixStream) -> io::Result<(Offer, Vec<OwnedFd>)> {
    let mut text = Vec::new();
    let mut fds = Vec::new();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    while !complete(&String::from_utf8_lossy(&text)) {
        let mut buf = [0u8; 512];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::other(
                "more sockets were sent than this version takes",
            ));
        }
        if got.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the running switchboard closed the connection before it offered its listeners",
            ));
        }
        text.extend_from_slice(&buf[..got.bytes]);
        if text.len() > MAX_MESSAGE {
            return Err(io::Error::other("the offer is too long"));
        }
    }
    let text = String::from_utf8(text).map_err(|_| io::Error::other("the offer is not text"))?;
    let offer = parse_offer(&text).map_err(io::Error::other)?;
    Ok((offer, fds))
}

/// Reads one line, byte by byte (so nothing after it is consumed); an empty string at the end
/// of the stream.
pub fn read_line(mut stream: impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_MESSAGE {
            return Err(io::Error::other("line too long"));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_reads_back_as_written() {
        let listeners = vec![
            (Role::Http, "0.0.0.0:8080".parse().unwrap()),
            (Role::Https, "[::]:8443".parse().unwrap()),
            (Role::Admin, "127.0.0.1:9100".parse().unwrap()),
        ];
        let text = offer_text(&listeners);
        assert!(complete(&text));
        assert_eq!(parse_offer(&text), Ok(Offer::Listeners(listeners)));
    }

    #[test]
    fn an_empty_offer_is_an_offer() {
        assert_eq!(parse_offer(&offer_text(&[])), Ok(Offer::Listeners(vec![])));
    }

    #[test]
    fn a_refusal_keeps_its_reason_on_one_line() {
        let text = refusal_text("draining\nnow");
        assert!(complete(&text));
        assert_eq!(
            parse_offer(&text),
            Ok(Offer::Refused("draining now".into()))
        );
    }

    #[test]
    fn broken_offers_are_errors() {
        for text in [
            "listeners 2\nhttp 127.0.0.1:1\nend\n",
            "listeners 1\nhttp 127.0.0.1:1\n",
            "listeners 1\nsmtp 127.0.0.1:25\nend\n",
            "listeners 1\nhttp nowhere\nend\n",
            "hello\n",
        ] {
            assert!(parse_offer(text).is_err(), "{text:?}");
        }
        assert!(!complete("listeners 1\nhttp 127.0.0.1:1\n"));
    }
}
