//! `[admin]`: the bearer token of the `/admin/*` endpoints, read from `token_file` now so a
//! missing or empty file stops the start instead of leaving the endpoints open.

use super::Checker;
use crate::config::ConfigError;
use crate::config::raw::RawAdmin;

/// The token in `admin.token_file` (surrounding whitespace trimmed), `None` without the key.
pub(super) fn token(check: &Checker, raw: &RawAdmin) -> Result<Option<String>, ConfigError> {
    let key = "admin.token_file";
    let Some(file) = &raw.token_file else {
        return Ok(None);
    };
    let path = file.get_ref();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return check.error(
                file.span(),
                key,
                format!("cannot read `{path}`: {e}"),
                Some("check the path; relative paths start from the working directory".into()),
            );
        }
    };
    let token = text.trim();
    if token.is_empty() {
        return check.error(
            file.span(),
            key,
            format!("`{path}` is empty, so no request could authenticate"),
            Some("write the token on one line, e.g. `openssl rand -hex 32 > FILE`".into()),
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return check.error(
            file.span(),
            key,
            format!("the token in `{path}` has spaces, line breaks or non-ASCII characters"),
            Some(
                "a bearer token is one word of visible ASCII, e.g. from `openssl rand -hex 32`"
                    .into(),
            ),
        );
    }
    Ok(Some(token.to_owned()))
}
