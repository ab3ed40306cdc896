//! systemd socket activation (`sd_listen_fds(3)`): with `LISTEN_PID` naming this process and
//! `LISTEN_FDS=N`, descriptors 3 to 3+N-1 are listening sockets systemd holds for us (a
//! `.socket` unit), so a restart never refuses a connection: they wait in systemd's backlog.
//!
//! Taking a descriptor by its number needs `unsafe` in Rust (`OwnedFd::from_raw_fd`), which
//! switchboard forbids. `pidfd_getfd(2)` on our own pidfd gives a duplicate of descriptor N as
//! an owned, close-on-exec descriptor through a safe call (Linux 5.6 and later; a process may
//! always do it to itself). The originals stay open and unused: closing a descriptor by number
//! is unsafe too, and systemd holds the sockets anyway.
//!
//! The variables are not unset: `std::env::remove_var` is `unsafe` in Rust 2024, and they are
//! harmless left alone, since `LISTEN_PID` names this process and switchboard starts no other.
//! Sockets are matched to the config's listeners by their local address (`LISTEN_FDNAMES` is
//! only logged and compared, as the role a socket was meant for).

use std::io;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

use super::{Inherited, Role};

/// `SD_LISTEN_FDS_START`.
const FIRST_FD: i32 = 3;
/// More than any config listens on; a larger `LISTEN_FDS` is a mistake.
const MAX_FDS: i32 = 64;

/// The sockets systemd passed to this process, `None` when it passed none.
pub fn inherited() -> io::Result<Option<Vec<Inherited>>> {
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        tracing::debug!(listen_pid = %pid, "LISTEN_PID names another process: its sockets are not ours");
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let count: i32 = match count.trim().parse() {
        Ok(n) if (0..=MAX_FDS).contains(&n) => n,
        _ => {
            return Err(io::Error::other(format!(
                "LISTEN_FDS={count:?} is not a number of sockets (0 to {MAX_FDS})"
            )));
        }
    };
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let me = pidfd_open(getpid(), PidfdFlags::empty()).map_err(|e| {
        io::Error::other(format!(
            "cannot take systemd's sockets: pidfd_open: {e} (needs Linux 5.6 or later)"
        ))
    })?;
    let mut sockets = Vec::new();
    for i in 0..count {
        let number = FIRST_FD + i;
        let fd = pidfd_getfd(&me, number, PidfdGetfdFlags::empty()).map_err(|e| {
            io::Error::other(format!(
                "cannot take descriptor {number} from systemd: pidfd_getfd: {e}"
            ))
        })?;
        let name = names.get(i as usize).copied().unwrap_or("");
        let socket = Inherited::from_fd(fd, Role::parse(name))
            .map_err(|e| io::Error::new(e.kind(), format!("descriptor {number} ({name}): {e}")))?;
        tracing::info!(fd = number, name, addr = %socket.addr, "socket from systemd");
        sockets.push(socket);
    }
    Ok(Some(sockets))
}
