//! What the `switchboard` command reports and decides, apart from parsing its flags: the
//! `check` report in text and JSON, the open-files budget, the start line, and writing to a
//! stdout that may be closed. Kept in the library so each part is unit-tested; `main.rs` only
//! wires flags to these.

pub mod descriptors;
pub mod report;
mod text;
pub mod words;

use std::io::{self, Write};
use std::net::SocketAddr;

pub use report::Report;

/// The commented reference config, as `switchboard --print-default-config` prints it: every
/// key, its default and why one would change it.
pub const REFERENCE_CONFIG: &str = include_str!("../../config/switchboard.toml");

/// Why the command could not finish printing.
#[derive(Debug)]
pub enum PrintError {
    /// The reader went away (`switchboard check | head -1`): not a failure of the command.
    Closed,
    /// Any other write error (a full disk, say).
    Failed(io::Error),
}

/// Writes `body` to a locked, buffered stdout and flushes it. A closed pipe is
/// [`PrintError::Closed`] rather than the panic of `println!`, so the caller can exit quietly.
pub fn print(body: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), PrintError> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    body(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => PrintError::Closed,
            _ => PrintError::Failed(e),
        })
}

/// The JSON form of a report (pretty, one key per line, so it also diffs well).
pub fn write_json(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

/// The JSON `check --json` prints for an invalid config: `ok` false and the error as
/// `check` prints it.
pub fn write_json_error(out: &mut dyn Write, config: &str, error: &str) -> io::Result<()> {
    let doc = serde_json::json!({ "config": config, "ok": false, "error": error });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

/// The listeners of the start line, as bound (so port 0 shows the port the system chose):
/// `http 127.0.0.1:8080, https 0.0.0.0:8443, admin 127.0.0.1:9100`.
pub fn listener_list(listeners: &[(&str, Option<SocketAddr>)]) -> String {
    let bound: Vec<String> = listeners
        .iter()
        .filter_map(|(kind, addr)| addr.map(|addr| format!("{kind} {addr}")))
        .collect();
    if bound.is_empty() {
        "none".to_owned()
    } else {
        bound.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_list_skips_absent_listeners() {
        let addr = |s: &str| Some(s.parse().unwrap());
        assert_eq!(
            listener_list(&[
                ("http", addr("127.0.0.1:80")),
                ("https", None),
                ("admin", addr("127.0.0.1:9100"))
            ]),
            "http 127.0.0.1:80, admin 127.0.0.1:9100"
        );
        assert_eq!(listener_list(&[("http", None)]), "none");
    }

    #[test]
    fn the_reference_config_is_the_shipped_file() {
        assert!(REFERENCE_CONFIG.starts_with("# switchboard reference configuration"));
    }
}
