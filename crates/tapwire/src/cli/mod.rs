//! Command line: the slirp4netns-compatible daemon, `tapwire run`, `tapwire ctl` and
//! `tapwire seccomp-profile`, one file per front end.
//!
//! Theory of operation: [`parse`] looks at argv\[1\] only to pick the front end (`ctl`,
//! `seccomp-profile`, `run`, else the daemon: a PID never is one of those words, and
//! slirp4netns clients always put options first), drops that word and lets the front end's clap
//! definition parse the rest under its own name (`tapwire run` in messages):
//!
//! - [`slirp4netns`]: the daemon, `tapwire [OPTIONS] PID|PATH [TAPNAME]`, a drop-in for
//!   slirp4netns;
//! - [`run`]: `tapwire run [OPTIONS] [-- CMD [ARGS...]]`;
//! - [`control`]: `tapwire ctl`, the control socket's client;
//! - [`profile`]: `tapwire seccomp-profile`.
//!
//! Parsing happens in three layers, so that no check exists twice:
//!
//! 1. One parser per validated value, plugged into clap as value parsers: `FromStr` of the
//!    proto types ([`Publish`], [`Outbound`], the bypass `Cidr`) and the small `parse_*`
//!    functions here and in [`slirp4netns`] for the rest (MTU, CIDR, MAC, fd, interface name,
//!    socket path). clap prefixes their messages with the flag
//!    (`invalid value 'abc' for '--mtu <MTU>': ...`), so every error names its flag.
//! 2. [`NetOpts`], the options both the daemon and run mode share, is flattened into both clap
//!    commands and turned into a [`NetConfig`] by one function.
//! 3. Checks that span several arguments run after clap, in the front end, through
//!    [`clap::Command::error`] so that they look and exit like clap's own errors.
//!
//! Options follow getopt's habits where clap's defaults differ: a repeated option overrides the
//! earlier one, and `-v` (not `-V`) prints the version. Nothing here panics on any argv; non-UTF-8
//! arguments are a clap error except where they are paths or the command to run.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr as _;

use clap::builder::TypedValueParser as _;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches};

use tapwire_proto::autopublish::AutoRule;
use tapwire_proto::config::{valid_ifname, NetConfig, Outbound, Publish};
use tapwire_proto::to_host::ToHost;

pub mod control;
pub mod docs;
pub mod profile;
pub mod run;
pub mod slirp4netns;

pub use crate::netns::Target;
pub use control::{ControlAction, ControlArgs};
pub use profile::ProfileArgs;
pub use run::{Bypass, RunArgs};
pub use slirp4netns::DaemonArgs;

use control::ControlCli;
use profile::ProfileCli;
use run::RunCli;
use slirp4netns::DaemonCli;

