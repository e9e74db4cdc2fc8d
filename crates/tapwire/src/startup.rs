//! Top-level orchestration of the two commands.
//!
//! # Theory of operation
//! Order matters, because a threaded process cannot join a user namespace and a child must
//! not inherit our blocked signal mask:
//!
//! 1. logging (no threads), RLIMIT_NOFILE raised;
//! 2. the TAP: daemon mode forks the namespace helper (`netns::open_tap`); run mode forks the
//!    command's child, which makes its own namespaces and sends the TAP back (`netns::spawn_run`);
//!    with `--forward-to-host` (`auto` read from `/proc/net/tcp{,6}` first) either child also
//!    sends its listeners on the guest's loopback (`netns::loopback`), and with `-p auto` a
//!    sock_diag socket of the namespace next to the TAP;
//! 3. the engine (blocks signals, builds the smoltcp interface), the `--forward-to-host`
//!    listeners, the control socket, `-p` forwards, `-p auto`;
//! 4. confinement, in slirp4netns's order: the fds inherited at start (noted before anything
//!    was opened) are closed, then the sandbox (`--enable-sandbox`; always in run mode,
//!    where a failure is only a warning), then the seccomp filter (`--enable-seccomp`). The
//!    sandbox may join a user namespace, so no thread may exist before it;
//!    With `--threads N` the other N-1 workers start after the sandbox and run once the
//!    filter is on (`workers`);
//! 5. readiness: `-r FD` gets "1" and is closed; run mode releases the command;
//! 6. the event loop until an exit condition.
#![allow(unsafe_code)]
mod workers;

use std::io::Write;
use std::os::fd::OwnedFd;

use crate::bypass::{self, supervisor};
use crate::cli::{Command, DaemonArgs, RunArgs};
use crate::confine::pins::Pins;
use crate::confine::{allowlist as filter, inherited, sandbox};
use crate::engine::{Engine, Lifecycle};
use crate::link::tap::Tap;
use crate::netns;
use crate::sys::fd;
use crate::sys::text::StartupText;
use tapwire_proto::config::{IfConfig, NetConfig, Publish};
use tapwire_proto::to_host::{self, ToHost, ToHostPort};

/// Run a parsed command; returns the process exit status.
pub fn run(cmd: Command) -> i32 {
    init_logging();
    fd::raise_nofile_limit();
    bound_heap();
    let result = match cmd {
        Command::Daemon(args) => daemon(*args),
        Command::Run(args) => run_mode(*args),
        Command::Control(args) => return crate::control::client::run(&args),
        Command::SeccompProfile(args) => {
            return supervisor::print_profile(args.udp, &args.listener_path)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tapwire: {e}");
            1
        }
    }
}

