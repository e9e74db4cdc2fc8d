//! tapwire: a fast userspace network forwarder for rootless containers.
//!
//! Module map (one concept per file):
//! - [`cli`]: slirp4netns-compatible flags and `tapwire run`.
//! - [`config`]: the virtual network (addresses, MTU, policies).
//! - [`netns`]: the pre-thread fork helper that enters namespaces and passes the TAP fd back.
//! - [`tap`]: `/dev/net/tun` on libc ioctls.
//! - [`netlink`]: link/address/route configuration for `-c`.
//! - [`wire`]: sans-IO frame classification, validation and reply-frame building.
//! - [`stack`]: the smoltcp interface and its TAP device adapter.
//! - [`tcp`], [`udp`], [`icmp`], [`dns`]: the proxies.
//! - [`engine`]: the single-threaded event loop that drives it all.
//! - [`bypass`] (sans-IO decision), [`seccomp`] (filter, listener, pidfds) and [`supervisor`]
//!   (its own thread): bypass mode, which hands containers host sockets.
//! - [`sandbox`], [`filter`]: the daemon's confinement (mount namespace, capabilities,
//!   seccomp allow-list); [`lifeline`]: exiting when the guest's process does.

pub mod api;
pub mod app;
pub mod bypass;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod dhcp;
pub mod dns;
pub mod engine;
pub mod fd;
pub mod filter;
pub mod flow;
pub mod icmp;
pub mod lifeline;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod reasm;
pub mod sandbox;
pub mod seccomp;
pub mod stack;
pub mod supervisor;
pub mod tap;
pub mod tcp;
pub mod udp;
pub mod vnet;
pub mod wire;
