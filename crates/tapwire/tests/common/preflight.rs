//! Preflight: root, /dev/net/tun, tools and the binary under test; the skip policy.

use super::*;

// Preflight: root, tools, the binary under test.
// ---------------------------------------------------------------------------------------------

/// The binary under test: `$TAPWIRE_TEST_BIN` (path, or name looked up in $PATH) or tapwire.
pub fn bin() -> PathBuf {
    match std::env::var_os("TAPWIRE_TEST_BIN") {
        Some(b) if !b.is_empty() => which(&b).unwrap_or_else(|| PathBuf::from(b)),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_tapwire")),
    }
}

/// True unless the binary under test is slirp4netns (used for tapwire-only expectations).
pub fn testing_tapwire() -> bool {
    bin().file_name().and_then(OsStr::to_str) != Some("slirp4netns")
}

/// Look `name` up in $PATH (or accept it if it contains a slash and exists).
pub fn which(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = Path::new(name.as_ref());
    if name.components().count() > 1 {
        return name.exists().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(super) fn allow_skip() -> bool {
    std::env::var("TAPWIRE_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// Report a missing prerequisite: on the real stderr (not captured by the test harness), then
/// fail the test, unless TAPWIRE_ALLOW_SKIP=1 (then return false: the caller returns early).
pub fn skip(why: &str) -> bool {
    let msg = format!("skipping: {why}");
    let _ = writeln!(io::stderr().lock(), "{msg}");
    if allow_skip() {
        false
    } else {
        panic!("{msg} (set TAPWIRE_ALLOW_SKIP=1 to let such tests pass without running)");
    }
}

/// Check root, /dev/net/tun, the base tools plus `tools`, and the binary under test.
/// Returns false if the test must return early (only with TAPWIRE_ALLOW_SKIP=1).
pub fn preflight(tools: &[&str]) -> bool {
    init_process();
    if !nix::unistd::geteuid().is_root() {
        return skip("integration tests need root (they create namespaces and veths)");
    }
    if !Path::new("/dev/net/tun").exists() {
        return skip("/dev/net/tun does not exist (modprobe tun / mknod /dev/net/tun c 10 200)");
    }
    for t in ["nsenter", "unshare", "ip", "mount", "sleep", "sh"]
        .iter()
        .chain(tools)
    {
        if which(t).is_none() {
            return skip(&format!(
                "`{t}` not found in PATH (see .ci/run for the apt packages)"
            ));
        }
    }
    let b = bin();
    if !b.is_file() {
        return skip(&format!("binary under test {} does not exist", b.display()));
    }
    true
}

/// For behaviour only tapwire has (run mode, exit status on SIGTERM, ...).
pub fn tapwire_only(what: &str) -> bool {
    if testing_tapwire() {
        true
    } else {
        skip(&format!(
            "{what} is tapwire-only; TAPWIRE_TEST_BIN={}",
            bin().display()
        ))
    }
}

/// Once per test binary: raise RLIMIT_NOFILE (500-connection tests hold >1000 sockets; the
/// daemon inherits the limit too).
pub(super) fn init_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which lives on our stack.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max.min(65536);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}