/// Keep the heap from holding on to flows' memory. Every TCP flow has two smoltcp rings of
/// 64 KiB to 1 MiB (see `tapwire_proto::budget`; the threshold is the smallest ring size).
/// glibc serves the first ones with mmap, but raises its mmap threshold to the size of the first one freed, after which every ring is carved from the
/// heap and zeroed page by page: half a MiB of RSS per flow at once (a SYN flood of 1024
/// pending handshakes: ~500 MiB) that stays after the flows close. A fixed threshold keeps
/// ring pages unbacked until data is written and returns them to the kernel when a flow ends.
/// But a ring is carved from the heap's top chunk whenever that is big enough, mmap threshold
/// or not: no top padding and a trim threshold of the same size keep the top smaller than a
/// ring (with 64 KiB rings, 1000 connections otherwise kept 25 MiB after they closed).
fn bound_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread.
    unsafe {
        let ring = tapwire_proto::budget::SMALL_RING as libc::c_int;
        libc::mallopt(libc::M_MMAP_THRESHOLD, ring);
        libc::mallopt(libc::M_TRIM_THRESHOLD, ring);
        libc::mallopt(libc::M_TOP_PAD, 0);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

type AnyError = Box<dyn std::error::Error>;

fn daemon(args: DaemonArgs) -> Result<i32, AnyError> {
    // Before anything is opened: every fd open now was inherited.
    let named = args.userns_path.as_deref().and_then(inherited::named_by);
    let keep: Vec<i32> = [args.ready_fd, args.exit_fd, named]
        .into_iter()
        .flatten()
        .collect();
    let inherited = inherited::snapshot(&keep);
    let text = StartupText::find();
    // Adopt inherited fds first so a bad number fails before anything is created.
    let ready = args
        .ready_fd
        .map(|n| fd::adopt(n, "--ready-fd"))
        .transpose()?;
    let exit_fd = args
        .exit_fd
        .map(|n| fd::adopt(n, "--exit-fd"))
        .transpose()?;
    if !args.net.disable_host_loopback {
        eprintln!(
            "WARNING: 127.0.0.1:* on the host is accessible as {} (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)",
            args.net.gateway()
        );
    }
    let ifcfg = args.configure.then(|| IfConfig::from_net(&args.net));
    let to_host = to_host_ports(&args.forward_to_host)?;
    let guest_ports: Vec<u16> = to_host.iter().map(|p| p.guest_port).collect();
    check_threads(&args.net, args.pcap.as_deref())?;
    let netns::TapFds {
        tap: tap_fd,
        queues,
        listeners: to_host_listeners,
        diag,
    } = netns::open_tap_with(
        &args.target,
        args.userns_path.as_deref(),
        &args.tapname,
        ifcfg.as_ref(),
        &guest_ports,
        !args.auto_publish.is_empty(),
        args.net.threads,
    )?;
    // The engine's exit fd also fires when the guest's process exits (see `lifeline`).
    let guest_pid = match &args.target {
        netns::Target::Pid(pid) => Some(*pid),
        // `/proc/PID/ns/net`: that process, as with a PID; a mount is watched by the engine.
        netns::Target::Path(p) => crate::engine::proc_pid(p),
    };
    let (exit_fd, _lifeline_members) = match crate::confine::lifeline::new(exit_fd, guest_pid)? {
        Some(l) => (Some(l.fd), l.members),
        None => (None, Vec::new()),
    };
    let life = Lifecycle {
        exit_fd,
        child: None,
    };
    // Bypass for OCI runtimes: prepared before confinement, served by its own thread.
    let bypass = match &args.seccomp_listener {
        Some(path) => Some(supervisor::prepare_daemon(&bypass::DaemonOptions {
            bypass: bypass::Options {
                net: &args.net,
                publish: &args.publish,
                ignore: &args.ignore,
            },
            listener_path: path,
            sandbox: args.enable_sandbox,
            seccomp: args.enable_seccomp,
        })?),
        None => None,
    };
    let mut engine = Engine::new(args.net.clone(), Tap::from_fd(tap_fd), life)?;
    let workers = workers(&mut engine, &args.net, queues)?;
    forward_to_host(&mut engine, to_host_listeners, &to_host)?;
    if let netns::Target::Path(p) = &args.target {
        engine.watch_netns(p)?;
    }
    if let Some(path) = &args.control_socket {
        engine.listen_api(path)?;
    }
    let tap_publish = supervisor::tap_publishes(&args.publish, bypass.is_some());
    publish(&mut engine, &tap_publish, &args.net)?;
    auto_publish(&mut engine, &args.auto_publish, diag)?;
    start_pcap(&mut engine, args.pcap.as_deref())?;
    if args.enable_sandbox || args.enable_seccomp {
        inherited.close();
    }
    if args.enable_sandbox {
        let userns = args.userns_path.clone().or(match &args.target {
            netns::Target::Pid(pid) => Some(format!("/proc/{pid}/ns/user").into()),
            netns::Target::Path(_) => None,
        });
        let lowest = args.publish.iter().map(|p| p.host_port).min();
        let sockets = [
            args.control_socket.as_deref(),
            args.seccomp_listener.as_deref(),
        ];
        let policy = sandbox::Policy::daemon(userns, &sockets, lowest);
        let applied = sandbox::apply(&policy)?;
        tracing::info!(?applied, "sandbox applied");
        engine.set_confined();
    }
    // The supervisor thread starts after the sandbox (which may need a single thread) and
    // before the filter, which then covers it too (TSYNC) and need not allow thread creation.
    let bypassing = bypass.is_some();
    let oci_socket = bypass.as_ref().and_then(|p| p.oci_socket());
    let pins = Pins {
        proc_dir: bypass.as_ref().map(|p| p.proc_fd()),
        read_dirs: engine.pinned_read_dirs(),
        ..Pins::this_process()
    };
    if let Some(prep) = bypass {
        prep.spawn_oci()?;
    }
    // The workers too start after the sandbox; they wait for the filter before they run.
    let go = workers.spawn()?;
    if args.enable_seccomp {
        filter::apply(bypassing, &pins)?;
    }
    go.release();
    release_text(&text);
    if let Some(ready) = ready {
        signal_ready(ready)?;
    }
    let status = engine.run();
    // The supervisor thread owns the runtimes' socket and is never joined: remove its file
    // here, as the engine removes the control socket's.
    if let Some(sock) = oci_socket {
        sock.remove_if_ours();
    }
    Ok(status?)
}

/// Start-up is over: drop the code pages it ran (see `sys::text`); the loop's come back.
fn release_text(text: &StartupText) {
    match text.release() {
        Ok(()) => tracing::debug!(kib = text.bytes() / 1024, "start-up code mappings released"),
        Err(e) => tracing::debug!("{e}; start-up code stays mapped"),
    }
}

fn signal_ready(fd: OwnedFd) -> std::io::Result<()> {
    let mut f = std::fs::File::from(fd);
    f.write_all(b"1")
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing to --ready-fd: {e}")))
}

fn run_mode(args: RunArgs) -> Result<i32, AnyError> {
    // Before anything is opened (the command inherits them; the daemon closes its copies).
    let inherited = inherited::snapshot(&[]);
    let text = StartupText::find();
    check_threads(&args.net, args.pcap.as_deref())?;
    let ifcfg = IfConfig::from_net(&args.net);
    let filter = args
        .bypass
        .as_ref()
        .map(|b| crate::bypass::rules::Program::new(b.udp));
    let to_host = to_host_ports(&args.forward_to_host)?;
    let guest_ports: Vec<u16> = to_host.iter().map(|p| p.guest_port).collect();
    let mut child = netns::spawn_run_filtered(
        &args.command,
        &args.tapname,
        &ifcfg,
        args.net.dns(),
        netns::RunOptions {
            filter: filter.as_ref(),
            map_auto: args.map_auto,
            to_host: &guest_ports,
            diag: !args.auto_publish.is_empty(),
            queues: args.net.threads,
        },
    )?;
    let bypass = match &args.bypass {
        Some(b) => {
            let opts = bypass::Options {
                net: &args.net,
                publish: &args.publish,
                ignore: &b.ignore,
            };
            Some((supervisor::prepare_run(opts)?, b.udp))
        }
        None => None,
    };
    let tap = Tap::from_fd(child.tap.try_clone()?);
    let life = Lifecycle {
        exit_fd: None,
        child: Some(child.pid),
    };
    let mut engine = Engine::new(args.net.clone(), tap, life)?;
    let workers = workers(&mut engine, &args.net, std::mem::take(&mut child.queues))?;
    forward_to_host(&mut engine, std::mem::take(&mut child.listeners), &to_host)?;
    let tap_publish = supervisor::tap_publishes(&args.publish, bypass.is_some());
    publish(&mut engine, &tap_publish, &args.net)?;
    auto_publish(&mut engine, &args.auto_publish, child.diag.take())?;
    start_pcap(&mut engine, args.pcap.as_deref())?;
    // Run mode is sandboxed by default; where that is impossible it still runs, with a warning.
    let lowest = args.publish.iter().map(|p| p.host_port).min();
    let userns = Some(format!("/proc/{}/ns/user", child.pid).into());
    inherited.close();
    let policy = sandbox::Policy {
        keep_ptrace: bypass.is_some(),
        ..sandbox::Policy::daemon(userns, &[], lowest)
    };
    match sandbox::apply(&policy) {
        Ok(applied) => {
            tracing::info!(?applied, "sandbox applied");
            engine.set_confined();
        }
        Err(e) => tracing::warn!("{e}; running without the sandbox"),
    }
    workers.spawn()?.release();
    match bypass {
        Some((prep, udp)) => {
            let supervised = child.start_with_listener()?;
            prep.spawn(supervised.listener, udp, supervised.route)?;
        }
        None => child.start()?,
    }
    release_text(&text);
    Ok(engine.run()?)
}

/// `--threads N` with `--pcap`: the capture records one worker's frames only, so it is refused.
fn check_threads(net: &NetConfig, pcap: Option<&std::path::Path>) -> Result<(), AnyError> {
    if net.threads > 1 && pcap.is_some() {
        return Err("--pcap needs --threads 1 (the capture is not shared between threads)".into());
    }
    Ok(())
}

/// `--threads N`: the other N-1 workers, one per extra TAP queue, made now (before the
/// sandbox) and started by [`Workers::spawn`].
fn workers(
    first: &mut Engine,
    net: &NetConfig,
    queues: Vec<OwnedFd>,
) -> Result<workers::Workers, AnyError> {
    if queues.is_empty() {
        return Ok(workers::Workers::default());
    }
    let shared = crate::engine::queues::Shared::new(queues.len() + 1);
    first
        .attach_shard(shared.clone(), 0)
        .map_err(|e| format!("--threads: worker 0: {e}"))?;
    let mut all = Vec::new();
    for (i, fd) in queues.into_iter().enumerate() {
        let mut w = Engine::worker(net.clone(), Tap::from_fd(fd))
            .map_err(|e| format!("--threads: worker {}: {e}", i + 1))?;
        w.attach_shard(shared.clone(), i + 1)
            .map_err(|e| format!("--threads: worker {}: {e}", i + 1))?;
        all.push(w);
    }
    tracing::info!("{} engine threads, one per TAP queue", all.len() + 1);
    Ok(workers::Workers::new(all))
}

/// `--pcap FILE`: opened before confinement (the sandbox leaves no file system to open it in).
fn start_pcap(engine: &mut Engine, path: Option<&std::path::Path>) -> Result<(), AnyError> {
    if let Some(path) = path {
        engine
            .start_capture(crate::link::capture::Options {
                path: path.to_owned(),
                max_bytes: None,
                rotate: 0,
            })
            .map_err(|e| format!("--pcap: {e}"))?;
    }
    Ok(())
}

/// `-p auto`: hand the guest's sock_diag socket (opened with the TAP) to the engine.
fn auto_publish(
    engine: &mut Engine,
    rules: &[tapwire_proto::autopublish::AutoRule],
    diag: Option<OwnedFd>,
) -> Result<(), AnyError> {
    if let (false, Some(sock)) = (rules.is_empty(), diag) {
        engine
            .enable_auto_publish(rules.to_vec(), sock)
            .map_err(|e| format!("-p auto: {e}"))?;
    }
    Ok(())
}

/// Open the `-p` forwards; a forward that cannot be opened stops start-up.
fn publish(engine: &mut Engine, publish: &[Publish], net: &NetConfig) -> Result<(), AnyError> {
    for p in publish {
        let fwd = p.forward(net);
        engine.add_forward(fwd).map_err(|desc| {
            format!(
                "-p {}:{}:{}/{}: cannot listen on the host ({desc}; see the log above)",
                p.host_addr,
                p.host_port,
                p.guest_port,
                p.proto.as_str()
            )
        })?;
    }
    Ok(())
}

/// `--forward-to-host`'s list of ports, with `auto` read from the host's `/proc/net/tcp{,6}`
/// now (listeners that appear later are not added).
fn to_host_ports(values: &[ToHost]) -> Result<Vec<ToHostPort>, AnyError> {
    let mut listening = Vec::new();
    if values.contains(&ToHost::Auto) {
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            match std::fs::read_to_string(file) {
                Ok(text) => listening.extend(to_host::loopback_listeners(&text)),
                // No IPv6 on the host: IPv4 alone.
                Err(e) if file.ends_with('6') && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("--forward-to-host auto: read {file}: {e}").into()),
            }
        }
        listening.sort_unstable();
        listening.dedup();
    }
    let ports =
        to_host::resolve(values, &listening).map_err(|e| format!("--forward-to-host: {e}"))?;
    if values.contains(&ToHost::Auto) {
        tracing::info!(
            "--forward-to-host auto: {} port(s) listening on the host's loopback",
            listening.len()
        );
    }
    Ok(ports)
}

/// Hand the listeners the namespace child opened to the engine, each with its host port
/// (found by the listener's own port).
fn forward_to_host(
    engine: &mut Engine,
    listeners: Vec<OwnedFd>,
    ports: &[ToHostPort],
) -> Result<(), AnyError> {
    for fd in listeners {
        let l = std::net::TcpListener::from(fd);
        let addr = l
            .local_addr()
            .map_err(|e| format!("--forward-to-host: getsockname: {e}"))?;
        let p = ports
            .iter()
            .find(|p| p.guest_port == addr.port())
            .ok_or_else(|| format!("--forward-to-host: unexpected listener on {addr}"))?;
        engine
            .add_to_host(l, p.host_port)
            .map_err(|e| format!("--forward-to-host {p}: {e}"))?;
        tracing::info!(
            "--forward-to-host: guest {addr} -> host 127.0.0.1:{}",
            p.host_port
        );
    }
    Ok(())
}
