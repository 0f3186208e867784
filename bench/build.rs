//! Records the commit the `pibench` binary is built from
//! (`PIBENCH_BUILD_COMMIT`, with `-dirty` when tracked files differ from it),
//! so result tables name the code that measured them rather than whatever
//! the checkout points at when the table runs.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"])
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let dirty = commit != "unknown"
        && git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=PIBENCH_BUILD_COMMIT={commit}{suffix}");
    // Re-run when HEAD or the index moves, or when the sources the binary is
    // built from change (so `-dirty` follows edits made after the last commit).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for f in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
    }
    for d in ["src", "../models/src", "../protocol/src", "../Cargo.lock"] {
        println!("cargo:rerun-if-changed={d}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
