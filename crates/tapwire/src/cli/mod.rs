//! Command line: slirp4netns-compatible flags and `tapwire run`.
//!
//! Theory of operation: tapwire has two front ends sharing one set of network options.
//!
//! - The daemon, `tapwire [OPTIONS] PID|PATH [TAPNAME]`, is a drop-in for slirp4netns: every
//!   slirp4netns flag is accepted under its long name (RootlessKit and Podman grep `--help`
//!   for them) and produces the same errors for the same bad values.
//! - Run mode, `tapwire run [OPTIONS] [-- CMD [ARGS...]]`, is chosen when argv\[1\] is
//!   literally `run` (a PID never is, and slirp4netns clients always put options first).
//!
//! Parsing happens in three layers, so that no check exists twice:
//!
//! 1. One `parse_*` function per validated value (MTU, CIDR, MAC, fd, interface name,
//!    outbound address, socket path), plugged into clap as value parsers. clap prefixes their
//!    messages with the flag (`invalid value 'abc' for '--mtu <MTU>': ...`), so every error
//!    names its flag.
//! 2. [`NetOpts`], the options both front ends share, is flattened into both clap commands and
//!    turned into a [`NetConfig`] by one function.
//! 3. Checks that span several arguments (the positional's meaning depends on
//!    `--netns-type`; `--macaddress` needs `-c`) run after clap, through [`clap::Command::error`]
//!    so that they look and exit like clap's own errors.
//!
//! Options follow getopt's habits where clap's defaults differ: a repeated option overrides the
//! earlier one, and `-v` (not `-V`) prints the version. Nothing here panics on any argv; non-UTF-8
//! arguments are a clap error except where they are paths or the command to run.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, ValueEnum};

use tapwire_proto::config::{NetConfig, Outbound, Proto, Publish};

/// Which network namespace to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--netns-type=pid` (default): /proc/PID/ns/{user,net}.
    Pid(i32),
    /// `--netns-type=path`: a netns file (e.g. /run/netns/x or /proc/N/ns/net).
    Path(PathBuf),
}

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
    pub api_socket: Option<PathBuf>,
    pub enable_sandbox: bool,
    pub enable_seccomp: bool,
    pub net: NetConfig,
    /// `-p/--publish`, in order.
    pub publish: Vec<Publish>,
    /// `--seccomp-listener`: bypass for OCI runtimes, whose seccomp listeners arrive here.
    pub seccomp_listener: Option<PathBuf>,
    /// `--ignore` (with `--seccomp-listener`): destinations never bypassed.
    pub ignore: Vec<tapwire_proto::bypass::Cidr>,
}

/// Bypass mode options of `tapwire run --bypass`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bypass {
    /// UDP connects are bypassed too (not `--no-bypass-udp`).
    pub udp: bool,
    /// `--ignore`: destinations never bypassed.
    pub ignore: Vec<tapwire_proto::bypass::Cidr>,
}

/// `tapwire seccomp-profile`: print the OCI seccomp profile for bypass mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileArgs {
    /// Where tapwire's `--seccomp-listener` listens (the profile's `listenerPath`).
    pub listener_path: PathBuf,
    /// Trap the sends too, so that UDP can be bypassed.
    pub udp: bool,
}

/// `tapwire run [OPTIONS] [-- CMD [ARGS...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub tapname: String,
    pub net: NetConfig,
    /// `-p/--publish`, in order.
    pub publish: Vec<Publish>,
    /// Empty: the user's $SHELL (or /bin/sh).
    pub command: Vec<OsString>,
    /// `--bypass`.
    pub bypass: Option<Bypass>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Daemon(Box<DaemonArgs>),
    Run(Box<RunArgs>),
    Ctl(Box<CtlArgs>),
    SeccompProfile(Box<ProfileArgs>),
}

/// `tapwire ctl --api-socket PATH [--json] ACTION`: a client of the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlArgs {
    pub api_socket: PathBuf,
    /// Print the raw JSON reply.
    pub json: bool,
    pub action: CtlAction,
}

/// What `tapwire ctl` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlAction {
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

