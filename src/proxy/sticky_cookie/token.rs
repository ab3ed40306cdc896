//! The sticky cookie's token, sans IO: mint one for a backend, verify one from a request.
//!
//! A token is 41 bytes in unpadded base64url (RFC 4648 §5), 55 characters, safe in a cookie
//! value (RFC 6265 §4.1.1) without quoting:
//!
//! ```text
//! version (1 byte, 1) ‖ backend id (8 bytes) ‖ HMAC-SHA256 tag (32 bytes)
//! backend id = SHA-256("UPSTREAM/SERVER")[..8]      SERVER as written in `servers`
//! tag        = HMAC-SHA256(secret, "switchboard sticky cookie\0" ‖ UPSTREAM ‖ "\0" ‖ version ‖ id)
//! ```
//!
//! The id names a backend by its config identity, not its address, and says nothing a client
//! could use; it is stable across restarts, reloads and replicas that list the same server. The
//! tag binds it to the upstream and the secret, so a client cannot name a backend of its choice,
//! and a token of one upstream is no token of another. Verification is constant-time
//! (`ring::hmac::verify`). Nothing in the token expires: `max_age` is the cookie's, and a
//! replayed token can only route its bearer to a backend it was already given.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac};

/// The format written first in every token; a new format gets a new number.
const VERSION: u8 = 1;
/// Bytes of a backend id.
const ID_LEN: usize = 8;
/// Bytes of a whole token before base64url.
const TOKEN_LEN: usize = 1 + ID_LEN + 32;
/// Characters of a whole token after base64url (no padding).
const ENCODED_LEN: usize = (TOKEN_LEN * 4).div_ceil(3);
/// Domain separation: this key signs nothing else, but a tag must not mean anything elsewhere.
const CONTEXT: &[u8] = b"switchboard sticky cookie\0";

/// A backend's stable, opaque id within its upstream.
pub type BackendId = [u8; ID_LEN];

/// The id of `server` (as written in the config) in `upstream`.
pub fn backend_id(upstream: &str, server: &str) -> BackendId {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(upstream.as_bytes());
    context.update(b"/");
    context.update(server.as_bytes());
    let hash = context.finish();
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&hash.as_ref()[..ID_LEN]);
    id
}

/// The token naming `id` in `upstream`, signed with `key`.
pub fn mint(key: &hmac::Key, upstream: &str, id: &BackendId) -> String {
    let mut token = [0u8; TOKEN_LEN];
    token[0] = VERSION;
    token[1..=ID_LEN].copy_from_slice(id);
    let tag = hmac::sign(key, &signed_bytes(upstream, &token[..=ID_LEN]));
    token[1 + ID_LEN..].copy_from_slice(tag.as_ref());
    URL_SAFE_NO_PAD.encode(token)
}

/// The backend id a token names, if it is well-formed and its tag is right for `upstream` under
/// `key`. Anything else (another version, a bad length or character, a wrong tag) is `None`.
pub fn verify(key: &hmac::Key, upstream: &str, value: &[u8]) -> Option<BackendId> {
    if value.len() != ENCODED_LEN {
        return None;
    }
    let mut token = [0u8; TOKEN_LEN];
    match URL_SAFE_NO_PAD.decode_slice(value, &mut token) {
        Ok(TOKEN_LEN) => {}
        _ => return None,
    }
    if token[0] != VERSION {
        return None;
    }
    let (signed, tag) = token.split_at(1 + ID_LEN);
    hmac::verify(key, &signed_bytes(upstream, signed), tag).ok()?;
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&signed[1..]);
    Some(id)
}

/// What the tag covers: the context, the upstream name, then version and id.
fn signed_bytes(upstream: &str, version_and_id: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(CONTEXT.len() + upstream.len() + 1 + 1 + ID_LEN);
    bytes.extend_from_slice(CONTEXT);
    bytes.extend_from_slice(upstream.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(version_and_id);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, secret)
    }

    #[test]
    fn a_minted_token_verifies_to_its_backend() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let id = backend_id("chat", "10.0.0.1:3000");
        let token = mint(&k, "chat", &id);
        assert_eq!(token.len(), ENCODED_LEN);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(verify(&k, "chat", token.as_bytes()), Some(id));
    }

    #[test]
    fn tokens_are_stable_and_name_no_address() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let id = backend_id("chat", "10.0.0.1:3000");
        assert_eq!(mint(&k, "chat", &id), mint(&k, "chat", &id));
        assert_ne!(id, backend_id("chat", "10.0.0.2:3000"));
        assert_ne!(id, backend_id("game", "10.0.0.1:3000"));
        let token = mint(&k, "chat", &id);
        assert!(!token.contains("10.0.0.1"));
    }

    #[test]
    fn another_secret_or_upstream_or_any_flipped_bit_is_refused() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let id = backend_id("chat", "10.0.0.1:3000");
        let token = mint(&k, "chat", &id);
        assert_eq!(
            verify(
                &key(b"another secret, 32 bytes long..."),
                "chat",
                token.as_bytes()
            ),
            None
        );
        assert_eq!(verify(&k, "game", token.as_bytes()), None);
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut tampered = raw.clone();
                tampered[byte] ^= 1 << bit;
                let text = URL_SAFE_NO_PAD.encode(&tampered);
                assert_eq!(verify(&k, "chat", text.as_bytes()), None, "{byte}/{bit}");
            }
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let token = mint(&k, "chat", &backend_id("chat", "a:1"));
        for bad in [
            "",
            "x",
            &token[1..],
            &format!("{token}A"),
            &format!("{}=", &token[..ENCODED_LEN - 1]),
            &"!".repeat(ENCODED_LEN),
        ] {
            assert_eq!(verify(&k, "chat", bad.as_bytes()), None, "{bad}");
        }
    }
}