/// A parsed command line: which front end, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Daemon(Box<DaemonArgs>),
    Run(Box<RunArgs>),
    Control(Box<ControlArgs>),
    SeccompProfile(Box<ProfileArgs>),
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
        let mut cmd = ControlCli::command().bin_name(format!("{bin} ctl"));
        let cli = ControlCli::from_arg_matches(&cmd.try_get_matches_from_mut(args)?)?;
        return Ok(Command::Control(Box::new(cli.into_args())));
    }
    if args.get(1).is_some_and(|a| a == "seccomp-profile") {
        args.remove(1);
        let mut cmd = ProfileCli::command().bin_name(format!("{bin} seccomp-profile"));
        let cli = ProfileCli::from_arg_matches(&cmd.try_get_matches_from_mut(args)?)?;
        return Ok(Command::SeccompProfile(Box::new(cli.into_args())));
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

/// Network options shared by the daemon and run mode.
#[derive(Debug, Args)]
pub(crate) struct NetOpts {
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
    #[arg(long, value_name = "IPv4|IFNAME", value_parser = Outbound::<Ipv4Addr>::from_str)]
    outbound_addr: Option<Outbound<Ipv4Addr>>,

    /// Source address or interface for outbound IPv6 connections
    #[arg(long, value_name = "IPv6|IFNAME", value_parser = Outbound::<Ipv6Addr>::from_str)]
    outbound_addr6: Option<Outbound<Ipv6Addr>>,

    /// Disable the DNS forwarder at network+3
    #[arg(long)]
    disable_dns: bool,

    /// Do not offer checksum and TCP segmentation offload to the guest (TSO lets it send and
    /// receive 64 KiB TCP segments while its MTU stays as set)
    #[arg(long)]
    disable_offload: bool,

    /// Do not offer UDP segmentation offload (USO) to the guest while keeping checksum and
    /// TCP offload: UDP then crosses the TAP one datagram per frame both ways
    #[arg(long)]
    disable_udp_offload: bool,

    /// Most memory the TCP flows' buffers may take together, e.g. 256M (K, M, G suffixes):
    /// full-size buffers for the first flows (a quarter of it, at most 16M), small ones for
    /// the others, and new flows refused when it is spent [default: 1/16 of the RAM, 64M..2G]
    #[arg(long, value_name = "SIZE", value_parser = tapwire_proto::budget::parse_size)]
    max_buffer_memory: Option<u64>,

    /// Engine threads, each serving its own queue of a multi-queue tap device
    /// (`IFF_MULTI_QUEUE`) and the flows the kernel steers to it; the control socket,
    /// forwards and other services stay on the first. 1 (the default) is a single-queue device
    /// as slirp4netns makes it; more helps when one core is the limit and the machine has
    /// cores to spare besides the applications'
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    threads: u8,

    /// After a quick exchange (an event within USEC of running out of work), poll for up to
    /// USEC microseconds before sleeping: lower latency for ping-pong traffic (RPC, small
    /// requests) where spare cores are the machine's own, at most USEC of CPU per quiet
    /// period, none when idle. It costs latency on a VM whose vCPUs compete on the host
    /// [default: 0, off; e.g. 50]
    #[arg(long, value_name = "USEC", default_value_t = tapwire_proto::config::DEFAULT_BUSY_POLL_US, hide_default_value = true, value_parser = clap::value_parser!(u64).range(0..=1000))]
    busy_poll: u64,

    /// MAC address of the tap device (requires -c in daemon mode)
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub(crate) macaddress: Option<[u8; 6]>,

    /// Publish a guest port on the host: [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]
    /// (repeatable); `auto` or auto:[HOST_ADDR:]RANGE[/tcp|/udp] publishes every port (in
    /// RANGE) the guest listens on, on the same host port, while it listens
    #[arg(short = 'p', long, value_name = "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/PROTO]|auto[:[HOST_ADDR:]RANGE[/PROTO]]", value_parser = parse_publish, action = ArgAction::Append)]
    publish: Vec<PublishArg>,

    /// Let the guest's own 127.0.0.1:GUEST_PORT and [::1]:GUEST_PORT reach the host's 127.0.0.1:HOST_PORT, spliced in the kernel (no tap): [GUEST_PORT:]HOST_PORT[/tcp], or `auto` for every port listening on the host's loopback at start-up (repeatable; TCP only)
    #[arg(long, value_name = "[GUEST_PORT:]HOST_PORT|auto", value_parser = ToHost::from_str, action = ArgAction::Append, conflicts_with = "disable_host_loopback")]
    pub(crate) forward_to_host: Vec<ToHost>,

    /// Write every frame crossing the tap device (both ways) to FILE in pcap format (created or truncated, mode 0600; opened before the sandbox)
    #[arg(long, value_name = "FILE", value_parser = clap::builder::PathBufValueParser::new().try_map(parse_pcap_path))]
    pub(crate) pcap: Option<PathBuf>,
}

/// One `-p` value: a static forward or an automatic rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublishArg {
    Static(Publish),
    Auto(AutoRule),
}

fn parse_publish(s: &str) -> Result<PublishArg, String> {
    if s.starts_with("auto") {
        s.parse().map(PublishArg::Auto)
    } else {
        s.parse().map(PublishArg::Static)
    }
}

impl NetOpts {
    /// The static `-p` forwards, in order.
    pub(crate) fn publishes(&self) -> Vec<Publish> {
        self.publish
            .iter()
            .filter_map(|p| match p {
                PublishArg::Static(p) => Some(*p),
                PublishArg::Auto(_) => None,
            })
            .collect()
    }

    /// The `-p auto...` rules, in order.
    pub(crate) fn auto_rules(&self) -> Vec<AutoRule> {
        self.publish
            .iter()
            .filter_map(|p| match p {
                PublishArg::Auto(r) => Some(*r),
                PublishArg::Static(_) => None,
            })
            .collect()
    }

