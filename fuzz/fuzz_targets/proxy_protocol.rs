//! The PROXY protocol parser (`proxy_protocol::parse`) on arbitrary bytes, as a listener reads
//! them.
//!
//! Input: a flags byte (bit 0: v2 instead of v1; bits 1-3: how short each read falls of what
//! the parser asked for), then the connection's first bytes.
//!
//! Checked: no panic; a header found in the whole input is found again in its own bytes (what
//! follows it changes nothing) and is no longer than the input; reading as a socket does (the
//! parser says how many bytes it needs at least, a read may bring fewer) reaches the same
//! answer, never asks for a byte past the header's end, and never asks for zero; an error on a
//! prefix is an error on the whole; a v1 header is at most 107 bytes; a found address encodes
//! (`proxy_protocol::encode`) into a header that parses back to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::proxy_protocol::parse::{Parsed, V1_MAX, parse};
use switchboard::proxy_protocol::{Header, Version, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let version = if flags & 1 == 1 {
        Version::V2
    } else {
        Version::V1
    };
    let shortfall = usize::from((flags >> 1) & 0x07);
    let whole = parse(version, bytes);
    if let Ok(Parsed::Done { header, len }) = whole {
        assert!(len <= bytes.len());
        assert_eq!(
            parse(version, &bytes[..len]),
            whole,
            "the header alone parses the same"
        );
        if version == Version::V1 {
            assert!(len <= V1_MAX);
        }
        if let Header::Proxied {
            source,
            destination,
        } = header
        {
            let again = encode::header(version, source, destination);
            let reparsed = parse(version, &again);
            assert_eq!(
                reparsed,
                Ok(Parsed::Done {
                    header,
                    len: again.len()
                })
            );
        }
    }

    // As a socket reads: each read brings what was asked for, less `shortfall` (at least one).
    let mut taken = 0;
    let incremental = loop {
        let step = parse(version, &bytes[..taken]);
        match step {
            Ok(Parsed::Need(more)) => {
                assert!(more > 0, "Need(0) never progresses");
                if let Ok(Parsed::Done { len, .. }) = whole {
                    assert!(taken + more <= len, "asked for bytes past the header");
                }
                if taken == bytes.len() {
                    break step;
                }
                let read = more.saturating_sub(shortfall).max(1);
                taken = (taken + read).min(bytes.len());
            }
            other => break other,
        }
    };
    match (&whole, &incremental) {
        (Ok(Parsed::Done { .. }), _) => assert_eq!(incremental, whole),
        (Err(_), _) => assert!(
            incremental.is_err(),
            "{whole:?} whole, {incremental:?} read by read"
        ),
        (Ok(Parsed::Need(_)), _) => assert!(matches!(incremental, Ok(Parsed::Need(_)))),
    }
    if incremental.is_err() {
        assert!(
            whole.is_err(),
            "an error on a prefix is an error on the whole"
        );
    }
});