/// Parse argv (including argv[0]). On error or --help/--version the clap error is returned;
/// the caller calls `.exit()` on it.
pub fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let bin = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|f| f.to_str())
        .unwrap_or("tapwire")
        .to_owned();
    if args.get(1).is_some_and(|a| a == "ctl") {
        args.remove(1);
        let mut cmd = CtlCli::command().bin_name(format!("{bin} ctl"));
        let cli = CtlCli::from_arg_matches(&cmd.try_get_matches_from_mut(args)?)?;
        return Ok(Command::Ctl(Box::new(cli.into_args())));
    }
    if args.get(1).is_some_and(|a| a == "seccomp-profile") {
        args.remove(1);
        let mut cmd = ProfileCli::command().bin_name(format!("{bin} seccomp-profile"));
        let cli = ProfileCli::from_arg_matches(&cmd.try_get_matches_from_mut(args)?)?;
        return Ok(Command::SeccompProfile(Box::new(ProfileArgs {
            listener_path: cli.listener_path,
            udp: !cli.no_bypass_udp,
        })));
    }
    if args.get(1).is_some_and(|a| a == "run") {
        // Drop "run": clap parses the rest as the run command, named "tapwire run" in messages.
        args.remove(1);
        let mut cmd = RunCli::command().bin_name(format!("{bin} run"));
        let cli = RunCli::from_arg_matches(&cmd.try_get_matches_from_mut(args)?)?;
        Ok(Command::Run(Box::new(cli.into_args())))
    } else {
        let mut cmd = DaemonCli::command().bin_name(bin);
        let cli = DaemonCli::from_arg_matches(&cmd.try_get_matches_from_mut(args)?)?;
        cli.into_args(&mut cmd)
            .map(|a| Command::Daemon(Box::new(a)))
    }
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
struct DaemonCli {
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
    #[arg(long, value_name = "CIDR", requires = "seccomp_listener", value_parser = parse_ignore, action = ArgAction::Append)]
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
    fn into_args(self, cmd: &mut clap::Command) -> Result<DaemonArgs, clap::Error> {
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
            api_socket: self.api_socket,
            enable_sandbox: self.enable_sandbox,
            enable_seccomp: self.enable_seccomp,
            publish: self.net.publish.clone(),
            net: self.net.into_config(),
            seccomp_listener: self.seccomp_listener,
            ignore: self.ignore,
        })
    }
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
struct RunCli {
    /// Name of the tap device
    #[arg(long, value_name = "NAME", default_value = "tap0", value_parser = parse_ifname)]
    tapname: String,

    #[command(flatten)]
    net: NetOpts,

    /// Bypass mode: give the command host sockets for its TCP and UDP connections (seccomp user notification; traffic runs at host speed)
    #[arg(long)]
    bypass: bool,

    /// With --bypass: keep UDP on the tap (sendmsg/sendmmsg and sendto with an address are then not trapped)
    #[arg(long, requires = "bypass")]
    no_bypass_udp: bool,

    /// With --bypass: never bypass destinations in CIDR (IPv4 or IPv6; repeatable)
    #[arg(long, value_name = "CIDR", requires = "bypass", value_parser = parse_ignore, action = ArgAction::Append)]
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
    fn into_args(self) -> RunArgs {
        RunArgs {
            tapname: self.tapname,
            publish: self.net.publish.clone(),
            net: self.net.into_config(),
            command: self.command,
            bypass: self.bypass.then_some(Bypass {
                udp: !self.no_bypass_udp,
                ignore: self.ignore,
            }),
        }
    }
}

/// `tapwire seccomp-profile`'s clap definition.
#[derive(Debug, Parser)]
#[command(
    name = "tapwire-seccomp-profile",
    about = "Print the seccomp profile (config.json's linux.seccomp) that hands a runc/crun container's socket calls to `tapwire --seccomp-listener`",
    override_usage = "tapwire seccomp-profile [--listener-path PATH] [--no-bypass-udp]"
)]
struct ProfileCli {
    /// The socket tapwire serves with --seccomp-listener
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/tapwire/seccomp.sock",
        value_parser = clap::builder::PathBufValueParser::new().try_map(parse_socket_path)
    )]
    listener_path: PathBuf,

    /// Keep UDP on the tap (fewer calls trapped: sendmsg/sendmmsg and sendto with an address pass)
    #[arg(long)]
    no_bypass_udp: bool,
}

