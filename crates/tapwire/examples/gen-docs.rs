//! Writes tapwire's man pages and shell completions, generated from its clap definitions
//! (`tapwire::cli::docs::command`), into a directory: `man/tapwire.1` (+ one page per
//! subcommand) and `completions/{tapwire.bash,_tapwire,tapwire.fish}`.
//!
//! Usage: `cargo run --release -p tapwire --example gen-docs -- OUT_DIR` (scripts/deb.sh).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/docs".into()),
    );
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let cmd = tapwire::cli::docs::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut c = cmd.clone();
        let path = clap_complete::generate_to(shell, &mut c, "tapwire", &comp)?;
        println!("{}", path.display());
    }
    for e in std::fs::read_dir(&man)? {
        println!("{}", e?.path().display());
    }
    Ok(())
}
