//! Build script: stamps the commit into the binary as `SWITCHBOARD_COMMIT`, which
//! `switchboard_build_info{version,commit}` reports, so a dashboard shows which build runs.
//!
//! The commit is `git rev-parse --short HEAD`. A packager building from a tarball (no `.git`)
//! can set `SWITCHBOARD_COMMIT` in the environment; without either it is "unknown", and the
//! build never fails for want of git.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_COMMIT");
    // Without this, a build script that names no existing file reruns on every build.
    println!("cargo:rerun-if-changed=build.rs");
    let commit = std::env::var("SWITCHBOARD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    for path in watched_git_files() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-env=SWITCHBOARD_COMMIT={}", commit.trim());
}

/// Standard output of `git args`, if git ran and succeeded.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The files whose change means a new commit is checked out: `HEAD` (a checkout), the branch's
/// ref (a commit on it) and `packed-refs`. Asked of git rather than assumed under `.git/`, which
/// in a worktree is a file pointing elsewhere. Only files that exist are named: cargo reruns a
/// build script on every build while a named file is missing.
fn watched_git_files() -> Vec<PathBuf> {
    let mut names = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        names.push(branch);
    }
    names
        .iter()
        .filter_map(|name| git(&["rev-parse", "--git-path", name]))
        .map(PathBuf::from)
        .filter(|path| path.exists())
        .collect()
}
