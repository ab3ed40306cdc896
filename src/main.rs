//! The `switchboard` command: parse flags, load the config, set up logging, run.
//!
//! The flags follow the habits of the proxies it replaces: `-c FILE` picks the config as in
//! nginx and HAProxy, `-t` tests it as `nginx -t` does, and `SWITCHBOARD_CONFIG` sets the file
//! for a container or a unit without touching the command line.

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use switchboard::Shutdown;
use switchboard::cli::{self, PrintError, Report, descriptors::Budget};
use switchboard::config::{self, Config, LogFormat};
use switchboard::logging::{self, Color};
use switchboard::metrics::Metrics;
use switchboard::workers::{self, RuntimeMode, Workers};

const EXAMPLES: &str = "\
Examples:
  switchboard -c /etc/switchboard.toml            run
  switchboard -t -c /etc/switchboard.toml         check the config (as nginx -t); exit 0 or 1
  switchboard check --json | jq .upstreams        the same, for tools
  switchboard --print-default-config > switchboard.toml
  SWITCHBOARD_CONFIG=/etc/switchboard.toml switchboard
  switchboard -c /etc/switchboard.toml --take-over /run/switchboard/handover.sock
                                                  upgrade: take the listeners over from the running one";

/// A WebSocket-aware reverse proxy and load balancer.
#[derive(Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// The config file.
    #[arg(
        short = 'c',
        long,
        global = true,
        value_name = "FILE",
        env = "SWITCHBOARD_CONFIG",
        default_value = "config/switchboard.toml"
    )]
    config: PathBuf,
    /// Log format; overrides `[log] format` in the config.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Colour in log lines; `auto` colours only a terminal, and not with NO_COLOR set.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = ColorArg::Auto)]
    color: ColorArg,
    /// Print the commented reference config (every key, its default and why) and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Take the listening sockets over from the switchboard serving this hand-over socket (its
    /// `[admin] handover_socket`); it stops accepting once this one accepts, then drains.
    #[arg(long, value_name = "PATH")]
    take_over: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print its listeners, routes and upstreams (exit 0 if valid, 1 if
    /// not).
    #[command(visible_short_flag_alias = 't', visible_long_flag_alias = "test")]
    Check {
        /// Print a JSON document instead of text (also for an invalid config: `ok` is false).
        #[arg(long)]
        json: bool,
    },
    /// Run in front of three built-in chat backends and serve a chat page (no config file).
    Demo {
        /// Where the demo listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    let color = match cli.color {
        ColorArg::Auto => Color::Auto,
        ColorArg::Always => Color::Always,
        ColorArg::Never => Color::Never,
    };
    if cli.print_default_config {
        if cli.command.is_some() {
            usage_error("--print-default-config takes no command; run it alone");
        }
        let printed = cli::print(|out| out.write_all(cli::REFERENCE_CONFIG.as_bytes()));
        return finish(printed, ExitCode::SUCCESS);
    }
    match cli.command {
        Some(_) if cli.take_over.is_some() => {
            usage_error("--take-over starts a server; run it without a command")
        }
        Some(Command::Check { json }) => check(&cli.config, json),
        Some(Command::Demo { listen }) => {
            if given(&matches, "demo", "config") {
                usage_error(
                    "`demo` builds its own config in front of its own backends and reads no \
                     file: leave out --config",
                );
            }
            let _logs = logging::init(&logging::Settings {
                format: format.unwrap_or_default(),
                level: logging::DEFAULT_LEVEL.to_owned(),
                color,
                access: true,
            });
            runtime().block_on(async {
                match switchboard::demo::run(listen).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                }
            })
        }
        None => {
            let config = match config::load(&cli.config) {
                Ok(config) => config,
                Err(e) => return fail(e),
            };
            let logs = logging::init(&logging::Settings {
                format: format.unwrap_or(config.log_format),
                level: config.log_level.clone(),
                color,
                access: config.access_log.enabled,
            });
            serve(config, logs, cli.take_over.as_deref())
        }
    }
}

