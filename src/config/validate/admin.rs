//! `[admin]`: the bearer token of the `/admin/*` endpoints, read from `token_file` now so a
//! missing or empty file stops the start instead of leaving the endpoints open; and the
//! hand-over socket's path, checked now so that a take-over does not fail for want of a
//! directory when it is needed.

use std::path::{Path, PathBuf};

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

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `admin.handover_socket`, `None` without the key.
pub(super) fn handover_socket(
    check: &Checker,
    raw: &RawAdmin,
) -> Result<Option<PathBuf>, ConfigError> {
    let key = "admin.handover_socket";
    let Some(value) = &raw.handover_socket else {
        return Ok(None);
    };
    let path = value.get_ref();
    if path.is_empty() {
        return check.error(
            value.span(),
            key,
            "the path is empty",
            Some("e.g. \"/run/switchboard/handover.sock\", or leave the key out".into()),
        );
    }
    if path.len() > MAX_SOCKET_PATH {
        return check.error(
            value.span(),
            key,
            format!(
                "`{path}` is {} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                path.len()
            ),
            Some("use a shorter path, e.g. under /run/switchboard/".into()),
        );
    }
    let dir = match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return check.error(
            value.span(),
            key,
            format!("the directory `{}` does not exist", dir.display()),
            Some(
                "create it, writable only by switchboard's user (systemd: RuntimeDirectory=switchboard)"
                    .into(),
            ),
        );
    }
    Ok(Some(PathBuf::from(path)))
}
