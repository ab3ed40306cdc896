//! systemd socket activation: with `LISTEN_PID` naming the process and `LISTEN_FDS=1`, the
//! binary serves on descriptor 3 instead of binding `listen`.

mod support;

use std::process::Stdio;

use support::backends::{EchoBackend, HttpBackend};
use support::clients::http_get;
use support::process::{Process, config, get, ready};
use support::tls::TempDir;
use support::{metric, two_free_addrs};

#[tokio::test]
async fn a_socket_passed_by_systemd_is_served() {
    let (a, echo) = (
        HttpBackend::start("a").await,
        EchoBackend::start("echo").await,
    );
    let dir = TempDir::new("systemd");
    let socket = dir.path("handover.sock");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = listener.local_addr().unwrap();
    let (admin, _) = two_free_addrs();
    let file = dir.path("sd.toml");
    std::fs::write(&file, config(listen, admin, &socket, a.addr, echo.addr)).unwrap();
    // The socket goes in as standard input (a safe way to pass a descriptor), and the shell
    // moves it to descriptor 3 and execs the binary, which keeps the shell's pid: LISTEN_PID.
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg("exec 3<&0 </dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http; exec \"$0\" --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .arg(&file)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
    let process = Process::spawn(&mut command, dir.path("sd.log"));
    ready(admin, &process).await;
    // Had it ignored descriptor 3, binding `listen` (held by that socket) would have failed.
    assert_eq!(get(listen).await, Ok("a".to_owned()), "{}", process.log());
    let scrape = http_get(admin, "/metrics", &[]).await.body_text();
    assert_eq!(
        metric(
            &scrape,
            "switchboard_listeners_inherited",
            &[("listener", "http"), ("source", "systemd")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &scrape,
            "switchboard_listeners_inherited",
            &[("listener", "admin")]
        ),
        0.0
    );
    process.terminate().await;
}
