//! Bypass mode: seccomp user-notify hands a container host sockets at `connect`/`bind`.
//!
//! The decision is sans-IO ([`tapwire_proto::bypass`]); [`seccomp`] holds the filter rules,
//! listener ioctls and target memory access, and [`supervisor`] the thread that answers
//! notifications.
#![allow(unsafe_code)]

pub mod seccomp;
pub mod supervisor;
