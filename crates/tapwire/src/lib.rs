//! tapwire: a fast userspace network forwarder for rootless containers: the daemon and its CLI.
//!
//! The protocol logic (frames, flows, NAT, DHCP, NDP, DNS upstreams, control requests, the
//! scheduler, the bypass policy) lives in the sans-IO crate [`tapwire_proto`]; this crate does
//! the I/O around it, in folders by layer:
//! - [`cli`]: the command lines (slirp4netns-compatible, `tapwire run`, `tapwire ctl`).
//! - [`startup`]: start-up order: fork the namespace helper, confine, start the threads.
//! - [`sys`]: the raw system calls (fds, pidfds, mounts, SCM_RIGHTS, sockets).
//! - [`netns`]: the pre-thread helper that enters namespaces and passes fds back.
//! - [`link`]: the TAP device, netlink configuration, the smoltcp device adapter.
//! - [`engine`]: the event loop, one file per protocol.
//! - [`control`]: the control socket's server and its command-line client.
//! - [`bypass`]: seccomp user-notify supervision that hands containers host sockets.
//! - [`confine`]: the daemon's own sandbox, syscall allow-list and lifeline.
#![deny(unsafe_code)]

pub mod bypass;
pub mod cli;
pub mod confine;
pub mod control;
pub mod engine;
pub mod link;
pub mod netns;
pub mod startup;
pub mod sys;
