//! The built binary as a child process, with its output in a file, and the plain clients the
//! tests of the hand-over and of socket activation drive it with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DEADLINE;
use super::clients::http_get;
use super::tls::TempDir;

/// A config on fixed addresses: `/ws` to `echo`, the rest to `web` (whose answer names it).
pub fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    socket: &Path,
    web: SocketAddr,
    echo: SocketAddr,
) -> String {
    format!(
        "listen = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\nhandover_socket = \"{}\"\n\
         [drain]\nspread = \"0s\"\nclose_linger = \"200ms\"\n[timeouts]\nshutdown_grace = \"5s\"\n\
         [[route]]\npath_prefix = \"/ws\"\nupstream = \"echo\"\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"web\"\n\
         [upstream.echo]\nservers = [\"{echo}\"]\n[upstream.web]\nservers = [\"{web}\"]\n",
        socket.display()
    )
}

/// The binary, its output in a file.
pub struct Process {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(command: &mut tokio::process::Command, log: PathBuf) -> Process {
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Process { child, log }
    }

    pub fn start(dir: &TempDir, name: &str, config: &str, take_over: Option<&Path>) -> Process {
        let file = dir.path(&format!("{name}.toml"));
        std::fs::write(&file, config).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command.arg("--config").arg(&file);
        if let Some(path) = take_over {
            command.arg("--take-over").arg(path);
        }
        Process::spawn(&mut command, dir.path(&format!("{name}.log")))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("did not exit in time; its log:\n{}", self.log()),
        }
    }

    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.exit().await;
        assert_eq!(status.code(), Some(0), "{}", self.log());
    }
}

/// One fresh connection, one GET: the name of the backend that answered, or what went wrong.
pub async fn get(addr: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        match answer.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
            _ => Err(format!("answer: {answer:?}")),
        }
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within the deadline".into()))
}

/// Waits until `/readyz` on `admin` answers 200.
pub async fn ready(admin: SocketAddr, process: &Process) {
    // Re-checked on a 20 ms tick, as `eventually` does, but failing with the process's log.
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let wait = async {
        loop {
            ticks.tick().await;
            if let Ok(Ok(_)) = tokio::time::timeout(DEADLINE, TcpStream::connect(admin)).await
                && http_get(admin, "/readyz", &[]).await.status == 200
            {
                return;
            }
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!("not ready in time; its log:\n{}", process.log());
    }
}
