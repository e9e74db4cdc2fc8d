//! The OCI runtimes' side of bypass: the profile they are given and the socket where they hand
//! over containers' seccomp listeners.
//!
//! # Theory of operation
//! `tapwire seccomp-profile` prints ([`print_profile`]) the `linux.seccomp` object of a
//! config.json ([`oci_profile`]): the same rule table as the run-mode filter
//! ([`crate::bypass::rules`]), in runc/crun's syntax, with a `listenerPath` and a
//! `listenerMetadata` ([`profile_metadata`]) that says whether the sends are trapped.
//!
//! runc/crun with `linux.seccomp.listenerPath` connect to our socket ([`OciServer`], bound at
//! start-up so a bad path is a start-up error) after creating the container and send the
//! container process state (JSON, `"fds": ["seccompFd"]`, [`parse_state`]) with the listener
//! as SCM_RIGHTS, then close. Connections are non-blocking and read as data arrives
//! ([`MAX_OCI_CLIENTS`] at once, each within [`OCI_TIMEOUT`], at most [`MAX_OCI_STATE`]
//! bytes); the listener then joins the supervisor's poll set. UDP is bypassed only when the
//! metadata says the profile traps the sends.
//!
//! # Who may hand over a listener
//! A listener makes the daemon open host sockets on behalf of the processes under it, so the
//! socket is a door to the host's network and is guarded three ways:
//!
//! 1. The file is mode 0600, never created through a symlink, and only a *stale* socket (nobody
//!    listening) at the path is replaced ([`crate::sys::unix_listener`]).
//! 2. The peer (`SO_PEERCRED`, taken at `connect`) must run as the daemon's uid or as root;
//!    anyone else is closed at accept, before a byte is read.
//! 3. The state's `pid` (the container's init) must be the peer itself or one of its
//!    descendants, followed through `PPid:` in `/proc/PID/status` ([`may_act_for`], at most
//!    [`MAX_ANCESTRY`] steps). runc and crun both qualify: runc's `create`/`run` process sends
//!    the state after it received the listener from `runc init`, and the container's init is
//!    its child (nsexec clones with `CLONE_PARENT`); crun sends from the process that cloned
//!    the container. A peer in a pid namespace we cannot see (`SO_PEERCRED` pid 0), a state
//!    without a pid, or a pid that is not the peer's descendant is refused with a warning, and
//!    the fds it sent are closed.
//!
//! The uid check is what keeps another local user out; the pid check keeps a process of the
//! same user from attaching a listener for processes it did not start (it could not make them
//! trap into this daemon otherwise).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Supervisor, SupervisorError};
use crate::bypass::notify::Listener;
use crate::bypass::rules::{arch, rules, Action, Cond};
use crate::sys::pidfd::ProcFs;
use crate::sys::scm;
use crate::sys::unix_listener::{self, BoundPath, Existing, PeerCred};

/// OCI runtime connections being read at once, and how long each may take.
pub(super) const MAX_OCI_CLIENTS: usize = 64;
pub(super) const OCI_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest container state message accepted.
pub(super) const MAX_OCI_STATE: usize = 1 << 20;
/// Parent links followed from the state's pid looking for the peer.
pub const MAX_ANCESTRY: usize = 64;

/// `tapwire seccomp-profile`: print the profile for a listener at `listener_path`, trapping
/// the sends if `udp`; returns the exit status.
pub fn print_profile(udp: bool, listener_path: &Path) -> i32 {
    let profile = oci_profile(udp, &listener_path.to_string_lossy());
    match serde_json::to_string_pretty(&profile) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("tapwire: {e}");
            1
        }
    }
}

