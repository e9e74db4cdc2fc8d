//! The slirp4netns-compatible daemon command line: `tapwire [OPTIONS] PID|PATH [TAPNAME]`.
//!
//! Theory of operation: this front end is a drop-in for slirp4netns. Every slirp4netns flag is
//! accepted under its long name (RootlessKit and Podman grep `--help` for them) and produces
//! the same errors for the same bad values; `-v` (not `-V`) prints the version, in
//! slirp4netns's `key: value` lines. [`DaemonCli`] is the clap definition, the network options
//! shared with run mode are flattened in from [`super::NetOpts`], and
//! [`DaemonCli::into_args`] runs the checks that span several arguments, through
//! [`clap::Command::error`] so that they look and exit like clap's own errors:
//!
//! - the positional's meaning depends on `--netns-type`: a PID ([`parse_pid`]) or an existing
//!   namespace file ([`parse_netns_path`]), giving a [`Target`];
//! - `--macaddress` needs `-c`.
//!
//! The result is a [`DaemonArgs`], which start-up consumes.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr as _;

use clap::builder::TypedValueParser as _;
use clap::error::ErrorKind;
use clap::{ArgAction, Parser, ValueEnum};

use tapwire_proto::bypass::Cidr as IgnoreCidr;
use tapwire_proto::config::{NetConfig, Publish};

use super::{parse_digits, parse_ifname, parse_socket_path, NetOpts};
use crate::netns::Target;

/// The slirp4netns-compatible daemon command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArgs {
    pub target: Target,
    /// `--userns-path`: user namespace to join before the netns (else the PID's, or none for a path).
    pub userns_path: Option<PathBuf>,
    /// Name of the tap device (default "tap0").
    pub tapname: String,
    /// `-c`.
    pub configure: bool,
    pub exit_fd: Option<RawFd>,
    pub ready_fd: Option<RawFd>,
    /// `-a/--api-socket`: where the control socket listens.
    pub control_socket: Option<PathBuf>,
    pub enable_sandbox: bool,
    pub enable_seccomp: bool,
    pub net: NetConfig,
    /// `-p/--publish`, in order.
    pub publish: Vec<Publish>,
    /// `-p auto...`: automatic publishing rules, in order.
    pub auto_publish: Vec<tapwire_proto::autopublish::AutoRule>,
    /// `--pcap FILE`: capture every frame crossing the TAP.
    pub pcap: Option<std::path::PathBuf>,
    /// `--forward-to-host`, in order (`auto` is resolved at start-up).
    pub forward_to_host: Vec<tapwire_proto::to_host::ToHost>,
    /// `--seccomp-listener`: bypass for OCI runtimes, whose seccomp listeners arrive here.
    pub seccomp_listener: Option<PathBuf>,
    /// `--ignore` (with `--seccomp-listener`): destinations never bypassed.
    pub ignore: Vec<tapwire_proto::bypass::Cidr>,
}

/// What `-v/--version` prints after "tapwire ": slirp4netns-style `key: value` lines.
const VERSION: &str = concat!(
    "version ",
    env!("CARGO_PKG_VERSION"),
    "\nengine: smoltcp 0.14 (userspace TCP/IP)"
);

const DAEMON_AFTER_HELP: &str = "\
PID is the process whose network namespace (and user namespace) to join; with
--netns-type=path, PATH is a network namespace file instead.

Run mode: tapwire run [OPTIONS] [-- CMD [ARGS...]]
  runs CMD (default: $SHELL) in a new user+network namespace wired to tapwire.
  See 'tapwire run --help'.

Control client: tapwire ctl --api-socket PATH <add-hostfwd|list-hostfwd|remove-hostfwd|connections|stats>

Bypass for OCI runtimes: tapwire seccomp-profile prints the linux.seccomp profile
  whose listenerPath is served by --seccomp-listener.";

/// `--netns-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetnsType {
    /// The positional argument is a PID.
    Pid,
    /// The positional argument is a network namespace path.
    Path,
}

/// The daemon's clap definition (slirp4netns flags).
#[derive(Debug, Parser)]
#[command(
    name = "tapwire",
    version = VERSION,
    about = "Userspace network forwarder for rootless containers (slirp4netns compatible)",
    override_usage = "tapwire [OPTIONS] PID|PATH [TAPNAME]\n       tapwire run [OPTIONS] [-- CMD [ARGS...]]",
    after_help = DAEMON_AFTER_HELP,
    disable_version_flag = true,
    args_override_self = true
)]
pub(super) struct DaemonCli {
    /// Bring up the interface: address network+100, default route via network+2
    #[arg(short = 'c', long)]
    configure: bool,

    /// Exit when FD is closed by its writer
    #[arg(short = 'e', long, value_name = "FD", value_parser = parse_fd, allow_negative_numbers = true)]
    exit_fd: Option<RawFd>,

    /// Write "1" to FD and close it once ready
    #[arg(short = 'r', long, value_name = "FD", value_parser = parse_fd, allow_negative_numbers = true)]
    ready_fd: Option<RawFd>,

