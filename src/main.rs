//! The `switchboard` command: parse flags, load the config, set up logging, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use switchboard::config::{self, Config, LogFormat};
use switchboard::metrics::Metrics;
use switchboard::{Listeners, Shutdown};

/// A WebSocket-aware reverse proxy and load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = "config/switchboard.toml")]
    config: PathBuf,
    /// Log format; overrides `[log] format` in the config.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print the resolved routes and upstreams (exit 0 if valid, 1 if not).
    Check,
    /// Run in front of three built-in chat backends and serve a chat page.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flag_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::Demo { listen }) => {
            let (_logs, _) = init_logging(flag_format.unwrap_or_default());
            runtime().block_on(async {
                match switchboard::demo::run(listen).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        None => {
            let config = match config::load(&cli.config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (_logs, drops) = init_logging(flag_format.unwrap_or(config.log_format));
            serve(config, drops)
        }
    }
}

fn serve(config: Config, log_drops: tracing_appender::non_blocking::ErrorCounter) -> ExitCode {
    match switchboard::listener::raise_fd_limit() {
        Ok((soft, hard)) => {
            tracing::info!(soft, hard, "open-files limit");
            // One descriptor per client connection, one per tunnel's backend connection (an
            // HTTP/2 connection may carry many tunnels), and some for listeners, logs, pools.
            let needed =
                config.limits.max_connections as u64 + config.limits.max_tunnels as u64 + 64;
            if needed > soft {
                tracing::warn!(
                    max_connections = config.limits.max_connections,
                    max_tunnels = config.limits.max_tunnels,
                    soft,
                    "limits.max_connections + limits.max_tunnels need about {needed} descriptors; raise `ulimit -n` or lower them"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
    runtime().block_on(async {
        let listeners = match Listeners::bind(&config) {
            Ok(listeners) => listeners,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            listen = %config.listen,
            admin = %config.admin.map_or("off".to_owned(), |a| a.to_string()),
            "switchboard started"
        );
        let shutdown = Shutdown::new();
        switchboard::shutdown::watch_signals(shutdown.clone());
        let metrics = Metrics::new();
        metrics.watch_log_writer(log_drops);
        match switchboard::run(config, listeners, shutdown, metrics).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}: ok", path.display());
    if let Some(plain) = config.plain_listen() {
        println!("listen {plain} (http)");
    }
    if let Some(tls) = config.tls_listen() {
        println!("listen {tls} (https)");
    }
    if let Some(admin) = config.admin {
        println!("admin  {admin}");
    }
    println!("routes:");
    for route in &config.routes {
        let host = match &route.host {
            None => "*".to_owned(),
            Some(config::HostPattern::Exact(h)) => h.clone(),
            Some(config::HostPattern::Wildcard(suffix)) => format!("*{suffix}"),
        };
        println!(
            "  {host}{} -> {}",
            route.path_prefix, config.upstreams[route.upstream].name
        );
    }
    if let Some(tls) = &config.tls {
        println!("certificates:");
        for (i, cert) in tls.certificates.iter().enumerate() {
            let chosen_for = if cert.server_names.is_empty() {
                "its own names".to_owned()
            } else {
                cert.server_names.join(", ")
            };
            println!(
                "  {}{}: names {}; chosen for {chosen_for}; expires {}",
                cert.cert.display(),
                if i == 0 { " (default)" } else { "" },
                cert.info.names.join(", "),
                cert.info.not_after_text,
            );
        }
    }
    println!("upstreams:");
    for upstream in &config.upstreams {
        let mut strategy = format!("{:?}", upstream.balance);
        if let Some(key) = &upstream.hash_key {
            strategy.push_str(&format!(" on {key:?}"));
        }
        if let Some(factor) = upstream.load_factor {
            strategy.push_str(&format!(", load_factor {factor}"));
        }
        if let Some(tls) = &upstream.tls {
            let ca = tls
                .ca
                .as_ref()
                .map_or("system roots".to_owned(), |p| p.display().to_string());
            strategy.push_str(&format!(
                ", TLS to backends as {} trusting {ca}",
                tls.server_name
            ));
        }
        println!("  {} ({strategy})", upstream.name);
        if let Some(check) = &upstream.health_check {
            let kind = match check.kind {
                config::HealthCheckKind::Tcp => "tcp connect".to_owned(),
                config::HealthCheckKind::Http => format!("http GET {}", check.path),
                config::HealthCheckKind::WebSocket => format!("websocket upgrade {}", check.path),
            };
            println!(
                "    health check: {kind} every {:?}, timeout {:?}, up after {}, down after {}",
                check.interval, check.timeout, check.rise, check.fall
            );
        }
        if !upstream.slow_start.is_zero() {
            println!("    slow start over {:?}", upstream.slow_start);
        }
        if let Some((rate, burst)) = upstream.upgrade_pacing {
            println!("    upgrades paced at {rate}/s per backend, burst {burst}");
        }
        if let Some(c) = &upstream.sticky_cookie {
            println!(
                "    sticky cookie {} signed with {}, max-age {}",
                c.name,
                c.secret_file.display(),
                c.max_age
                    .map_or("session".to_owned(), |a| format!("{}s", a.as_secs()))
            );
        }
        if let Some(skew) = upstream.rebalance_skew {
            println!(
                "    rebalanced above {skew} x the mean, {} closes/s",
                upstream.rebalance_rate
            );
        }
        for server in &upstream.servers {
            println!(
                "    {} = {} weight {}",
                server.name, server.addr, server.weight
            );
        }
    }
    ExitCode::SUCCESS
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Logs go through a background writer: a slow or blocked stdout must never stall the proxy's
/// worker threads. Lossy: when its buffer is full, lines are dropped rather than waited for.
/// The returned guard flushes what is buffered when it is dropped at exit; the counter tells
/// how many lines were dropped (`switchboard_log_lines_dropped_total`).
fn init_logging(
    format: LogFormat,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    tracing_appender::non_blocking::ErrorCounter,
) {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(64 * 1024)
        .finish(std::io::stdout());
    let drops = writer.error_counter();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    (guard, drops)
}

/// mimalloc: per-thread free lists suit a proxy's many small, short-lived allocations (it cut
/// CPU per WebSocket handshake by about a fifth against glibc malloc in `e2e_load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
