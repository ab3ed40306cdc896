//! Parser and encoder tests: every form of both versions, and the reads the parser asks for
//! never passing the header's end.

use std::net::SocketAddr;

use super::parse::{ParseError, Parsed, V2_SIGNATURE, parse};
use super::{Header, Version, encode};

/// Parses `bytes` as a reader would: reading exactly what each `Need` asks for. Returns the
/// outcome and how many bytes were taken; the bytes behind the header must never be taken.
fn read_like_a_socket(version: Version, bytes: &[u8]) -> (Result<Header, ParseError>, usize) {
    let mut taken = 0;
    for _ in 0..200 {
        match parse(version, &bytes[..taken]) {
            Ok(Parsed::Done { header, len }) => {
                assert_eq!(len, taken, "Done covers exactly what was read");
                return (Ok(header), taken);
            }
            Ok(Parsed::Need(n)) => {
                assert!(n > 0, "Need(0) would never progress");
                if taken == bytes.len() {
                    return (Err(ParseError::Malformed("input ended")), taken);
                }
                // A socket may give fewer bytes than asked for.
                taken = (taken + n).min(bytes.len());
            }
            Err(e) => return (Err(e), taken),
        }
    }
    panic!("no answer after 200 reads");
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn proxied(src: &str, dst: &str) -> Header {
    Header::Proxied {
        source: addr(src),
        destination: addr(dst),
    }
}

const BEHIND: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let cases: [(&[u8], Header); 5] = [
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            proxied("192.168.0.1:56324", "192.168.0.11:443"),
        ),
        (
            b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
            proxied("0.0.0.0:0", "0.0.0.0:0"),
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 80\r\n",
            proxied("[2001:db8::1]:65535", "[2001:db8::2]:80"),
        ),
        (b"PROXY TCP6 :: :: 1 2\r\n", proxied("[::]:1", "[::]:2")),
        (b"PROXY UNKNOWN\r\n", Header::Local),
    ];
    for (line, want) in cases {
        let mut stream = line.to_vec();
        stream.extend_from_slice(BEHIND);
        let (got, taken) = read_like_a_socket(Version::V1, &stream);
        assert_eq!(got, Ok(want), "{}", String::from_utf8_lossy(line));
        assert_eq!(taken, line.len(), "nothing behind the header is read");
    }
    let unknown = b"PROXY UNKNOWN ffff:f...f:ffff 127.0.0.1 1 2\r\nGET";
    assert_eq!(
        read_like_a_socket(Version::V1, unknown).0,
        Ok(Header::Local)
    );
}