    /// Path of the JSON API socket (port forwarding)
    #[arg(
        short = 'a',
        long,
        value_name = "PATH",
        value_parser = clap::builder::PathBufValueParser::new().try_map(parse_socket_path)
    )]
    api_socket: Option<PathBuf>,

    /// How to interpret PID|PATH
    #[arg(long, value_name = "TYPE", value_enum, default_value_t = NetnsType::Pid)]
    netns_type: NetnsType,

    /// User namespace to join before the network namespace
    #[arg(long, value_name = "PATH")]
    userns_path: Option<PathBuf>,

    /// Sandbox the process: private mount namespace, read-only root, no capabilities
    #[arg(long, visible_alias = "create-sandbox")]
    enable_sandbox: bool,

    /// Restrict system calls with seccomp
    #[arg(long)]
    enable_seccomp: bool,

    /// Bypass mode for OCI runtimes: serve the seccomp listeners runc/crun send to this UNIX socket (listenerPath of `tapwire seccomp-profile`)
    #[arg(
        long,
        value_name = "PATH",
        value_parser = clap::builder::PathBufValueParser::new().try_map(parse_socket_path)
    )]
    seccomp_listener: Option<PathBuf>,

    /// With --seccomp-listener: never bypass destinations in CIDR (IPv4 or IPv6; repeatable)
    #[arg(long, value_name = "CIDR", requires = "seccomp_listener", value_parser = IgnoreCidr::from_str, action = ArgAction::Append)]
    ignore: Vec<tapwire_proto::bypass::Cidr>,

    #[command(flatten)]
    net: NetOpts,

    /// Print version information
    #[arg(short = 'v', long, action = ArgAction::Version)]
    version: (),

    /// Process ID, or network namespace path with --netns-type=path
    #[arg(value_name = "PID|PATH", value_parser = clap::value_parser!(OsString))]
    target: OsString,

    /// Name of the tap device
    #[arg(value_name = "TAPNAME", default_value = "tap0", value_parser = parse_ifname)]
    tapname: String,
}

impl DaemonCli {
    pub(super) fn into_args(self, cmd: &mut clap::Command) -> Result<DaemonArgs, clap::Error> {
        if self.net.macaddress.is_some() && !self.configure {
            return Err(cmd.error(
                ErrorKind::MissingRequiredArgument,
                "--macaddress: only valid together with -c/--configure",
            ));
        }
        let target = match self.netns_type {
            NetnsType::Pid => self
                .target
                .to_str()
                .ok_or_else(|| PID_MSG.to_owned())
                .and_then(parse_pid),
            NetnsType::Path => parse_netns_path(&self.target),
        }
        .map_err(|msg| {
            let value = self.target.to_string_lossy();
            cmd.error(
                ErrorKind::ValueValidation,
                format!("invalid value '{value}' for 'PID|PATH': {msg}"),
            )
        })?;
        Ok(DaemonArgs {
            target,
            userns_path: self.userns_path,
            tapname: self.tapname,
            configure: self.configure,
            exit_fd: self.exit_fd,
            ready_fd: self.ready_fd,
            control_socket: self.api_socket,
            enable_sandbox: self.enable_sandbox,
            enable_seccomp: self.enable_seccomp,
            publish: self.net.publishes(),
            auto_publish: self.net.auto_rules(),
            pcap: self.net.pcap.clone(),
            forward_to_host: self.net.forward_to_host.clone(),
            net: self.net.into_config(),
            seccomp_listener: self.seccomp_listener,
            ignore: self.ignore,
        })
    }
}

/// `-e/--exit-fd`, `-r/--ready-fd`: a non-negative descriptor number.
fn parse_fd(s: &str) -> Result<RawFd, String> {
    parse_digits::<RawFd>(s).ok_or_else(|| "FD must be a non-negative integer".to_owned())
}

const PID_MSG: &str = "PID must be a positive integer";

/// The daemon's positional with `--netns-type=pid`.
fn parse_pid(s: &str) -> Result<Target, String> {
    parse_digits::<i32>(s)
        .filter(|&p| p > 0)
        .map(Target::Pid)
        .ok_or_else(|| PID_MSG.to_owned())
}

