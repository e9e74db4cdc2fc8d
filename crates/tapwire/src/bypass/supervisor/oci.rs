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
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Supervisor, SupervisorError};
use crate::bypass::notify::Listener;
use crate::bypass::rules::{arch, rules, Action, Cond};
use crate::sys::scm;

/// OCI runtime connections being read at once, and how long each may take.
pub(super) const MAX_OCI_CLIENTS: usize = 64;
pub(super) const OCI_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest container state message accepted.
pub(super) const MAX_OCI_STATE: usize = 1 << 20;

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
    pub(super) path: PathBuf,
}

impl OciServer {
    /// Bind `path` (a stale socket file left by an earlier run is replaced).
    pub fn bind(path: &Path) -> Result<OciServer, SupervisorError> {
        let err = |source| SupervisorError::Bind {
            path: path.to_owned(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(OciServer {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for OciServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A runtime's connection, until its state message is complete.
pub(super) struct OciClient {
    pub(super) stream: UnixStream,
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
                    if self.oci_clients.len() >= MAX_OCI_CLIENTS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    self.oci_clients.insert(OciClient {
                        stream,
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
                self.add_listener(Listener::new(fd), udp, name, sync);
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
