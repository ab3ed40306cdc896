//! What one plain WebSocket upgrade costs the proxy: instructions, syscalls and CPU time per
//! upgrade, for switchboard, an earlier switchboard binary and nginx, side by side.
//!
//! Guards the handshake path that a reconnect storm hammers (issue 10): accept, the HTTP/1.1
//! upgrade (RFC 6455 §4), the backend connect and its handshake, the splice of one 64 B message
//! each way, the Close handshake (§5.5.1) and the teardown of both sockets. Method:
//! - the client and the echo backend run in this process; the proxy is a release binary in a
//!   process of its own. The client does one upgrade cycle at a time, with fixed request bytes,
//!   and waits for the proxy's EOF before the next, so cycles never overlap;
//! - instructions: the proxy runs under `valgrind --tool=callgrind` twice, once for W warm-up
//!   upgrades only and once for W + N, each stopped with SIGTERM; (total of the second run -
//!   total of the first) / N is the cost of an upgrade, with start-up, warm-up and shutdown
//!   cancelled out. Deterministic to a fraction of a percent; idle work while the longer run
//!   lasts (timers) is included and is small;
//! - syscalls: the same two runs under `strace -c -f`, per syscall;
//! - CPU: no tool; utime + stime (10 ms ticks) and the schedstat nanoseconds of the proxy's
//!   threads over N upgrades after the W warm-up ones, the median of three rounds, with the
//!   wall time per cycle;
//! - nginx runs as one process (`master_process off; worker_processes 1`, so a tool wrapping it
//!   sees all of its work; a sequential client keeps one worker busy at most anyway), configured
//!   as in e2e_load. switchboard runs with its default worker threads (cores) and
//!   `[drain] spread = "0s"`, so SIGTERM ends it at once.
//!
//! Run: `cargo bench --bench upgrade_cost`. Environment: UPGRADE_N (1000), UPGRADE_WARMUP (50),
//! UPGRADE_TOOLS (callgrind,strace,cpu), UPGRADE_TARGETS (switchboard,switchboard-before,nginx),
//! UPGRADE_BASELINE_BIN (the binary run as "switchboard-before"), UPGRADE_PROXY_THREADS (tokio
//! workers of switchboard), UPGRADE_TOP (25: functions listed, by instructions per upgrade, from
//! the callgrind runs of the switchboard under test; 0 for none), UPGRADE_OUT (where the
//! callgrind and strace files are kept; target/upgrade_cost).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

#[path = "support/mod.rs"]
mod support;
use support::{
    NginxShape, echo_backend, env_or, find, free_port, median, nginx_argv, proc_stat,
    schedstat_seconds, upgrade_cycle,
};

/// A proxy under test.
struct Target {
    name: &'static str,
    /// The switchboard binary; `None` for nginx.
    binary: Option<PathBuf>,
}

/// What the proxy's process runs under.
#[derive(Clone, Copy)]
enum Tool<'a> {
    Bare,
    Callgrind(&'a Path),
    Strace(&'a Path),
}

impl Tool<'_> {
    /// How many times longer to wait for the proxy under this tool (valgrind runs a program
    /// some 50 times slower; a sequential client on loopback waits on latency, not CPU).
    fn slowdown(self) -> u32 {
        match self {
            Tool::Callgrind(_) => 20,
            Tool::Strace(_) => 3,
            Tool::Bare => 1,
        }
    }
}

/// A started proxy.
struct Running {
    child: Child,
    /// The proxy itself: the child, or under strace the child's child.
    pid: u32,
    addr: SocketAddr,
    dir: PathBuf,
    tool_slowdown: u32,
}

