//! The hand-over socket's file: bound with owner-only permissions, a stale file (left by a
//! process that is gone) replaced, a live one never stolen at start, and removed at exit only
//! while it is still this process's (after a hand-over it is the new process's).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// A bound hand-over socket and the file it is bound to.
pub struct HandoverSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
    /// The file's inode when bound: whether the file at `path` is still ours.
    inode: u64,
}

impl HandoverSocket {
    /// Binds `path`. A file there that nobody answers on is stale and replaced; one a process
    /// answers on is an error, unless `replace` (this process has just taken the listeners
    /// over from that process, which has stopped serving it).
    pub fn bind(path: &Path, replace: bool) -> io::Result<HandoverSocket> {
        if path.exists() {
            let live = std::os::unix::net::UnixStream::connect(path).is_ok();
            if live && !replace {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another process serves `{}`: to replace it, start this one with `--take-over {}`",
                        path.display(),
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // Whoever connects gets the listening sockets and stops this process: owner only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let inode = std::fs::metadata(path)?.ino();
        Ok(HandoverSocket {
            listener,
            path: path.to_owned(),
            inode,
        })
    }

    /// The path it is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving: closes the listener, and removes the file when `remove` and it is still
    /// the one this process bound.
    pub fn close(self, remove: bool) {
        drop(self.listener);
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if remove && ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