/// Whether `arg` was typed on the command line (not taken from the environment or a default)
/// for `subcommand`.
fn given(matches: &ArgMatches, subcommand: &str, arg: &str) -> bool {
    matches
        .subcommand_matches(subcommand)
        .and_then(|m| m.value_source(arg))
        == Some(ValueSource::CommandLine)
}

/// Exits 2 with clap's usage message, like any other misuse of the flags.
fn usage_error(message: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// Says `error` on stderr and fails. Never panics, even on a closed stderr.
fn fail(error: impl Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {error}");
    ExitCode::FAILURE
}

/// `code`, unless printing failed for another reason than a reader that went away
/// (`switchboard check | head -1` is not an error).
fn finish(printed: Result<(), PrintError>, code: ExitCode) -> ExitCode {
    match printed {
        Ok(()) | Err(PrintError::Closed) => code,
        Err(PrintError::Failed(e)) => fail(format_args!("cannot write to stdout: {e}")),
    }
}

fn serve(config: Config, logs: logging::Logging, take_over: Option<&Path>) -> ExitCode {
    match switchboard::listener::raise_fd_limit() {
        Ok((soft, hard)) => {
            let budget = Budget::of(&config);
            tracing::info!(soft, hard, needed = budget.needed, "open-files limit");
            if let Some(advice) = budget.advice(soft) {
                tracing::warn!(soft, needed = budget.needed, "{advice}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
    let threads = config.runtime.threads();
    let per_core = config.runtime.mode == RuntimeMode::PerCore;
    let runtime = if per_core {
        workers::event_loop().expect("the tokio runtime starts")
    } else {
        shared_runtime(threads)
    };
    runtime.block_on(async {
        // The loop `run` is called on is the first; the others get threads of their own.
        let workers = if per_core {
            match Workers::with_extra_loops(threads - 1) {
                Ok(workers) => workers,
                Err(e) => return fail(format_args!("cannot start the event loops: {e}")),
            }
        } else {
            Workers::current()
        };
        let (listeners, origin) = match switchboard::handover::obtain(&config, take_over) {
            Ok(listeners) => listeners,
            Err(e) => return fail(e),
        };
        // Before the start line: whoever reads it may send SIGTERM at once.
        let shutdown = Shutdown::new();
        switchboard::shutdown::watch_signals(shutdown.clone());
        let bound = |l: &Option<tokio::net::TcpListener>| l.as_ref()?.local_addr().ok();
        let listening = cli::listener_list(&[
            ("http", bound(&listeners.plain)),
            ("https", bound(&listeners.tls)),
            ("admin", bound(&listeners.admin)),
        ]);
        let file = config.path.as_deref().map_or_else(String::new, |path| {
            std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_owned())
                .display()
                .to_string()
        });
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %file,
            listeners = %listening,
            runtime = config.runtime.mode.as_str(),
            threads,
            "switchboard started"
        );
        let metrics = Metrics::new();
        metrics.watch_log_writer(logs.dropped.clone());
        let predecessor = origin.and_then(|origin| {
            origin.publish(&metrics);
            origin.predecessor
        });
        let loops = workers.handles();
        match switchboard::run_with(config, listeners, shutdown, metrics, loops, predecessor).await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}

/// `switchboard check`: the report on stdout, or the error on stderr (and with `--json`, an
/// `ok: false` document on stdout too, so a tool always has something to parse).
fn check(path: &Path, json: bool) -> ExitCode {
    let shown = path.display().to_string();
    match config::load(path) {
        Ok(config) => {
            let report = Report::new(&shown, &config);
            let printed = cli::print(|out| {
                if json {
                    cli::write_json(out, &report)
                } else {
                    write!(out, "{report}")
                }
            });
            finish(printed, ExitCode::SUCCESS)
        }
        Err(e) => {
            let code = fail(&e);
            if !json {
                return code;
            }
            let printed = cli::print(|out| cli::write_json_error(out, &shown, &e.to_string()));
            finish(printed, code)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    shared_runtime(workers::default_threads())
}

/// A work-stealing runtime with `threads` workers.
fn shared_runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// mimalloc: per-thread free lists suit a proxy's many small, short-lived allocations (it cut
/// CPU per WebSocket handshake by about a fifth against glibc malloc in `e2e_load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
