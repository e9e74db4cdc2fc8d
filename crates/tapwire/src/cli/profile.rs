//! `tapwire seccomp-profile`: the command line of the OCI seccomp profile printer.
//!
//! Theory of operation: bypass mode for OCI runtimes needs the container's `config.json` to
//! carry a `linux.seccomp` profile whose `listenerPath` is the socket the daemon serves with
//! `--seccomp-listener`. This front end only names that socket and whether UDP is trapped
//! too; [`crate::bypass::supervisor::print_profile`] prints the profile from a [`ProfileArgs`].
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::Parser;

use super::parse_socket_path;

/// `tapwire seccomp-profile`: print the OCI seccomp profile for bypass mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileArgs {
    /// Where tapwire's `--seccomp-listener` listens (the profile's `listenerPath`).
    pub listener_path: PathBuf,
    /// Trap the sends too, so that UDP can be bypassed.
    pub udp: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "tapwire-seccomp-profile",
    about = "Print the seccomp profile (config.json's linux.seccomp) that hands a runc/crun container's socket calls to `tapwire --seccomp-listener`",
    override_usage = "tapwire seccomp-profile [--listener-path PATH] [--bypass-udp]"
)]
pub(super) struct ProfileCli {
    /// The socket tapwire serves with --seccomp-listener
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/tapwire/seccomp.sock",
        value_parser = clap::builder::PathBufValueParser::new().try_map(parse_socket_path)
    )]
    pub(super) listener_path: PathBuf,

    /// Bypass connected UDP sockets too; traps every sendmsg/sendmmsg and every sendto with an address (default: UDP stays on the tap, no send is trapped)
    #[arg(long, conflicts_with = "no_bypass_udp")]
    pub(super) bypass_udp: bool,

    /// UDP stays on the tap (the default; kept for older configurations)
    #[arg(long)]
    pub(super) no_bypass_udp: bool,
}

impl ProfileCli {
    pub(super) fn into_args(self) -> ProfileArgs {
        ProfileArgs {
            listener_path: self.listener_path,
            udp: self.bypass_udp,
        }
    }
}
