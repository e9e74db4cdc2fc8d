//! The built binary's command line, as RootlessKit and Podman see it: `--help` lists every
//! slirp4netns flag verbatim, `--version` works, bad values exit non-zero naming the flag.
//! Never runs the binary with valid arguments (that would start the daemon).

use std::process::{Command, Output};

fn tapwire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tapwire"))
        .args(args)
        .output()
        .expect("run tapwire")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every flag RootlessKit and Podman look for in `--help`, plus the rest of slirp4netns's.
const FLAGS: &[&str] = &[
    "--configure",
    "--exit-fd",
    "--ready-fd",
    "--mtu",
    "--enable-ipv6",
    "--api-socket",
    "--cidr",
    "--disable-host-loopback",
    "--netns-type",
    "--userns-path",
    "--enable-sandbox",
    "--enable-seccomp",
    "--outbound-addr",
    "--outbound-addr6",
    "--disable-dns",
    "--macaddress",
    "--help",
    "--version",
];

#[test]
fn help_lists_every_flag() {
    for h in ["--help", "-h"] {
        let o = tapwire(&[h]);
        assert!(o.status.success(), "{h}: {o:?}");
        let text = stdout(&o);
        for flag in FLAGS {
            assert!(text.contains(flag), "{h}: {flag} missing from:\n{text}");
        }
        assert!(
            text.contains("tapwire run [OPTIONS] [-- CMD [ARGS...]]"),
            "{text}"
        );
    }
}

#[test]
fn version() {
    for v in ["--version", "-v"] {
        let o = tapwire(&[v]);
        assert!(o.status.success(), "{v}: {o:?}");
        let text = stdout(&o);
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(text.lines().count() >= 2, "{text}");
    }
}

#[test]
fn run_help() {
    let o = tapwire(&["run", "--help"]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    for flag in [
        "tapwire run",
        "--tapname",
        "--mtu",
        "--cidr",
        "--macaddress",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn bad_values_exit_nonzero_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--mtu=0", "1"], "--mtu"),
        (&["--mtu", "65522", "1"], "--mtu"),
        (&["-m", "abc", "1"], "--mtu"),
        (&["--cidr=10.0.2.1/24", "1"], "--cidr"),
        (&["--cidr=10.0.2.0/26", "1"], "--cidr"),
        (&["--cidr=fd00::/64", "1"], "--cidr"),
        (&["--exit-fd=x", "1"], "--exit-fd"),
        (&["--ready-fd=-1", "1"], "--ready-fd"),
        (&["--netns-type=bogus", "1"], "--netns-type"),
        (&["--outbound-addr=::1", "1"], "--outbound-addr"),
        (&["--outbound-addr6=10.0.0.1", "1"], "--outbound-addr6"),
        (&["--macaddress=02:00:00:00:00:01", "1"], "--macaddress"),
        (
            &["-c", "--macaddress=01:00:00:00:00:01", "1"],
            "--macaddress",
        ),
        (&["0"], "PID"),
        (&["abc"], "PID"),
        (&["--netns-type=path", "/nonexistent/netns"], "PID|PATH"),
        (&["--no-such-flag", "1"], "--no-such-flag"),
        (&[], "PID|PATH"),
        (&["run", "--mtu=0"], "--mtu"),
        (&["run", "--tapname=a/b"], "--tapname"),
    ];
    for (args, flag) in cases {
        let o = tapwire(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
        let err = stderr(&o);
        assert!(err.contains(flag), "{args:?}: {flag} not in {err}");
    }
}