/// `--ignore`: an IPv4 or IPv6 CIDR (or a bare address).
fn parse_ignore(s: &str) -> Result<tapwire_proto::bypass::Cidr, String> {
    s.parse()
}

/// `tapwire ctl`'s clap definition.
#[derive(Debug, Parser)]
#[command(
    name = "tapwire-ctl",
    about = "Talk to a running tapwire (or slirp4netns) control socket",
    override_usage = "tapwire ctl --api-socket PATH [--json] <COMMAND>"
)]
struct CtlCli {
    /// The daemon's --api-socket
    #[arg(short = 'a', long, value_name = "PATH")]
    api_socket: PathBuf,

    /// Print the raw JSON reply
    #[arg(long)]
    json: bool,

    #[command(subcommand)]
    action: CtlSub,
}

#[derive(Debug, clap::Subcommand)]
enum CtlSub {
    /// Forward a host port to the guest: [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]
    AddHostfwd {
        #[arg(value_name = "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/PROTO]", value_parser = parse_publish)]
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

impl CtlCli {
    fn into_args(self) -> CtlArgs {
        let action = match self.action {
            CtlSub::AddHostfwd { spec, guest_addr } => CtlAction::AddHostfwd {
                publish: spec,
                guest_addr,
            },
            CtlSub::ListHostfwd => CtlAction::ListHostfwd,
            CtlSub::RemoveHostfwd { id } => CtlAction::RemoveHostfwd { id },
            CtlSub::Connections => CtlAction::Connections,
            CtlSub::Stats => CtlAction::Stats,
        };
        CtlArgs {
            api_socket: self.api_socket,
            json: self.json,
            action,
        }
    }
}

/// Network options shared by the daemon and run mode.
#[derive(Debug, Args)]
struct NetOpts {
    /// MTU of the tap device (max 65521)
    #[arg(short = 'm', long, value_name = "MTU", default_value = "1500", value_parser = parse_mtu, allow_negative_numbers = true)]
    mtu: u32,

    /// Enable IPv6 (fd00::/64)
    #[arg(short = '6', long)]
    enable_ipv6: bool,

    /// IPv4 network of the guest [default: 10.0.2.0/24]
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    cidr: Option<Cidr>,

    /// IPv6 prefix of the guest (a /64; with -6) [default: fd00::/64]
    #[arg(long, value_name = "PREFIX/64", value_parser = parse_cidr6)]
    cidr6: Option<Ipv6Addr>,

    /// Do not let the gateway address reach the host's 127.0.0.1
    #[arg(long, visible_alias = "no-host-loopback")]
    disable_host_loopback: bool,

    /// Source address or interface for outbound IPv4 connections
    #[arg(long, value_name = "IPv4|IFNAME", value_parser = parse_outbound4)]
    outbound_addr: Option<Outbound<Ipv4Addr>>,

    /// Source address or interface for outbound IPv6 connections
    #[arg(long, value_name = "IPv6|IFNAME", value_parser = parse_outbound6)]
    outbound_addr6: Option<Outbound<Ipv6Addr>>,

    /// Disable the DNS forwarder at network+3
    #[arg(long)]
    disable_dns: bool,

    /// Do not offer checksum and TCP segmentation offload to the guest (TSO lets it send and
    /// receive 64 KiB TCP segments while its MTU stays as set)
    #[arg(long)]
    disable_offload: bool,

    /// MAC address of the tap device (requires -c in daemon mode)
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    macaddress: Option<[u8; 6]>,

    /// Publish a guest port on the host: [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp] (repeatable)
    #[arg(short = 'p', long, value_name = "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/PROTO]", value_parser = parse_publish, action = ArgAction::Append)]
    publish: Vec<Publish>,
}

impl NetOpts {
    fn into_config(self) -> NetConfig {
        let default = NetConfig::default();
        let Cidr { network, prefix } = self.cidr.unwrap_or(Cidr {
            network: default.network,
            prefix: default.prefix,
        });
        NetConfig {
            network,
            prefix,
            mtu: self.mtu,
            guest_mac: self.macaddress,
            disable_host_loopback: self.disable_host_loopback,
            disable_dns: self.disable_dns,
            enable_ipv6: self.enable_ipv6,
            prefix6: self.cidr6.unwrap_or(default.prefix6),
            outbound4: self.outbound_addr,
            outbound6: self.outbound_addr6,
            offload: !self.disable_offload,
        }
    }
}

/// `-p/--publish`: `[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]`; an IPv6 HOST_ADDR is
/// written in brackets (`[::1]:8080:80`). Ports are 1..=65535; the default HOST_ADDR is 0.0.0.0.
fn parse_publish(s: &str) -> Result<Publish, String> {
    const MSG: &str = "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]";
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, "tcp")) => (spec, Proto::Tcp),
        Some((spec, "udp")) => (spec, Proto::Udp),
        Some((_, other)) => return Err(format!("unknown protocol '{other}' (tcp or udp)")),
        None => (s, Proto::Tcp),
    };
    let port = |p: &str| -> Result<u16, String> {
        parse_digits::<u16>(p)
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("invalid port '{p}' (1-65535)"))
    };
    let (rest, guest) = spec.rsplit_once(':').ok_or(MSG)?;
    let guest_port = port(guest)?;
    let (host_addr, host_port) = match rest.rsplit_once(':') {
        None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), port(rest)?),
        Some((addr, hp)) => {
            let addr = addr
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(addr);
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("invalid host address '{addr}'"))?;
            (ip, port(hp)?)
        }
    };
    Ok(Publish {
        proto,
        host_addr,
        host_port,
        guest_port,
    })
}

