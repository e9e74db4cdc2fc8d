//! The control socket (slirp4netns's `--api-socket`): [`server`] is its non-blocking I/O in
//! the engine's loop; [`client`] the `tapwire ctl` command. Requests and replies themselves
//! are sans-IO, in [`tapwire_proto::control`].
#![forbid(unsafe_code)]

pub mod client;
pub mod server;
