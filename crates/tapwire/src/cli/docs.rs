//! The whole command line as one [`clap::Command`], for generated documentation only.
//!
//! Theory of operation: [`super::parse`] picks a front end by argv\[1\] and parses with that
//! front end's own clap definition, so no single clap tree exists at run time. Man pages and
//! shell completions (examples/gen-docs.rs, run by scripts/deb.sh) need one: [`command`] takes
//! the daemon's definition as the root and hangs the other front ends under it as the
//! subcommands they are on the command line (`run`, `ctl`, `seccomp-profile`). Nothing here
//! runs when tapwire itself runs.
#![forbid(unsafe_code)]

use clap::CommandFactory;

use super::control::ControlCli;
use super::profile::ProfileCli;
use super::run::RunCli;
use super::slirp4netns::DaemonCli;

/// `tapwire` with its subcommands, as documented in the man page and completions.
pub fn command() -> clap::Command {
    DaemonCli::command()
        .name("tapwire")
        .bin_name("tapwire")
        .subcommand(RunCli::command().name("run"))
        .subcommand(ControlCli::command().name("ctl"))
        .subcommand(ProfileCli::command().name("seccomp-profile"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_tree_is_valid_and_complete() {
        let cmd = command();
        cmd.clone().debug_assert();
        let subs: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        assert_eq!(subs, ["run", "ctl", "seccomp-profile"]);
        assert!(cmd
            .get_arguments()
            .any(|a| a.get_long() == Some("api-socket")));
    }
}