/// The daemon's positional with `--netns-type=path`: an existing file.
fn parse_netns_path(s: &OsStr) -> Result<Target, String> {
    let path = PathBuf::from(s);
    if path.exists() {
        Ok(Target::Path(path))
    } else {
        Err("netns path does not exist".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tapwire_proto::config::Outbound;

    use super::super::tests::{daemon, fails};
    use super::*;

    #[test]
    fn defaults() {
        let d = daemon(&["1234"]);
        assert_eq!(
            d,
            DaemonArgs {
                target: Target::Pid(1234),
                userns_path: None,
                tapname: "tap0".into(),
                configure: false,
                exit_fd: None,
                ready_fd: None,
                control_socket: None,
                enable_sandbox: false,
                enable_seccomp: false,
                net: NetConfig::default(),
                publish: vec![],
                auto_publish: vec![],
                pcap: None,
                forward_to_host: vec![],
                seccomp_listener: None,
                ignore: vec![],
            }
        );
        assert_eq!(d.net.mtu, 1500);
        assert_eq!(
            (d.net.network, d.net.prefix),
            (Ipv4Addr::new(10, 0, 2, 0), 24)
        );
        assert_eq!(daemon(&["1", "eth7"]).tapname, "eth7");
    }

    #[test]
    fn every_daemon_flag() {
        let d = daemon(&[
            "-c",
            "-e",
            "4",
            "-r=3",
            "-m",
            "65520",
            "-6",
            "-a",
            "/tmp/api.sock",
            "--cidr=10.1.0.0/16",
            "--disable-host-loopback",
            "--userns-path=/proc/7/ns/user",
            "--enable-sandbox",
            "--enable-seccomp",
            "--outbound-addr=192.0.2.1",
            "--outbound-addr6",
            "eth0",
            "--disable-dns",
            "--macaddress=02:AB:cd:00:00:01",
            "42",
            "tap1",
        ]);
        assert_eq!(d.target, Target::Pid(42));
        assert_eq!(d.tapname, "tap1");
        assert!(d.configure && d.enable_sandbox && d.enable_seccomp);
        assert_eq!((d.exit_fd, d.ready_fd), (Some(4), Some(3)));
        assert_eq!(d.control_socket, Some(PathBuf::from("/tmp/api.sock")));
        assert_eq!(d.userns_path, Some(PathBuf::from("/proc/7/ns/user")));
        let n = &d.net;
        assert_eq!(n.mtu, 65520);
        assert!(n.enable_ipv6 && n.disable_host_loopback && n.disable_dns);
        assert_eq!((n.network, n.prefix), (Ipv4Addr::new(10, 1, 0, 0), 16));
        assert_eq!(
            n.outbound4,
            Some(Outbound::Addr(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(n.outbound6, Some(Outbound::Device("eth0".into())));
        assert_eq!(n.guest_mac, Some([0x02, 0xab, 0xcd, 0, 0, 1]));
    }

    #[test]
    fn client_invocations() {
        // RootlessKit.
        let d = daemon(&["--mtu", "65520", "-r", "3", "--enable-ipv6", "999", "tap0"]);
        assert_eq!(
            (d.net.mtu, d.ready_fd, d.target),
            (65520, Some(3), Target::Pid(999))
        );
        // Podman.
        let d = daemon(&[
            "--disable-host-loopback",
            "--mtu=65520",
            "--enable-sandbox",
            "--enable-seccomp",
            "--enable-ipv6",
            "-c",
            "-r",
            "3",
            "-e",
            "4",
            "--netns-type=path",
            "/proc/self/ns/net",
            "tap0",
        ]);
        assert_eq!(d.target, Target::Path("/proc/self/ns/net".into()));
        assert_eq!((d.exit_fd, d.ready_fd), (Some(4), Some(3)));
        // Combined short flags, attached values, repeated options (last wins, as getopt).
        let d = daemon(&["-c6m9000", "--mtu=1400", "--mtu", "1300", "1"]);
        assert!(d.configure && d.net.enable_ipv6);
        assert_eq!(d.net.mtu, 1300);
    }

    #[test]
    fn aliases() {
        let d = daemon(&["--no-host-loopback", "--create-sandbox", "1"]);
        assert!(d.net.disable_host_loopback && d.enable_sandbox);
        assert_eq!(daemon(&["--netns-type", "pid", "1"]).target, Target::Pid(1));
    }

    #[test]
    fn target_errors() {
        for bad in ["0", "abc", "", "1.5", "99999999999"] {
            fails(&[bad], &["PID|PATH", "PID must be a positive integer"]);
        }
        // A leading '-' looks like a flag to clap; after `--` it is our own error.
        fails(&["-1"], &["-1"]);
        fails(&["--", "-1"], &["PID must be a positive integer"]);
        fails(
            &["--netns-type=path", "/nonexistent/netns"],
            &["PID|PATH", "does not exist"],
        );
        fails(&["--netns-type=bogus", "1"], &["--netns-type"]);
        fails(&[], &["PID|PATH"]);
        fails(&["1", "bad/tap"], &["TAPNAME"]);
        fails(&["1", "tap0", "extra"], &["extra"]);
    }

    #[test]
    fn other_value_errors() {
        fails(&["-e", "-3", "1"], &["--exit-fd", "non-negative"]);
        fails(&["-m", "-1", "1"], &["--mtu", "positive"]);
        fails(
            &["--ready-fd=x", "1"],
            &["--ready-fd", "FD must be a non-negative integer"],
        );
        fails(
            &["-a", &"x".repeat(108), "1"],
            &["--api-socket", "sun_path"],
        );
        fails(&["--api-socket=", "1"], &["--api-socket"]);
        assert_eq!(
            daemon(&["-a", &"x".repeat(107), "1"])
                .control_socket
                .unwrap()
                .as_os_str()
                .len(),
            107
        );
        fails(&["--bogus", "1"], &["--bogus"]);
    }
}