#[test]
fn v1_malformed_lines_are_refused() {
    let bad: [&[u8]; 14] = [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 2001:db8::2 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY UNKNOWN\x01\r\n",
    ];
    for line in bad {
        let (got, _) = read_like_a_socket(Version::V1, line);
        assert!(
            matches!(got, Err(ParseError::Malformed(_))),
            "{:?}: {got:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn v1_missing_truncated_and_oversize() {
    for other in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01\x02\x00",
        b"proxy ",
        &V2_SIGNATURE,
    ] {
        assert_eq!(
            read_like_a_socket(Version::V1, other).0,
            Err(ParseError::Missing("v1"))
        );
    }
    // Cut anywhere: always "need more", never a header.
    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 80\r\n";
    for cut in 0..line.len() {
        assert!(
            matches!(parse(Version::V1, &line[..cut]), Ok(Parsed::Need(_))),
            "cut at {cut}"
        );
    }
    // 107 bytes is the most; UNKNOWN may fill them, one more is refused.
    let mut longest = b"PROXY UNKNOWN ".to_vec();
    longest.resize(105, b'x');
    longest.extend_from_slice(b"\r\n");
    assert_eq!(
        read_like_a_socket(Version::V1, &longest).0,
        Ok(Header::Local)
    );
    let mut over = b"PROXY UNKNOWN ".to_vec();
    over.resize(106, b'x');
    over.extend_from_slice(b"\r\n");
    assert!(matches!(
        read_like_a_socket(Version::V1, &over).0,
        Err(ParseError::TooLong(_))
    ));
    // A TCP6 line cannot grow past 107 either: refused as soon as it must.
    let mut long6 = b"PROXY TCP6 ".to_vec();
    long6.extend(std::iter::repeat_n(b':', 45));
    long6.push(b' ');
    long6.extend(std::iter::repeat_n(b':', 45));
    assert!(read_like_a_socket(Version::V1, &long6).0.is_err());
}

/// A v2 header with `command`, `family` and `block`.
fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

#[test]
fn v2_ipv4_ipv6_local_and_tlvs() {
    let v4_block = [203, 0, 113, 7, 10, 0, 0, 1, 0x16, 0x2e, 0x01, 0xbb];
    let mut v6_block = Vec::new();
    v6_block.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6_block.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6_block.extend_from_slice(&[0x16, 0x2e, 0x00, 0x50]);
    // TLVs after the addresses: ALPN "h2", and AWS's VPC endpoint id (type 0xEA).
    let mut with_tlvs = v4_block.to_vec();
    with_tlvs.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
    with_tlvs.extend_from_slice(&[0xea, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e']);
    let cases = [
        (
            v2(1, 0x11, &v4_block),
            proxied("203.0.113.7:5678", "10.0.0.1:443"),
        ),
        (
            v2(1, 0x21, &v6_block),
            proxied("[2001:db8::7]:5678", "[2001:db8::1]:80"),
        ),
        (
            v2(1, 0x11, &with_tlvs),
            proxied("203.0.113.7:5678", "10.0.0.1:443"),
        ),
        (v2(0, 0x00, &[]), Header::Local),
        // LOCAL with a block (and any family): the block is discarded.
        (v2(0, 0x11, &v4_block), Header::Local),
        // UNSPEC and UNIX: nothing usable, the connection's own addresses are used.
        (v2(1, 0x00, &[]), Header::Local),
        (v2(1, 0x31, &[0; 216]), Header::Local),
    ];
    for (header, want) in cases {
        let mut stream = header.clone();
        stream.extend_from_slice(BEHIND);
        let (got, taken) = read_like_a_socket(Version::V2, &stream);
        assert_eq!(got, Ok(want));
        assert_eq!(taken, header.len(), "nothing behind the header is read");
    }
}

#[test]
fn v2_bad_signature_truncated_oversize_and_malformed() {
    let v4_block = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
    assert_eq!(
        read_like_a_socket(Version::V2, b"GET / HTTP/1.1\r\n").0,
        Err(ParseError::Missing("v2"))
    );
    assert_eq!(
        read_like_a_socket(Version::V2, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").0,
        Err(ParseError::Missing("v2"))
    );
    let mut bad_sig = v2(1, 0x11, &v4_block);
    bad_sig[11] = b'X';
    assert_eq!(
        read_like_a_socket(Version::V2, &bad_sig).0,
        Err(ParseError::Missing("v2"))
    );
    let whole = v2(1, 0x11, &v4_block);
    for cut in 0..whole.len() {
        assert!(
            matches!(parse(Version::V2, &whole[..cut]), Ok(Parsed::Need(_))),
            "cut at {cut}"
        );
    }
    let mut version1 = whole.clone();
    version1[12] = 0x11;
    let mut command2 = whole.clone();
    command2[12] = 0x22;
    let malformed = [
        version1,
        command2,
        v2(1, 0x41, &v4_block),
        v2(1, 0x12, &v4_block),
        v2(1, 0x11, &v4_block[..11]),
        v2(1, 0x21, &[0; 35]),
    ];
    for header in malformed {
        let (got, _) = read_like_a_socket(Version::V2, &header);
        assert!(
            matches!(got, Err(ParseError::Malformed(_))),
            "{header:?}: {got:?}"
        );
    }
    let mut oversize = V2_SIGNATURE.to_vec();
    oversize.extend_from_slice(&[0x21, 0x11, 0x10, 0x01]);
    assert!(matches!(
        parse(Version::V2, &oversize),
        Err(ParseError::TooLong(_))
    ));
}

#[test]
fn encoded_headers_parse_back() {
    let pairs = [
        (
            "203.0.113.7:5678",
            "10.0.0.1:443",
            "203.0.113.7:5678",
            "10.0.0.1:443",
        ),
        ("[2001:db8::7]:1", "[::1]:2", "[2001:db8::7]:1", "[::1]:2"),
        // Mixed families: the IPv4 side goes as IPv4-mapped IPv6.
        (
            "203.0.113.7:5678",
            "[::1]:2",
            "[::ffff:203.0.113.7]:5678",
            "[::1]:2",
        ),
    ];
    for version in [Version::V1, Version::V2] {
        for (src, dst, want_src, want_dst) in pairs {
            let bytes = encode::header(version, addr(src), addr(dst));
            let (got, taken) = read_like_a_socket(version, &bytes);
            assert_eq!(
                got,
                Ok(proxied(want_src, want_dst)),
                "{version:?} {src} {dst}"
            );
            assert_eq!(taken, bytes.len());
        }
        let local = encode::local(version);
        assert_eq!(
            read_like_a_socket(version, local),
            (Ok(Header::Local), local.len())
        );
    }
}
