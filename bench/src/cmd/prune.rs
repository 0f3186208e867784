//! `pibench prune`: runs the `piprune` binary (crate `pibench-prune`), which
//! links libtorch, so that `pibench` itself does not.
//!
//! Every argument after `prune` is passed through unchanged; see
//! `pibench prune --help` (piprune's own help) for the flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

/// Arguments: everything is forwarded to `piprune`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct PruneArgs {
    /// Arguments for piprune (e.g. --method snl --model resnet18 --dataset cifar10 --data DIR --budget N --epochs E --device cpu --out FILE).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// The executable name of the pruning front-end.
const PIPRUNE: &str = if cfg!(windows) {
    "piprune.exe"
} else {
    "piprune"
};

/// Finds `piprune` next to the running executable, then on `PATH`.
fn find_piprune() -> Option<PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|p| p.to_path_buf()))
    {
        let candidate = dir.join(PIPRUNE);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(PIPRUNE))
        .find(|p| p.is_file())
}

/// Runs `piprune` with the forwarded arguments and propagates its exit status.
pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let Some(exe) = find_piprune() else {
        bail!(
            "the `piprune` binary was not found next to pibench or on PATH; build it with \
             `make build` (it links libtorch; `scripts/setup.sh torch` installs it)"
        );
    };
    let status = Command::new(&exe)
        .args(&args.args)
        .status()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !status.success() {
        match status.code() {
            // 127: the dynamic loader could not start the program (it printed
            // which library above); 126: not executable.
            Some(127) => bail!(
                "{} could not start (exit status 127: a shared library, usually libtorch_cpu.so, \
                 was not found). Rebuild it with `make build`, which embeds libtorch's folder as \
                 its run path, or run `source scripts/env.sh && export LD_LIBRARY_PATH=$LIBTORCH/lib`",
                exe.display()
            ),
            Some(126) => bail!(
                "{} could not start (exit status 126: not executable); rebuild it with `make build`",
                exe.display()
            ),
            Some(code) => bail!("{} exited with status {code}", exe.display()),
            None => bail!("{} was terminated by a signal", exe.display()),
        }
    }
    Ok(())
}
