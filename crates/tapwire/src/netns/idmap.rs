//! `tapwire run --map-auto`: more than one user in the run namespace, written by the parent.
//!
//! # Theory of operation
//! By default the run child maps only root (to the caller) and writes that map itself, which
//! any user may do for their own id. Podman, Docker, apt or a package's postinst inside a
//! workspace need the other ids too (a container's `/dev/pts` is mounted with `gid=5`; image
//! files belong to many users). A process may write a wider map only with `CAP_SETUID` in
//! the *parent* user namespace, which the child gave up by unsharing, so with `--map-auto`
//! the child asks the parent instead (`b'M'` on the socketpair, then it waits for one byte):
//!
//! - as root (uid 0 of the initial namespace: `CAP_SETUID` there), the parent writes
//!   `0 0 65536` to the child's `uid_map` and `gid_map` itself: ids 0-65535 are the host's;
//! - as another user it runs `newuidmap`/`newgidmap` (shadow's setuid helpers, the ones
//!   Podman and RootlessKit use) with root mapped to the user and ids 1..=N to the user's
//!   first range in `/etc/subuid` / `/etc/subgid` ([`subid_range`]), like `unshare
//!   --map-auto`. No range: a clear error naming the file.
//!
//! `setgroups` stays allowed (a gid map from newgidmap or root may keep it; Podman calls
//! setgroups), unlike the single map, which must deny it.
#![forbid(unsafe_code)]

use std::io;
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid, User};

use super::{setup_err, NetnsError};

/// The ids root maps with `--map-auto` (uid 0 included), like Podman's default rootful range.
pub const ROOT_RANGE: u32 = 65536;

/// The first `start:count` range of `name` (or of its numeric id) in a subuid/subgid file.
pub fn subid_range(file: &str, name: &str, id: u32) -> Option<(u32, u32)> {
    let id = id.to_string();
    file.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != name && who != id {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
        (count > 0).then_some((start, count))
    })
}

/// Parent side: write the child's maps (see the module documentation).
pub(super) fn map_child(child: Pid) -> Result<(), NetnsError> {
    let (uid, gid) = (Uid::effective(), Gid::effective());
    if uid.is_root() {
        for (file, what) in [("uid_map", "uid"), ("gid_map", "gid")] {
            let path = format!("/proc/{child}/{file}");
            std::fs::write(&path, format!("0 0 {ROOT_RANGE}\n"))
                .map_err(|e| setup_err(format!("--map-auto: write {what} map to {path}"), e))?;
        }
        return Ok(());
    }
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    for (tool, file, own) in [
        ("newuidmap", "/etc/subuid", uid.as_raw()),
        ("newgidmap", "/etc/subgid", gid.as_raw()),
    ] {
        let text = std::fs::read_to_string(file)
            .map_err(|e| setup_err(format!("--map-auto: read {file}"), e))?;
        let (start, count) = subid_range(&text, &name, uid.as_raw()).ok_or_else(|| {
            setup_err(
                format!("--map-auto: no range for {name:?} (uid {uid}) in {file}"),
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        let out = Command::new(tool)
            .arg(child.to_string())
            .args(["0", &own.to_string(), "1", "1"])
            .args([start.to_string(), count.to_string()])
            .output()
            .map_err(|e| setup_err(format!("--map-auto: run {tool}"), e))?;
        if !out.status.success() {
            return Err(setup_err(
                format!(
                    "--map-auto: {tool} {child} 0 {own} 1 1 {start} {count}: {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_range_by_name_or_id() {
        let f = "# comment\nalice:100000:65536\nbob:165536:65536\n1002:231072:1000\nbob:300000:5\n";
        assert_eq!(subid_range(f, "bob", 1001), Some((165536, 65536)));
        assert_eq!(subid_range(f, "carol", 1002), Some((231072, 1000)));
        assert_eq!(subid_range(f, "dave", 1003), None);
    }

    #[test]
    fn malformed_and_empty_ranges_are_skipped() {
        let f = "eve:x:65536\neve:100:0\neve\n  eve:500:10  \n";
        assert_eq!(subid_range(f, "eve", 7), Some((500, 10)));
        assert_eq!(subid_range("", "eve", 7), None);
    }
}
