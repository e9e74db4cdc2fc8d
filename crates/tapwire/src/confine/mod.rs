//! The daemon's own confinement: [`inherited`] (closing the fds it inherited), [`sandbox`]
//! (mount namespace, pivot_root, capabilities), [`allowlist`] (the daemon's seccomp allow-list)
//! with its runtime [`pins`] (own pid, kept directory fds), and [`lifeline`] (exit with the
//! guest).
//! `unsafe` is allowed per file, in the files that make their own system calls.

pub mod allowlist;
pub mod inherited;
pub mod lifeline;
pub mod pins;
pub mod sandbox;