/// `--cidr6`: an IPv6 /64 network prefix (the host part must be zero).
fn parse_cidr6(s: &str) -> Result<Ipv6Addr, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or("invalid CIDR (expected PREFIX/64)")?;
    let prefix6: Ipv6Addr = addr.parse().map_err(|_| "invalid IPv6 prefix")?;
    if prefix != "64" {
        return Err("prefix length needs to be 64 (SLAAC)".to_owned());
    }
    if u128::from(prefix6) & u128::from(u64::MAX) != 0 {
        return Err("CIDR needs to be a network address".to_owned());
    }
    if prefix6.is_multicast() || prefix6.is_loopback() || prefix6.segments()[0] & 0xffc0 == 0xfe80 {
        return Err("prefix must be a unicast, non-link-local prefix".to_owned());
    }
    Ok(prefix6)
}

/// A validated `--cidr` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Only ASCII digits (no sign, no whitespace) parsed as `N`, else `None`.
fn parse_digits<N: std::str::FromStr>(s: &str) -> Option<N> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `-m/--mtu`: 1..=65521, as in slirp4netns.
fn parse_mtu(s: &str) -> Result<u32, String> {
    parse_digits::<u32>(s)
        .filter(|m| (1..=65521).contains(m))
        .ok_or_else(|| "MTU must be a positive integer (< 65522)".to_owned())
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

/// `--cidr`: an IPv4 network address with a prefix of 1..=25 (the guest sits at network+100).
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = s.split_once('/').ok_or("invalid CIDR")?;
    let network: Ipv4Addr = addr.parse().map_err(|_| "invalid CIDR")?;
    let prefix: u8 = parse_digits(prefix).ok_or("invalid CIDR")?;
    if !(1..=25).contains(&prefix) {
        return Err("prefix length needs to be 1-25".to_owned());
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(network) & !mask != 0 {
        return Err("CIDR needs to be a network address".to_owned());
    }
    Ok(Cidr { network, prefix })
}

/// `--macaddress`: six colon-separated hex octets, a unicast non-zero address.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    const MSG: &str = "invalid MAC address (expected xx:xx:xx:xx:xx:xx)";
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for octet in &mut mac {
        let part = parts.next().ok_or(MSG)?;
        if !(1..=2).contains(&part.len()) || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MSG.to_owned());
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| MSG)?;
    }
    if parts.next().is_some() {
        return Err(MSG.to_owned());
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err("MAC address must be unicast and non-zero".to_owned());
    }
    Ok(mac)
}