impl Running {
    /// Starts `target` in front of `backend` under `tool` and waits until it accepts.
    async fn start(
        target: &Target,
        tool: Tool<'_>,
        backend: SocketAddr,
    ) -> Result<Running, String> {
        let port = free_port().ok_or("no free port")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = std::env::temp_dir().join(format!(
            "switchboard-upgrade-cost-{}-{}-{port}",
            std::process::id(),
            target.name
        ));
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let argv: Vec<OsString> = match &target.binary {
            Some(binary) => {
                let config = dir.join("bench.toml");
                std::fs::write(
                    &config,
                    format!(
                        "listen = \"{addr}\"\n[limits]\nmax_connections = 19000\n[drain]\nspread = \"0s\"\n\
                         [[route]]\nupstream = \"echo\"\n[upstream.echo]\nbalance = \"least-conn\"\nservers = [\"{backend}\"]\n"
                    ),
                )
                .map_err(|e| format!("{}: {e}", config.display()))?;
                vec![binary.into(), "--config".into(), config.into()]
            }
            None => nginx_argv(&dir, addr, backend, NginxShape::Single, None)
                .ok_or("nginx is not installed")?,
        };
        let prefix: Vec<OsString> = match tool {
            Tool::Bare => Vec::new(),
            Tool::Callgrind(out) => vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                format!("--callgrind-out-file={}", out.display()).into(),
            ],
            Tool::Strace(out) => vec![
                "strace".into(),
                "-c".into(),
                "-f".into(),
                "-o".into(),
                out.into(),
            ],
        };
        let mut argv = prefix.into_iter().chain(argv);
        let mut command = Command::new(argv.next().ok_or("empty command")?);
        command.args(argv).env("RUST_LOG", "warn");
        if let Ok(n) = std::env::var("UPGRADE_PROXY_THREADS") {
            command.env("TOKIO_WORKER_THREADS", n);
        }
        let stderr = std::fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", target.name))?;
        let mut running = Running {
            pid: child.id(),
            child,
            addr,
            dir,
            tool_slowdown: tool.slowdown(),
        };
        // One successful connection (closed at once) per run: the same in every run.
        let started = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!(
                    "{} exited at start ({status}): {}",
                    target.name,
                    running.stderr_tail()
                ));
            }
            if started.elapsed() > Duration::from_secs(10) * running.tool_slowdown.min(6) {
                return Err(format!("{} did not start listening", target.name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Tool::Strace(_) = tool {
            running.pid = child_of(running.child.id()).ok_or("no process under strace")?;
        }
        Ok(running)
    }

    /// `count` upgrade cycles, one at a time; the wall time they took.
    async fn upgrades(&self, count: usize) -> Result<Duration, String> {
        let each = Duration::from_secs(5) * self.tool_slowdown;
        let started = Instant::now();
        for i in 0..count {
            match tokio::time::timeout(each, upgrade_cycle(self.addr)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("upgrade {i}: {e}")),
                Err(_) => return Err(format!("upgrade {i}: no answer within {each:?}")),
            }
        }
        Ok(started.elapsed())
    }

    /// SIGTERM to the proxy, then waits for the (tool's) process to exit, so its file is
    /// written. The signal is sent again every 10 s: under valgrind, nginx can miss one that
    /// arrives just as it blocks in `epoll_wait` with no timer set (seen once in a few runs).
    async fn stop(mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20) * self.tool_slowdown.min(6);
        let mut next_signal = Instant::now();
        let mut signals = 0;
        loop {
            if Instant::now() >= next_signal {
                signal("-TERM", self.pid);
                signals += 1;
                next_signal += Duration::from_secs(10);
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                if signals > 1 {
                    println!("(pid {} exited after {signals} SIGTERMs)", self.pid);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "did not exit after SIGTERM: {}",
                    self.stderr_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal("-KILL", self.pid);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to `pid` with kill(1) (this crate forbids the unsafe a libc call would need).
fn signal(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// A child process of `parent`, from /proc.
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (ppid.parse::<u32>().ok()? == parent).then_some(pid)
        })
}

/// The run sizes and where the tools' files go.
struct Plan {
    warmup: usize,
    n: usize,
    out: PathBuf,
}

/// One run of W (+ N) upgrades under `tool`, stopped with SIGTERM.
async fn tool_run(
    target: &Target,
    tool: Tool<'_>,
    backend: SocketAddr,
    plan: &Plan,
    with_n: bool,
) -> Result<(), String> {
    let proxy = Running::start(target, tool, backend).await?;
    proxy.upgrades(plan.warmup).await?;
    if with_n {
        proxy.upgrades(plan.n).await?;
    }
    proxy.stop().await
}

/// The files of the two runs (W, W + N) of `target` under a tool, written under `plan.out`.
fn tool_files(target: &Target, plan: &Plan, tool: &str) -> [PathBuf; 2] {
    [plan.warmup, plan.warmup + plan.n].map(|upgrades| {
        plan.out
            .join(format!("{}-{tool}-{upgrades}.out", target.name))
    })
}

/// Instructions of the two callgrind runs.
async fn callgrind(
    target: &Target,
    backend: SocketAddr,
    plan: &Plan,
) -> Result<[PathBuf; 2], String> {
    let files = tool_files(target, plan, "callgrind");
    for (file, with_n) in files.iter().zip([false, true]) {
        let _ = std::fs::remove_file(file);
        tool_run(target, Tool::Callgrind(file), backend, plan, with_n).await?;
    }
    Ok(files)
}

/// The `totals:` (or else `summary:`) figure of a callgrind output file.
fn callgrind_total(file: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let figure = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    figure("totals:")
        .or_else(|| figure("summary:"))
        .ok_or_else(|| format!("{}: no totals: line", file.display()))
}

/// Syscall counts of the two strace runs.
async fn strace(
    target: &Target,
    backend: SocketAddr,
    plan: &Plan,
) -> Result<[BTreeMap<String, u64>; 2], String> {
    let files = tool_files(target, plan, "strace");
    for (file, with_n) in files.iter().zip([false, true]) {
        tool_run(target, Tool::Strace(file), backend, plan, with_n).await?;
    }
    let [a, b] = &files;
    Ok([strace_calls(a)?, strace_calls(b)?])
}

/// Calls per syscall from an `strace -c` summary: rows of `% time, seconds, usecs/call, calls,
/// [errors,] syscall`.
fn strace_calls(file: &Path) -> Result<BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let calls: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (&name, _) = fields.split_last()?;
            if !(5..=6).contains(&fields.len()) || name == "total" {
                return None;
            }
            Some((name.to_owned(), fields[3].parse::<u64>().ok()?))
        })
        .collect();
    if calls.is_empty() {
        return Err(format!("{}: no strace -c summary", file.display()));
    }
    Ok(calls)
}

