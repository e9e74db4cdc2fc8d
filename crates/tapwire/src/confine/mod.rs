//! The daemon's own confinement: [`sandbox`] (mount namespace, pivot_root, capabilities),
//! [`allowlist`] (the daemon's seccomp allow-list) and [`lifeline`] (exit with the guest).
//! `unsafe` is allowed per file, in the files that make their own system calls.

pub mod allowlist;
pub mod lifeline;
pub mod sandbox;