/// A Linux interface name (TAPNAME, `--tapname`, `--outbound-addr*`), as the kernel's
/// `dev_valid_name`: 1..=15 bytes, not "." or "..", no '/', ':' or whitespace.
fn parse_ifname(s: &str) -> Result<String, String> {
    let ok = (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(s.to_owned())
    } else {
        Err("invalid interface name (1-15 bytes, no '/', ':' or whitespace)".to_owned())
    }
}

/// `--outbound-addr*`: an IP literal or an interface name.
fn parse_outbound(s: &str) -> Result<Outbound<IpAddr>, String> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(Outbound::Addr(ip)),
        Err(_) => parse_ifname(s)
            .map(Outbound::Device)
            .map_err(|_| "expected an IP address or a valid interface name".to_owned()),
    }
}

/// `--outbound-addr`: IPv4 literal or interface name.
fn parse_outbound4(s: &str) -> Result<Outbound<Ipv4Addr>, String> {
    match parse_outbound(s)? {
        Outbound::Addr(IpAddr::V4(a)) => Ok(Outbound::Addr(a)),
        Outbound::Addr(IpAddr::V6(_)) => {
            Err("expected an IPv4 address (use --outbound-addr6 for IPv6)".to_owned())
        }
        Outbound::Device(d) => Ok(Outbound::Device(d)),
    }
}

/// `--outbound-addr6`: IPv6 literal or interface name.
fn parse_outbound6(s: &str) -> Result<Outbound<Ipv6Addr>, String> {
    match parse_outbound(s)? {
        Outbound::Addr(IpAddr::V6(a)) => Ok(Outbound::Addr(a)),
        Outbound::Addr(IpAddr::V4(_)) => {
            Err("expected an IPv6 address (use --outbound-addr for IPv4)".to_owned())
        }
        Outbound::Device(d) => Ok(Outbound::Device(d)),
    }
}

