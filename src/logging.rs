//! Log output: one subscriber for the process, its level, format and colour.
//!
//! Lines go to stdout through a background writer, so a slow or blocked stdout never stalls the
//! proxy's worker threads. Colour is for people at a terminal: a log file or a log shipper gets
//! plain text, because escape codes in a file are noise that breaks `grep` and parsers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The level when neither `RUST_LOG` nor `[log] level` says otherwise.
pub const DEFAULT_LEVEL: &str = "info";

/// Lines the background writer holds before it drops new ones rather than wait.
const BUFFERED_LINES: usize = 64 * 1024;

/// `--color`: whether log lines carry ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    /// Colour when the log stream is a terminal and `NO_COLOR` is not set (<https://no-color.org>).
    #[default]
    Auto,
    /// Always colour, e.g. for `less -R`.
    Always,
    /// Never colour.
    Never,
}

/// Whether to colour: `Auto` decides from whether the log stream is a terminal and from
/// `NO_COLOR` (any non-empty value turns colour off); the explicit choices win over both.
pub fn use_colour(choice: Color, stream_is_terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => stream_is_terminal && no_color.is_none_or(str::is_empty),
    }
}

/// The filter directives in force: `RUST_LOG` when it is set and not blank (the habit of every
/// Rust program, and the quickest override at a shell), else the config's `[log] level`.
pub fn directives<'a>(rust_log: Option<&'a str>, config_level: &'a str) -> &'a str {
    match rust_log {
        Some(env) if !env.trim().is_empty() => env,
        _ => config_level,
    }
}

/// What the log subscriber is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// `[log] level`: EnvFilter directives such as `"info"` or `"warn,switchboard=debug"`.
    pub level: String,
    /// `--color`.
    pub color: Color,
    /// `[log] access`: when on, access lines are written whatever `level` says (an access log
    /// is not a verbosity; `level = "warn"` must not silence it), unless `RUST_LOG` is set.
    pub access: bool,
}

/// What logging hands back: keep `guard` alive for the whole run; `dropped` counts the lines
/// the writer had to drop (`switchboard_log_lines_dropped_total`).
pub struct Logging {
    /// Flushes what is buffered when dropped at exit.
    pub guard: tracing_appender::non_blocking::WorkerGuard,
    /// Lines dropped because the writer fell behind.
    pub dropped: tracing_appender::non_blocking::ErrorCounter,
}

/// Installs the process's subscriber. Lossy: when the writer's buffer is full, lines are
/// dropped rather than waited for, and counted.
pub fn init(settings: &Settings) -> Logging {
    let stdout = std::io::stdout();
    let colour = use_colour(
        settings.color,
        stdout.is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .finish(stdout);
    let dropped = writer.error_counter();
    let rust_log = std::env::var("RUST_LOG").ok();
    let mut wanted = directives(rust_log.as_deref(), &settings.level).to_owned();
    if settings.access && wanted == settings.level {
        wanted.push_str(",access=info");
    }
    // The config's level was checked at load; a bad RUST_LOG keeps what it can parse.
    let filter = EnvFilter::builder().parse_lossy(&wanted);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer);
    match settings.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Logging { guard, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_colours_only_a_terminal_without_no_color() {
        assert!(use_colour(Color::Auto, true, None));
        assert!(use_colour(Color::Auto, true, Some("")));
        assert!(!use_colour(Color::Auto, true, Some("1")));
        assert!(!use_colour(Color::Auto, false, None));
    }

    #[test]
    fn explicit_choices_win() {
        assert!(use_colour(Color::Always, false, Some("1")));
        assert!(!use_colour(Color::Never, true, None));
    }

    #[test]
    fn rust_log_wins_when_set() {
        assert_eq!(directives(Some("debug"), "warn"), "debug");
        assert_eq!(directives(Some("  "), "warn"), "warn");
        assert_eq!(directives(None, "warn"), "warn");
    }
}
