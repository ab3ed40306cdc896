//! `sticky_cookie = { name, secret_file, max_age }` on an upstream. The secret is read here, at
//! load (and so at every reload), so a missing or weak secret stops the start with the line of
//! the key at fault instead of surfacing as cookies that no replica honours.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawStickyCookie;
use crate::config::{ConfigError, StickyCookie};

/// Fewer secret bytes than this are refused: a short HMAC key can be guessed offline from one
/// cookie, and then anyone can forge a route to the backend of their choice.
pub(crate) const MIN_SECRET_BYTES: usize = 16;

/// The cookie name when none is written.
const DEFAULT_NAME: &str = "sb_route";

/// The validated cookie settings of upstream `name`, with the secret loaded.
pub(super) fn sticky_cookie(
    check: &Checker,
    name: &str,
    spanned: &Spanned<RawStickyCookie>,
) -> Result<StickyCookie, ConfigError> {
    let raw = spanned.get_ref();
    let key = |field: &str| format!("upstream.{name}.sticky_cookie.{field}");
    let cookie_name = match &raw.name {
        None => DEFAULT_NAME.to_owned(),
        Some(n) if is_cookie_name(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            return check.error(
                n.span(),
                &key("name"),
                format!("`{}` is not a cookie name", n.get_ref()),
                Some(
                    "use letters, digits and `_` or `-`, e.g. name = \"sb_route\" (no spaces, \
                     `=`, `;` or quotes)"
                        .into(),
                ),
            );
        }
    };
    let Some(file) = &raw.secret_file else {
        return check.error(
            spanned.span(),
            &key("secret_file"),
            "a sticky cookie needs a secret to sign it with",
            Some(
                "add secret_file = \"PATH\" naming a file of at least 32 random bytes, made with \
                 e.g. `openssl rand -base64 32 > PATH` (the same file on every replica)"
                    .into(),
            ),
        );
    };
    let path = file.get_ref();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            return check.error(
                file.span(),
                &key("secret_file"),
                format!("cannot read `{path}`: {e}"),
                Some("check the path; relative paths start from the working directory".into()),
            );
        }
    };
    let secret = secret_bytes(&bytes);
    if secret.len() < MIN_SECRET_BYTES {
        return check.error(
            file.span(),
            &key("secret_file"),
            format!(
                "`{path}` holds {} bytes; a signing secret needs at least {MIN_SECRET_BYTES}",
                secret.len()
            ),
            Some("write at least 32 random bytes, e.g. `openssl rand -base64 32 > FILE`".into()),
        );
    }
    let max_age = match &raw.max_age {
        None => None,
        Some(m) => {
            let age = match crate::config::parse_duration(m.get_ref()) {
                Ok(age) => age,
                Err(error) => {
                    return check.error(
                        m.span(),
                        &key("max_age"),
                        error.to_string(),
                        Some(error.hint()),
                    );
                }
            };
            if age < Duration::from_secs(1) {
                return check.error(
                    m.span(),
                    &key("max_age"),
                    "must be at least 1s (Max-Age counts whole seconds)",
                    Some(
                        "write e.g. \"1h\", or leave max_age out for a cookie that lasts until \
                         the browser closes"
                            .into(),
                    ),
                );
            }
            Some(Duration::from_secs(age.as_secs()))
        }
    };
    Ok(StickyCookie {
        name: cookie_name,
        secret_file: PathBuf::from(path),
        key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        max_age,
    })
}

/// The secret is the file's bytes without trailing line breaks, so a file written by `echo` or
/// an editor and one written by `printf` give every replica the same key.
fn secret_bytes(file: &[u8]) -> &[u8] {
    let end = file
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    &file[..end]
}

/// An RFC 6265 §4.1.1 cookie-name: an RFC 9110 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_line_breaks_are_not_secret() {
        assert_eq!(secret_bytes(b"abc\r\n"), b"abc");
        assert_eq!(secret_bytes(b"abc\n\n"), b"abc");
        assert_eq!(secret_bytes(b" abc "), b" abc ");
        assert_eq!(secret_bytes(b"\n"), b"");
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(is_cookie_name("sb_route"));
        assert!(is_cookie_name("__Host-route"));
        for bad in ["", "a b", "a=b", "a;b", "\"a\"", "é"] {
            assert!(!is_cookie_name(bad), "{bad}");
        }
    }
}