/// `-a/--api-socket`: non-empty and short enough for `sun_path` (108 bytes with the NUL).
fn parse_socket_path(p: PathBuf) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let len = p.as_os_str().as_bytes().len();
    if len == 0 || len >= 108 {
        return Err(format!(
            "socket path must be 1-107 bytes (sun_path), got {len}"
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt as _;

    use super::*;

    fn daemon(args: &[&str]) -> DaemonArgs {
        match parse(std::iter::once("tapwire").chain(args.iter().copied())) {
            Ok(Command::Daemon(d)) => *d,
            other => panic!("{args:?}: expected daemon, got {other:?}"),
        }
    }

    fn run(args: &[&str]) -> RunArgs {
        match parse(["tapwire", "run"].into_iter().chain(args.iter().copied())) {
            Ok(Command::Run(r)) => *r,
            other => panic!("{args:?}: expected run, got {other:?}"),
        }
    }

    /// The error for `args`, checking that its message contains every string of `needles`.
    fn fails(args: &[&str], needles: &[&str]) -> clap::Error {
        let err = match parse(std::iter::once("tapwire").chain(args.iter().copied())) {
            Err(e) => e,
            Ok(c) => panic!("{args:?}: expected an error, got {c:?}"),
        };
        let text = err.to_string();
        for n in needles {
            assert!(text.contains(n), "{args:?}: {n:?} not in {text:?}");
        }
        err
    }

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
                api_socket: None,
                enable_sandbox: false,
                enable_seccomp: false,
                net: NetConfig::default(),
                publish: vec![],
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
        assert_eq!(d.api_socket, Some(PathBuf::from("/tmp/api.sock")));
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
    fn outbound_values() {
        let n = daemon(&["--outbound-addr=eth0", "--outbound-addr6=2001:db8::1", "1"]).net;
        assert_eq!(n.outbound4, Some(Outbound::Device("eth0".into())));
        assert_eq!(
            n.outbound6,
            Some(Outbound::Addr("2001:db8::1".parse().unwrap()))
        );
        fails(
            &["--outbound-addr6=10.0.0.1", "1"],
            &["--outbound-addr6", "IPv6"],
        );
        fails(&["--outbound-addr=::1", "1"], &["--outbound-addr", "IPv4"]);
        for bad in ["", "a/b", "a b", ".", "..", "0123456789abcdef"] {
            fails(&["--outbound-addr", bad, "1"], &["--outbound-addr"]);
        }
        assert_eq!(
            daemon(&["--outbound-addr=0123456789abcde", "1"])
                .net
                .outbound4,
            Some(Outbound::Device("0123456789abcde".into()))
        );
    }

    #[test]
    fn mtu_errors() {
        for bad in ["0", "65522", "abc", "-1", "", "+5", "99999999999"] {
            fails(
                &[&format!("--mtu={bad}"), "1"],
                &["--mtu", "MTU must be a positive integer (< 65522)"],
            );
        }
        assert_eq!(daemon(&["-m", "1", "1"]).net.mtu, 1);
        assert_eq!(daemon(&["-m", "65521", "1"]).net.mtu, 65521);
    }

    #[test]
    fn cidr_errors() {
        let cases = [
            ("10.0.2.1/24", "CIDR needs to be a network address"),
            ("10.0.2.0/26", "prefix length needs to be 1-25"),
            ("10.0.2.0/0", "prefix length needs to be 1-25"),
            ("garbage", "invalid CIDR"),
            ("10.0.2.0", "invalid CIDR"),
            ("10.0.2.0/x", "invalid CIDR"),
            ("10.0.2.0/", "invalid CIDR"),
            ("fd00::/64", "invalid CIDR"),
            ("10.0.2.0/999", "invalid CIDR"),
        ];
        for (bad, msg) in cases {
            fails(&["--cidr", bad, "1"], &["--cidr", msg]);
        }
        let n = daemon(&["--cidr=192.168.0.0/25", "1"]).net;
        assert_eq!((n.network, n.prefix), (Ipv4Addr::new(192, 168, 0, 0), 25));
        let n = daemon(&["--cidr=128.0.0.0/1", "1"]).net;
        assert_eq!((n.network, n.prefix), (Ipv4Addr::new(128, 0, 0, 0), 1));
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
    fn macaddress_errors() {
        fails(
            &["--macaddress=02:00:00:00:00:01", "1"],
            &["--macaddress", "-c"],
        );
        for bad in [
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02-00-00-00-00-01",
            "zz:00:00:00:00:01",
            "002:00:00:00:00:01",
            "",
        ] {
            fails(&["-c", "--macaddress", bad, "1"], &["--macaddress"]);
        }
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
                .api_socket
                .unwrap()
                .as_os_str()
                .len(),
            107
        );
        fails(&["--bogus", "1"], &["--bogus"]);
    }

    #[test]
    fn help_and_version_are_clap_errors() {
        use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
        assert_eq!(
            fails(&["--help"], &["--netns-type", "tapwire run"]).kind(),
            DisplayHelp
        );
        assert_eq!(fails(&["-h"], &["--enable-seccomp"]).kind(), DisplayHelp);
        assert_eq!(
            fails(&["-v"], &["version ", env!("CARGO_PKG_VERSION")]).kind(),
            DisplayVersion
        );
        assert_eq!(fails(&["--version"], &["version "]).kind(), DisplayVersion);
        assert_eq!(
            fails(&["run", "--help"], &["tapwire run", "--tapname"]).kind(),
            DisplayHelp
        );
    }

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

    #[test]
    fn never_panics_on_odd_argv() {
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let cases: Vec<Vec<OsString>> = vec![
            vec![],
            vec!["tapwire".into()],
            vec![bad.clone()],
            vec!["tapwire".into(), bad.clone()],
            vec!["tapwire".into(), "--mtu".into(), bad.clone(), "1".into()],
            vec!["tapwire".into(), "1".into(), bad.clone()],
            vec!["tapwire".into(), "--netns-type=path".into(), bad.clone()],
            vec!["tapwire".into(), "-a".into(), bad.clone(), "1".into()],
            vec![
                "tapwire".into(),
                "run".into(),
                "--tapname".into(),
                bad.clone(),
            ],
            vec!["tapwire".into(), "run".into(), bad.clone()],
            vec!["tapwire".into(), "--".into()],
            vec!["tapwire".into(), "-".into()],
            vec!["tapwire".into(), "=".into()],
            vec!["tapwire".into(), "--mtu=".into()],
        ];
        for argv in cases {
            let _ = parse(argv);
        }
        // Non-UTF-8 where a path or command is expected is passed through.
        let r = match parse([OsString::from("t"), "run".into(), bad.clone()]) {
            Ok(Command::Run(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.command, std::slice::from_ref(&bad));
        fails(&["--mtu"], &["--mtu"]);
        assert!(parse([OsString::from("t"), bad.clone()]).is_err());
        assert!(parse([OsString::from("t"), "--mtu".into(), bad, "1".into()]).is_err());
    }

    #[test]
    fn publish_forms() {
        use std::net::IpAddr;
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.proto, p.host_addr, p.host_port, p.guest_port),
            (Proto::Tcp, IpAddr::from([0, 0, 0, 0]), 8080, 80)
        );
        let p = parse_publish("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(
            (p.proto, p.host_addr),
            (Proto::Udp, IpAddr::from([127, 0, 0, 1]))
        );
        let p = parse_publish("[::1]:8443:443/tcp").unwrap();
        assert_eq!(p.host_addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((p.host_port, p.guest_port), (8443, 443));
        for bad in [
            "80",
            "0:80",
            "80:0",
            "x:80",
            "8080:80/sctp",
            "1.2.3:80:80",
            "70000:80",
            "",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_repeatable_in_both_commands() {
        let Command::Daemon(d) =
            parse(["tapwire", "-p", "8080:80", "--publish=9090:90/udp", "42"]).unwrap()
        else {
            panic!("not daemon")
        };
        assert_eq!(d.publish.len(), 2);
        let Command::Run(r) = parse(["tapwire", "run", "-p", "8080:80", "--", "true"]).unwrap()
        else {
            panic!("not run")
        };
        assert_eq!(r.publish.len(), 1);
        assert!(parse(["tapwire", "-p", "bogus", "42"]).is_err());
    }

    #[test]
    fn bypass_flags() {
        let r = run(&[
            "--bypass",
            "--ignore",
            "192.0.2.0/24",
            "--ignore=2001:db8::/32",
            "sh",
        ]);
        let b = r.bypass.expect("--bypass");
        assert!(b.udp);
        assert_eq!(b.ignore.len(), 2);
        assert_eq!(b.ignore[0].to_string(), "192.0.2.0/24");
        assert_eq!(r.command, ["sh"]);
        assert!(!run(&["--bypass", "--no-bypass-udp"]).bypass.unwrap().udp);
        assert_eq!(run(&["sh"]).bypass, None);
        // --ignore and --no-bypass-udp only make sense with --bypass.
        fails(&["run", "--ignore", "10.0.0.0/8"], &["--bypass"]);
        fails(&["run", "--no-bypass-udp"], &["--bypass"]);
        fails(
            &["run", "--bypass", "--ignore", "10.0.0.0/33"],
            &["--ignore", "prefix"],
        );
        fails(&["run", "--bypass", "--ignore", "nonsense"], &["--ignore"]);
        // The daemon: --seccomp-listener, with --ignore.
        let d = daemon(&[
            "--seccomp-listener",
            "/run/tw.sock",
            "--ignore",
            "10.9.0.0/16",
            "42",
        ]);
        assert_eq!(d.seccomp_listener, Some(PathBuf::from("/run/tw.sock")));
        assert_eq!(d.ignore.len(), 1);
        fails(&["--ignore", "10.9.0.0/16", "42"], &["--seccomp-listener"]);
        fails(
            &["--seccomp-listener", &"x".repeat(108), "42"],
            &["sun_path"],
        );
        // tapwire seccomp-profile.
        match parse(["tapwire", "seccomp-profile"]).unwrap() {
            Command::SeccompProfile(p) => {
                assert_eq!(p.listener_path, PathBuf::from("/run/tapwire/seccomp.sock"));
                assert!(p.udp);
            }
            other => panic!("{other:?}"),
        }
        match parse([
            "tapwire",
            "seccomp-profile",
            "--listener-path",
            "/x.sock",
            "--no-bypass-udp",
        ])
        .unwrap()
        {
            Command::SeccompProfile(p) => {
                assert_eq!(p.listener_path, PathBuf::from("/x.sock"));
                assert!(!p.udp);
            }
            other => panic!("{other:?}"),
        }
    }
}
