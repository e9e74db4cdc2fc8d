//! The daemon's own confinement: [`sandbox`] (mount namespace, pivot_root, capabilities),
//! [`allowlist`] (the daemon's seccomp allow-list) and [`lifeline`] (exit with the guest).
#![allow(unsafe_code)]

pub mod allowlist;
pub mod lifeline;
pub mod sandbox;
