//! `tapwire ctl`: the command line of the control socket's client.
//!
//! Theory of operation: [`super::parse`] picks this front end when argv\[1\] is `ctl`. One
//! subcommand per control-socket request (`add-hostfwd`, `list-hostfwd`, `remove-hostfwd`,
//! `connections`, `stats`); `add-hostfwd` takes the same spec as `-p`, parsed by
//! [`Publish`]'s `FromStr`. The result is a [`ControlArgs`], which
//! [`crate::control::client::run`] sends. The user-facing names stay those of slirp4netns and
//! of the command (`--api-socket`, `tapwire ctl`).
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr as _;

use clap::Parser;

use tapwire_proto::config::Publish;

/// `tapwire ctl --api-socket PATH [--json] ACTION`: a client of the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlArgs {
    /// `-a/--api-socket`: the control socket to talk to.
    pub control_socket: PathBuf,
    /// Print the raw JSON reply.
    pub json: bool,
    pub action: ControlAction,
}

/// What `tapwire ctl` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAction {
    AddHostfwd {
        publish: Publish,
        guest_addr: Option<IpAddr>,
    },
    ListHostfwd,
    RemoveHostfwd {
        id: u64,
    },
    Connections,
    Stats,
}

/// `tapwire ctl`'s clap definition.
#[derive(Debug, Parser)]
#[command(
    name = "tapwire-ctl",
    about = "Talk to a running tapwire (or slirp4netns) control socket",
    override_usage = "tapwire ctl --api-socket PATH [--json] <COMMAND>"
)]
pub(super) struct ControlCli {
    /// The daemon's --api-socket
    #[arg(short = 'a', long, value_name = "PATH")]
    api_socket: PathBuf,

    /// Print the raw JSON reply
    #[arg(long)]
    json: bool,

    #[command(subcommand)]
    action: ControlSub,
}

#[derive(Debug, clap::Subcommand)]
enum ControlSub {
    /// Forward a host port to the guest: [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]
    AddHostfwd {
        #[arg(value_name = "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/PROTO]", value_parser = Publish::from_str)]
        spec: Publish,
        /// Guest address (default: the guest's, network+100)
        #[arg(long, value_name = "IP")]
        guest_addr: Option<IpAddr>,
    },
    /// List forwards
    ListHostfwd,
    /// Remove a forward by id
    RemoveHostfwd {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// List active flows (tapwire only)
    Connections,
    /// Show counters (tapwire only)
    Stats,
}

impl ControlCli {
    pub(super) fn into_args(self) -> ControlArgs {
        let action = match self.action {
            ControlSub::AddHostfwd { spec, guest_addr } => ControlAction::AddHostfwd {
                publish: spec,
                guest_addr,
            },
            ControlSub::ListHostfwd => ControlAction::ListHostfwd,
            ControlSub::RemoveHostfwd { id } => ControlAction::RemoveHostfwd { id },
            ControlSub::Connections => ControlAction::Connections,
            ControlSub::Stats => ControlAction::Stats,
        };
        ControlArgs {
            control_socket: self.api_socket,
            json: self.json,
            action,
        }
    }
}
