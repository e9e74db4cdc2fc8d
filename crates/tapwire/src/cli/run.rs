//! Run mode's command line: `tapwire run [OPTIONS] [-- CMD [ARGS...]]`.
//!
//! Theory of operation: [`super::parse`] picks this front end when argv\[1\] is literally
//! `run` (a PID never is, and slirp4netns clients always put options first), drops that word
//! and lets [`RunCli`] parse the rest under the name `tapwire run`. The network options are
//! the daemon's ([`super::NetOpts`], the same validation and messages); the interface is always
//! configured, so `-c` and the daemon-only flags do not exist here. The first positional
//! starts the command: everything after it, flags included, belongs to the command.
//! `--bypass` adds bypass mode's options ([`Bypass`]); `--bypass-udp`, `--no-bypass-udp` (the
//! default, kept for older scripts) and `--ignore` require it. The result is a [`RunArgs`].
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::str::FromStr as _;

use clap::{ArgAction, Parser};

use tapwire_proto::bypass::Cidr as IgnoreCidr;
use tapwire_proto::config::{NetConfig, Publish};

use super::{parse_ifname, NetOpts};

/// `tapwire run [OPTIONS] [-- CMD [ARGS...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub tapname: String,
    pub net: NetConfig,
    /// `-p/--publish`, in order.
    pub publish: Vec<Publish>,
    /// `-p auto...`: automatic publishing rules, in order.
    pub auto_publish: Vec<tapwire_proto::autopublish::AutoRule>,
    /// `--pcap FILE`: capture every frame crossing the TAP.
    pub pcap: Option<std::path::PathBuf>,
    /// `--forward-to-host`, in order (`auto` is resolved at start-up).
    pub forward_to_host: Vec<tapwire_proto::to_host::ToHost>,
    /// Empty: the user's $SHELL (or /bin/sh).
    pub command: Vec<OsString>,
    /// `--map-auto`: map more ids than root ([`crate::netns::idmap`]).
    pub map_auto: bool,
    /// `--bypass`.
    pub bypass: Option<Bypass>,
}

/// Bypass mode options of `tapwire run --bypass`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bypass {
    /// `--bypass-udp`: connected UDP sockets are bypassed too, and the filter traps sends.
    pub udp: bool,
    /// `--ignore`: destinations never bypassed.
    pub ignore: Vec<tapwire_proto::bypass::Cidr>,
}

/// Run mode's clap definition.
#[derive(Debug, Parser)]
#[command(
    name = "tapwire-run",
    about = "Run a command in a new user+network namespace wired to tapwire",
    override_usage = "tapwire run [OPTIONS] [-- CMD [ARGS...]]",
    after_help = "The interface is always configured (as with -c). Without CMD, runs $SHELL (or /bin/sh).",
    args_override_self = true
)]
pub(super) struct RunCli {
    /// Name of the tap device
    #[arg(long, value_name = "NAME", default_value = "tap0", value_parser = parse_ifname)]
    tapname: String,

    #[command(flatten)]
    net: NetOpts,

    /// Map uids/gids 1..N too, not only root (as root: the host's 0-65535; otherwise the first /etc/subuid and /etc/subgid ranges, through newuidmap/newgidmap), so that Podman, Docker or apt work inside
    #[arg(long)]
    map_auto: bool,

    /// Bypass mode: give the command host sockets for its TCP and UDP connections (seccomp user notification; traffic runs at host speed)
    #[arg(long)]
    bypass: bool,

    /// With --bypass: bypass connected UDP sockets too; traps every sendmsg/sendmmsg and every sendto with an address, so unconnected UDP (VPNs, QUIC servers) gets slower (default: UDP stays on the tap, no send is trapped)
    #[arg(long, requires = "bypass", conflicts_with = "no_bypass_udp")]
    bypass_udp: bool,

    /// With --bypass: UDP stays on the tap (the default; kept for older scripts)
    #[arg(long, requires = "bypass")]
    no_bypass_udp: bool,

    /// With --bypass: never bypass destinations in CIDR (IPv4 or IPv6; repeatable)
    #[arg(long, value_name = "CIDR", requires = "bypass", value_parser = IgnoreCidr::from_str, action = ArgAction::Append)]
    ignore: Vec<tapwire_proto::bypass::Cidr>,

    /// Command and arguments to run (default: $SHELL)
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        value_parser = clap::value_parser!(OsString)
    )]
    command: Vec<OsString>,
}

impl RunCli {
    pub(super) fn into_args(self) -> RunArgs {
        RunArgs {
            tapname: self.tapname,
            publish: self.net.publishes(),
            auto_publish: self.net.auto_rules(),
            pcap: self.net.pcap.clone(),
            forward_to_host: self.net.forward_to_host.clone(),
            net: self.net.into_config(),
            command: self.command,
            map_auto: self.map_auto,
            bypass: self.bypass.then_some(Bypass {
                udp: self.bypass_udp,
                ignore: self.ignore,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tapwire_proto::config::Outbound;

    use super::super::tests::{fails, run};
    use super::*;

    #[test]
    fn run_mode() {
        let r = run(&[]);
        assert_eq!(
            (r.tapname.as_str(), r.net, r.command),
            ("tap0", NetConfig::default(), vec![])
        );

        let r = run(&[
            "-m",
            "9000",
            "--tapname",
            "eth0",
            "--macaddress=02:00:00:00:00:01",
            "--",
            "sh",
            "-c",
            "ip a",
        ]);
        assert_eq!(r.net.mtu, 9000);
        assert_eq!(r.tapname, "eth0");
        assert_eq!(r.net.guest_mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(r.command, ["sh", "-c", "ip a"]);

        // Without `--`: the first positional starts the command; later flags belong to it.
        let r = run(&["--disable-dns", "-6", "ping", "-c", "1", "--mtu", "5"]);
        assert!(r.net.disable_dns && r.net.enable_ipv6);
        assert_eq!(r.net.mtu, 1500);
        assert_eq!(r.command, ["ping", "-c", "1", "--mtu", "5"]);

        assert_eq!(run(&["--", "--weird"]).command, ["--weird"]);
        let r = run(&[
            "--cidr=10.9.0.0/24",
            "--outbound-addr=1.2.3.4",
            "--no-host-loopback",
        ]);
        assert_eq!(r.net.network, Ipv4Addr::new(10, 9, 0, 0));
        assert_eq!(
            r.net.outbound4,
            Some(Outbound::Addr(Ipv4Addr::new(1, 2, 3, 4)))
        );
        assert!(r.net.disable_host_loopback);
    }

    #[test]
    fn run_mode_errors_share_validation() {
        fails(
            &["run", "--mtu=0"],
            &["--mtu", "MTU must be a positive integer (< 65522)"],
        );
        fails(
            &["run", "--cidr=10.0.2.1/24"],
            &["--cidr", "network address"],
        );
        fails(&["run", "--outbound-addr6=1.2.3.4"], &["--outbound-addr6"]);
        fails(
            &["run", "--macaddress=ff:ff:ff:ff:ff:ff"],
            &["--macaddress", "unicast"],
        );
        fails(&["run", "--tapname=a/b"], &["--tapname"]);
        // Daemon-only flags are not run options.
        fails(&["run", "-c"], &["-c"]);
        fails(&["run", "--api-socket=/x"], &["--api-socket"]);
    }
}