    pub(crate) fn into_config(self) -> NetConfig {
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
            uso: !self.disable_offload && !self.disable_udp_offload,
            max_buffer_memory: self.max_buffer_memory,
            threads: usize::from(self.threads),
            busy_poll_us: self.busy_poll,
        }
    }
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
pub(crate) fn parse_digits<N: std::str::FromStr>(s: &str) -> Option<N> {
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
pub(crate) fn parse_ifname(s: &str) -> Result<String, String> {
    if valid_ifname(s) {
        Ok(s.to_owned())
    } else {
        Err("invalid interface name (1-15 bytes, no '/', ':' or whitespace)".to_owned())
    }
}

/// `-a/--api-socket`: non-empty and short enough for `sun_path` (108 bytes with the NUL).
pub(crate) fn parse_socket_path(p: PathBuf) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let len = p.as_os_str().as_bytes().len();
    if len == 0 || len >= 108 {
        return Err(format!(
            "socket path must be 1-107 bytes (sun_path), got {len}"
        ));
    }
    Ok(p)
}

/// `--pcap`: a non-empty file path (not a directory's).
fn parse_pcap_path(p: PathBuf) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let b = p.as_os_str().as_bytes();
    if b.is_empty() || b.ends_with(b"/") || p.is_dir() {
        return Err("FILE must name a file".to_owned());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt as _;

    use super::*;

    pub(super) fn daemon(args: &[&str]) -> DaemonArgs {
        match parse(std::iter::once("tapwire").chain(args.iter().copied())) {
            Ok(Command::Daemon(d)) => *d,
            other => panic!("{args:?}: expected daemon, got {other:?}"),
        }
    }

    pub(super) fn run(args: &[&str]) -> RunArgs {
        match parse(["tapwire", "run"].into_iter().chain(args.iter().copied())) {
            Ok(Command::Run(r)) => *r,
            other => panic!("{args:?}: expected run, got {other:?}"),
        }
    }

    /// The error for `args`, checking that its message contains every string of `needles`.
    pub(super) fn fails(args: &[&str], needles: &[&str]) -> clap::Error {
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
    fn max_buffer_memory() {
        assert_eq!(daemon(&["1"]).net.max_buffer_memory, None);
        assert_eq!(
            daemon(&["--max-buffer-memory=256M", "1"])
                .net
                .max_buffer_memory,
            Some(256 << 20)
        );
        assert_eq!(
            run(&["--max-buffer-memory", "1G", "--", "true"])
                .net
                .max_buffer_memory,
            Some(1 << 30)
        );
        for bad in ["", "abc", "-1M", "1.5G", "1M"] {
            fails(
                &[&format!("--max-buffer-memory={bad}"), "1"],
                &["--max-buffer-memory"],
            );
        }
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
    fn publish_auto_in_both_commands() {
        let Command::Daemon(d) = parse([
            "tapwire",
            "-p",
            "auto",
            "-p",
            "8080:80",
            "--publish=auto:127.0.0.1:8000-8999/tcp",
            "42",
        ])
        .unwrap() else {
            panic!("not daemon")
        };
        assert_eq!((d.publish.len(), d.auto_publish.len()), (1, 2));
        assert_eq!(d.auto_publish[1].first, 8000);
        let Command::Run(r) =
            parse(["tapwire", "run", "-p", "auto:[::]:80/udp", "--", "true"]).unwrap()
        else {
            panic!("not run")
        };
        assert_eq!((r.publish.len(), r.auto_publish.len()), (0, 1));
        for bad in ["auto:", "auto:9-1", "autox", "auto:1-2/sctp"] {
            let err = parse(["tapwire", "-p", bad, "42"]).unwrap_err().to_string();
            assert!(err.contains("--publish"), "{bad}: {err}");
        }
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
        assert!(!b.udp, "UDP stays on the tap by default");
        assert_eq!(b.ignore.len(), 2);
        assert_eq!(b.ignore[0].to_string(), "192.0.2.0/24");
        assert_eq!(r.command, ["sh"]);
        assert!(!run(&["--bypass", "--no-bypass-udp"]).bypass.unwrap().udp);
        assert!(run(&["--bypass", "--bypass-udp"]).bypass.unwrap().udp);
        fails(
            &["run", "--bypass", "--bypass-udp", "--no-bypass-udp"],
            &["--bypass-udp", "--no-bypass-udp"],
        );
        fails(&["run", "--bypass-udp"], &["--bypass"]);
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
                assert!(!p.udp);
            }
            other => panic!("{other:?}"),
        }
        match parse([
            "tapwire",
            "seccomp-profile",
            "--listener-path",
            "/x.sock",
            "--bypass-udp",
        ])
        .unwrap()
        {
            Command::SeccompProfile(p) => {
                assert_eq!(p.listener_path, PathBuf::from("/x.sock"));
                assert!(p.udp);
            }
            other => panic!("{other:?}"),
        }
    }
}
