//! Top-level orchestration (stub: being written).

use crate::cli::Command;

/// Run a parsed command; returns the process exit status.
pub fn run(_cmd: Command) -> i32 {
    eprintln!("tapwire: not implemented yet");
    1
}
