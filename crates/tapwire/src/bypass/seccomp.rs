//! The former `bypass::seccomp` paths, kept for callers outside `bypass/` that still use them
//! (the namespace helper, `netns`, which another change is moving).
//!
//! # Theory of operation
//! Nothing lives here: the filter is in [`super::rules`], the listener in [`super::notify`],
//! pidfds in [`crate::sys::pidfd`]. New code should name those directly; this file goes once
//! `netns` does.
#![forbid(unsafe_code)]

pub use super::rules::{install_listener, Program};
pub use crate::sys::pidfd::{pidfd_getfd, pidfd_open as pidfd_open_child};