/// The `linux.seccomp` object for an OCI config.json: the same rules, as runc/crun take them.
pub fn oci_profile(udp: bool, listener_path: &str) -> serde_json::Value {
    use serde_json::json;
    let mut syscalls = Vec::new();
    for r in rules(udp) {
        let (action, errno) = match r.action {
            Action::Notify => ("SCMP_ACT_NOTIFY", None),
            Action::Errno(e) => ("SCMP_ACT_ERRNO", Some(e)),
        };
        let mut entry = json!({ "names": [r.name], "action": action });
        if let Some(e) = errno {
            entry["errnoRet"] = json!(e);
        }
        match r.cond {
            Cond::Always => {}
            Cond::ArgNonZero(n) => {
                entry["args"] = json!([{ "index": n, "value": 0, "op": "SCMP_CMP_NE" }]);
            }
            Cond::ArgMaskSet(n, mask) => {
                entry["args"] = json!([{ "index": n, "value": mask, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ" }]);
            }
        }
        entry["comment"] = json!(r.why);
        syscalls.push(entry);
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": arch::OCI_ARCHES,
        "listenerPath": listener_path,
        "listenerMetadata": profile_metadata(udp),
        "syscalls": syscalls,
    })
}

/// The `listenerMetadata` of the profile: tells the daemon which rules the container runs
/// under (UDP is only bypassed when the sends are trapped).
pub fn profile_metadata(udp: bool) -> &'static str {
    if udp {
        "tapwire-bypass-v1 udp"
    } else {
        "tapwire-bypass-v1 tcp"
    }
}

/// The OCI runtimes' socket (`--seccomp-listener PATH`), bound before the thread starts so
/// that a bad path is a start-up error.
#[derive(Debug)]
pub struct OciServer {
    pub(super) listener: UnixListener,
    pub(super) path: BoundPath,
    /// Our effective uid, read at bind time (the daemon's filter does not allow `geteuid`).
    pub(super) uid: u32,
}

impl OciServer {
    /// Bind `path`, mode 0600: a stale socket file left by an earlier run is replaced; a
    /// symlink, a live socket or any other file is refused.
    pub fn bind(path: &Path) -> Result<OciServer, SupervisorError> {
        let (listener, bound) =
            unix_listener::bind(path, Existing::StaleSocketOnly).map_err(|source| {
                SupervisorError::Bind {
                    path: path.to_owned(),
                    source,
                }
            })?;
        Ok(OciServer {
            listener,
            path: bound,
            uid: nix::unistd::geteuid().as_raw(),
        })
    }

    /// The socket file's identity, to remove it at exit if it is still ours.
    pub fn bound(&self) -> BoundPath {
        self.path.clone()
    }
}

impl Drop for OciServer {
    fn drop(&mut self) {
        self.path.remove_if_ours();
    }
}

/// May a peer with pid `peer` hand over the listener of container init `pid`? Only for
/// itself or a descendant; `parent` gives a process's parent (`None`: gone or unknown).
pub fn may_act_for(peer: i32, pid: i64, parent: impl Fn(i32) -> Option<i32>) -> bool {
    let Ok(mut p) = i32::try_from(pid) else {
        return false;
    };
    if peer <= 0 || p <= 0 {
        return false;
    }
    for _ in 0..=MAX_ANCESTRY {
        if p == peer {
            return true;
        }
        match parent(p) {
            Some(pp) if pp > 0 && pp != p => p = pp,
            _ => return false,
        }
    }
    false
}

/// The parent of `pid` from `/proc/PID/status`.
fn parent_of(proc: &ProcFs, pid: i32) -> Option<i32> {
    use std::io::Read as _;
    let mut text = String::new();
    proc.file(&format!("{pid}/status"), false)
        .ok()?
        .take(8192)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a connecting peer may talk to us at all: our uid, or root.
fn peer_allowed(cred: &PeerCred, our_uid: u32) -> bool {
    cred.uid == 0 || cred.uid == our_uid
}

/// A runtime's connection, until its state message is complete.
pub(super) struct OciClient {
    pub(super) stream: UnixStream,
    /// `SO_PEERCRED` pid of the runtime.
    pub(super) peer_pid: i32,
    pub(super) buf: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
    pub(super) deadline: Instant,
}

impl Supervisor {
    pub(super) fn oci_accept(&mut self) {
        let Some(srv) = &self.oci else {
            return;
        };
        loop {
            match srv.listener.accept() {
                Ok((stream, _)) => {
                    let cred = match unix_listener::peer_cred(&stream) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("bypass: seccomp listener socket: SO_PEERCRED: {e}");
                            continue;
                        }
                    };
                    let our_uid = srv.uid;
                    if !peer_allowed(&cred, our_uid) {
                        tracing::warn!(
                            "bypass: seccomp listener socket: refused a connection from pid {} uid {} (only the daemon's uid {our_uid} or root may hand over listeners)",
                            cred.pid,
                            cred.uid
                        );
                        continue;
                    }
                    if self.oci_clients.len() >= MAX_OCI_CLIENTS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    self.oci_clients.insert(OciClient {
                        stream,
                        peer_pid: cred.pid,
                        buf: Vec::new(),
                        fds: Vec::new(),
                        deadline: Instant::now() + OCI_TIMEOUT,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("bypass: accept on the seccomp listener socket: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn oci_read(&mut self, i: usize) {
        let Some(c) = self.oci_clients.get_mut(i) else {
            return;
        };
        let mut chunk = vec![0u8; 64 * 1024];
        let (n, eof) = match scm::recv_with_fds(c.stream.as_fd(), &mut chunk, &mut c.fds, true) {
            Ok(r) => (r.bytes, r.bytes == 0),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return
            }
            Err(_) => (0, true),
        };
        c.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        let parsed = parse_state(&c.buf);
        if parsed.is_err() && !eof && c.buf.len() <= MAX_OCI_STATE {
            return; // wait for more
        }
        let Some(c) = self.oci_clients.try_remove(i) else {
            return;
        };
        match parsed {
            Ok(state) => {
                let mut fds = c.fds;
                let Some(idx) = state.seccomp_fd_index else {
                    tracing::warn!("bypass: container state names no \"seccompFd\"; ignored");
                    return;
                };
                if idx >= fds.len() {
                    tracing::warn!(
                        "bypass: container state names fd {idx} but {} came",
                        fds.len()
                    );
                    return;
                }
                let proc = &self.proc;
                if !may_act_for(c.peer_pid, state.pid, |p| parent_of(proc, p)) {
                    tracing::warn!(
                        "bypass: container {}: refused: its pid {} is not the sending runtime (pid {}) or a descendant of it",
                        state.id,
                        state.pid,
                        c.peer_pid
                    );
                    return;
                }
                let fd = fds.swap_remove(idx);
                let udp = state.metadata.as_deref() == Some(profile_metadata(true));
                if state.metadata.as_deref() != Some(profile_metadata(true))
                    && state.metadata.as_deref() != Some(profile_metadata(false))
                {
                    tracing::warn!(
                        "bypass: container {}: its seccomp profile was not made by `tapwire seccomp-profile` (listenerMetadata {:?}); UDP stays on the tap",
                        state.id,
                        state.metadata
                    );
                }
                let name = format!("container {} (pid {})", state.id, state.pid);
                let sync = self.late_sync;
                self.add_listener(Listener::new(fd), udp, name, sync, None);
            }
            Err(e) => tracing::warn!("bypass: bad container state from an OCI runtime: {e}"),
        }
    }
}

/// The container process state an OCI runtime sends (the parts we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub pid: i64,
    /// Position of "seccompFd" in `fds` (= in the SCM_RIGHTS array).
    pub seccomp_fd_index: Option<usize>,
    /// `listenerMetadata` from the profile.
    pub metadata: Option<String>,
}

/// Parse the runtime's JSON (`{"ociVersion", "fds": [..], "pid", "metadata", "state": {..}}`).
pub fn parse_state(bytes: &[u8]) -> Result<ContainerState, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let fds = v
        .get("fds")
        .and_then(|f| f.as_array())
        .ok_or("no \"fds\" array")?;
    let seccomp_fd_index = fds.iter().position(|f| f.as_str() == Some("seccompFd"));
    let pid = v
        .get("pid")
        .and_then(|p| p.as_i64())
        .or_else(|| v.pointer("/state/pid").and_then(|p| p.as_i64()))
        .unwrap_or(0);
    let id = v
        .pointer("/state/id")
        .and_then(|s| s.as_str())
        .unwrap_or("?")
        .to_owned();
    let metadata = v
        .get("metadata")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    Ok(ContainerState {
        id,
        pid,
        seccomp_fd_index,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_state_is_parsed() {
        let json = br#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":4242,"metadata":"tapwire-bypass-v1 udp","state":{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":4242,"bundle":"/b","annotations":{}}}"#;
        let s = parse_state(json).unwrap();
        assert_eq!(s.id, "c1");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.seccomp_fd_index, Some(0));
        assert_eq!(s.metadata.as_deref(), Some("tapwire-bypass-v1 udp"));
        let s =
            parse_state(br#"{"fds":["other","seccompFd"],"state":{"id":"x","pid":7}}"#).unwrap();
        assert_eq!((s.seccomp_fd_index, s.pid), (Some(1), 7));
        assert_eq!(
            parse_state(br#"{"fds":[]}"#).unwrap().seccomp_fd_index,
            None
        );
        assert!(parse_state(b"{").is_err());
        assert!(parse_state(br#"{"pid":1}"#).is_err());
        assert!(parse_state(b"").is_err());
    }

    #[test]
    fn only_the_peer_or_its_descendants_may_be_named() {
        // 1 <- 100 (runc) <- 200 (container init) <- 300; 1 <- 50 (someone else)
        let parent = |p: i32| match p {
            300 => Some(200),
            200 => Some(100),
            100 | 50 => Some(1),
            1 => Some(0),
            _ => None,
        };
        assert!(may_act_for(100, 200, parent), "runc for its child");
        assert!(may_act_for(100, 300, parent), "a grandchild");
        assert!(may_act_for(200, 200, parent), "itself");
        assert!(!may_act_for(50, 200, parent), "an unrelated process");
        assert!(!may_act_for(200, 100, parent), "an ancestor");
        assert!(!may_act_for(100, 0, parent), "no pid in the state");
        assert!(!may_act_for(100, -5, parent));
        assert!(!may_act_for(100, i64::from(i32::MAX) + 1, parent));
        assert!(
            !may_act_for(0, 200, parent),
            "peer in an unseen pid namespace"
        );
        assert!(!may_act_for(100, 999, parent), "gone");
        // A parent loop (impossible, but /proc is racy) ends.
        assert!(!may_act_for(7, 5, |p| Some(if p == 5 { 6 } else { 5 })));
    }

    #[test]
    fn peers_of_another_uid_are_refused() {
        let c = |uid| PeerCred {
            pid: 1,
            uid,
            gid: 0,
        };
        assert!(peer_allowed(&c(1000), 1000));
        assert!(peer_allowed(&c(0), 1000), "root");
        assert!(!peer_allowed(&c(1001), 1000));
        assert!(
            !peer_allowed(&c(1000), 0),
            "a user cannot talk to root's daemon"
        );
    }

    #[test]
    fn oci_profile_lists_every_rule() {
        for udp in [false, true] {
            let v = oci_profile(udp, "/run/x.sock");
            assert_eq!(v["listenerPath"], "/run/x.sock");
            assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
            let names: Vec<&str> = v["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["names"][0].as_str().unwrap())
                .collect();
            for r in rules(udp) {
                assert!(names.contains(&r.name), "{}", r.name);
            }
            assert_eq!(v["listenerMetadata"], profile_metadata(udp));
        }
        let v = oci_profile(true, "/x");
        let sendto = v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["names"][0] == "sendto")
            .unwrap();
        assert_eq!(sendto["args"][0]["index"], 4);
        assert_eq!(sendto["args"][0]["op"], "SCMP_CMP_NE");
    }
}