/// CPU per upgrade without a tool: (ticks µs, schedstat µs, wall µs), medians of three rounds.
async fn cpu(target: &Target, backend: SocketAddr, plan: &Plan) -> Result<[f64; 3], String> {
    let proxy = Running::start(target, Tool::Bare, backend).await?;
    proxy.upgrades(plan.warmup).await?;
    let mut rounds = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..3 {
        let (ticks0, sched0) = (proc_stat(proxy.pid).0, schedstat_seconds(proxy.pid));
        let wall = proxy.upgrades(plan.n).await?;
        let (ticks1, sched1) = (proc_stat(proxy.pid).0, schedstat_seconds(proxy.pid));
        let per = |seconds: f64| seconds * 1e6 / plan.n as f64;
        rounds[0].push(per(ticks1 - ticks0));
        rounds[1].push(per(sched1 - sched0));
        rounds[2].push(per(wall.as_secs_f64()));
    }
    proxy.stop().await?;
    Ok(rounds.map(|mut r| median(&mut r)))
}

/// Instructions per function (`file:function`) per upgrade: `callgrind_annotate` of the W + N
/// run minus that of the W run, over N, largest first.
fn top_functions(
    files: &[PathBuf; 2],
    n: usize,
    inclusive: bool,
) -> Result<Vec<(f64, String)>, String> {
    let annotate = |file: &Path| -> Result<BTreeMap<String, u64>, String> {
        let output = Command::new("callgrind_annotate")
            .arg(format!(
                "--inclusive={}",
                if inclusive { "yes" } else { "no" }
            ))
            .args(["--threshold=100", "--auto=no"])
            .arg(file)
            .output()
            .map_err(|e| format!("callgrind_annotate: {e}"))?;
        let mut counts = BTreeMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let line = line.trim();
            let Some((count, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(count) = count.replace(',', "").parse::<u64>() else {
                continue;
            };
            // "(12.3%)" after the count, then "file:function [object]".
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('(') {
                Some(r) => r.split_once(')').map_or(r, |(_, after)| after).trim_start(),
                None => rest,
            };
            if rest == "PROGRAM TOTALS" {
                continue;
            }
            let function = match rest.rsplit_once(" [") {
                Some((f, object)) if object.ends_with(']') => f,
                _ => rest,
            };
            *counts.entry(function.to_owned()).or_insert(0) += count;
        }
        Ok(counts)
    };
    let before = annotate(&files[0])?;
    let after = annotate(&files[1])?;
    let mut per: Vec<(f64, String)> = after
        .into_iter()
        .map(|(function, count)| {
            let base = before.get(&function).copied().unwrap_or(0);
            ((count as f64 - base as f64) / n as f64, function)
        })
        .collect();
    per.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(per)
}

/// What was measured for one target; `Err` says why a measurement is missing.
struct Measured {
    instructions: Result<f64, String>,
    syscalls: Result<BTreeMap<String, f64>, String>,
    cpu: Result<[f64; 3], String>,
}

async fn measure(
    target: &Target,
    backend: SocketAddr,
    plan: &Plan,
    tools: &str,
    top: usize,
) -> Measured {
    let wanted = |t: &str| tools.split(',').any(|x| x == t);
    fn skipped<T>(tool: &str) -> Result<T, String> {
        Err(format!("{tool} not in UPGRADE_TOOLS"))
    }
    let per_upgrade = |a: f64, b: f64| (b - a) / plan.n as f64;

    let instructions = if !wanted("callgrind") {
        skipped("callgrind")
    } else if find("valgrind").is_none() {
        Err("valgrind is not installed".to_owned())
    } else {
        match callgrind(target, backend, plan).await {
            Ok(files) => {
                if top > 0 && target.name == "switchboard" && find("callgrind_annotate").is_some() {
                    print_top(&files, plan.n, top);
                }
                callgrind_total(&files[0])
                    .and_then(|a| Ok(per_upgrade(a as f64, callgrind_total(&files[1])? as f64)))
            }
            Err(e) => Err(e),
        }
    };
    let syscalls = if !wanted("strace") {
        skipped("strace")
    } else if find("strace").is_none() {
        Err("strace is not installed".to_owned())
    } else {
        strace(target, backend, plan).await.map(|[a, b]| {
            b.iter()
                .map(|(name, &calls)| {
                    let base = a.get(name).copied().unwrap_or(0);
                    (name.clone(), per_upgrade(base as f64, calls as f64))
                })
                .collect()
        })
    };
    let cpu = if wanted("cpu") {
        cpu(target, backend, plan).await
    } else {
        skipped("cpu")
    };
    for (what, error) in [
        ("callgrind", instructions.as_ref().err()),
        ("strace", syscalls.as_ref().err()),
        ("cpu", cpu.as_ref().err()),
    ] {
        if let Some(e) = error {
            println!("{} {what}: skipped: {e}", target.name);
        }
    }
    Measured {
        instructions,
        syscalls,
        cpu,
    }
}

fn print_top(files: &[PathBuf; 2], n: usize, top: usize) {
    for inclusive in [true, false] {
        match top_functions(files, n, inclusive) {
            Ok(functions) => {
                println!(
                    "\nswitchboard: top {top} functions by {} instructions per upgrade (callgrind_annotate --inclusive={} of {} minus {}, / {n}):",
                    if inclusive { "inclusive" } else { "self" },
                    if inclusive { "yes" } else { "no" },
                    files[1].display(),
                    files[0].display()
                );
                for (count, function) in functions.iter().take(top) {
                    let function: String = function.chars().take(150).collect();
                    println!("{count:>12.0}  {function}");
                }
            }
            Err(e) => println!("switchboard: no function list: {e}"),
        }
    }
    println!();
}

fn main() {
    support::raise_fd_limit();
    let plan = Plan {
        warmup: env_or("UPGRADE_WARMUP", 50),
        n: env_or("UPGRADE_N", 1000).max(1),
        out: std::env::var_os("UPGRADE_OUT").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/upgrade_cost"),
            PathBuf::from,
        ),
    };
    let tools = std::env::var("UPGRADE_TOOLS").unwrap_or_else(|_| "callgrind,strace,cpu".into());
    let only = std::env::var("UPGRADE_TARGETS")
        .unwrap_or_else(|_| "switchboard,switchboard-before,nginx".into());
    let top = env_or("UPGRADE_TOP", 25);
    std::fs::create_dir_all(&plan.out).expect("UPGRADE_OUT");
    let all = [
        Target {
            name: "switchboard",
            binary: Some(env!("CARGO_BIN_EXE_switchboard").into()),
        },
        Target {
            name: "switchboard-before",
            binary: std::env::var_os("UPGRADE_BASELINE_BIN").map(PathBuf::from),
        },
        Target {
            name: "nginx",
            binary: None,
        },
    ];
    println!(
        "upgrade_cost: plain ws upgrade cycles (connect, upgrade handshake, one 64 B echo, Close both ways, close), one at a time over loopback; \
         W = {} warm-up, N = {} measured. Instructions: callgrind total of a W + N run minus a W run, / N; syscalls: the same with strace -c -f; \
         CPU: no tool, median of 3 rounds of N. Tool files in {}.",
        plan.warmup,
        plan.n,
        plan.out.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<(&str, Option<Measured>)> = runtime.block_on(async {
        let backend = echo_backend().await;
        let mut results = Vec::new();
        for target in &all {
            let present = match (target.name, &target.binary) {
                (_, Some(_)) => true,
                ("nginx", None) => find("nginx").is_some(),
                _ => false,
            };
            let measured = if !only.split(',').any(|o| o == target.name) {
                println!("{}: not in UPGRADE_TARGETS; skipped", target.name);
                None
            } else if !present {
                println!(
                    "{}: {}; skipped",
                    target.name,
                    match target.name {
                        "nginx" => "not installed",
                        _ => "UPGRADE_BASELINE_BIN is not set",
                    }
                );
                None
            } else {
                Some(measure(target, backend, &plan, &tools, top).await)
            };
            results.push((target.name, measured));
        }
        results
    });
    print_table(&results);
}

fn print_table(results: &[(&str, Option<Measured>)]) {
    let cell = |value: Option<f64>, decimals: usize| {
        value.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
    };
    let column = |f: &dyn Fn(&Measured) -> Option<f64>, decimals: usize| -> Vec<String> {
        results
            .iter()
            .map(|(_, m)| cell(m.as_ref().and_then(f), decimals))
            .collect()
    };
    let nginx = results
        .iter()
        .find(|(name, _)| *name == "nginx")
        .and_then(|(_, m)| m.as_ref());
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push((
        "instructions / upgrade (callgrind)".into(),
        column(&|m| m.instructions.as_ref().ok().copied(), 0),
    ));
    rows.push((
        "  ratio to nginx".into(),
        column(
            &|m| {
                let n = *nginx?.instructions.as_ref().ok()?;
                Some(m.instructions.as_ref().ok()? / n)
            },
            2,
        ),
    ));
    rows.push((
        "syscalls / upgrade (strace -c -f)".into(),
        column(&|m| Some(m.syscalls.as_ref().ok()?.values().sum()), 2),
    ));
    // The syscalls that matter, most frequent first (in the first target that has them).
    let mut names: Vec<(f64, String)> = Vec::new();
    for (_, m) in results {
        let Some(Ok(calls)) = m.as_ref().map(|m| &m.syscalls) else {
            continue;
        };
        for (name, &count) in calls {
            if count >= 0.05 && !names.iter().any(|(_, n)| n == name) {
                names.push((count, name.clone()));
            }
        }
        names.sort_by(|a, b| b.0.total_cmp(&a.0));
    }
    for (_, name) in names.iter().take(16) {
        rows.push((
            format!("  {name}"),
            column(
                &|m| Some(m.syscalls.as_ref().ok()?.get(name).copied().unwrap_or(0.0)),
                2,
            ),
        ));
    }
    for (label, index, decimals) in [
        ("CPU us / upgrade (schedstat)", 1, 1),
        ("CPU us / upgrade (utime+stime)", 0, 1),
        ("wall us / upgrade cycle", 2, 0),
    ] {
        rows.push((
            label.into(),
            column(&|m| Some(m.cpu.as_ref().ok()?[index]), decimals),
        ));
    }
    rows.push((
        "  CPU ratio to nginx (schedstat)".into(),
        column(
            &|m| {
                let n = nginx?.cpu.as_ref().ok()?[1];
                Some(m.cpu.as_ref().ok()?[1] / n)
            },
            2,
        ),
    ));
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let header: Vec<String> = results
        .iter()
        .map(|(name, _)| format!("{name:>18}"))
        .collect();
    println!("\n{:<width$} | {}", "metric", header.join(" | "));
    println!("{}", "-".repeat(width + header.len() * 21));
    for (label, cells) in rows {
        let cells: Vec<String> = cells.iter().map(|c| format!("{c:>18}")).collect();
        println!("{label:<width$} | {}", cells.join(" | "));
    }
}
