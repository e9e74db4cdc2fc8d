//! The `tapwire` binary: parse the command line, hand over to the library.
#![forbid(unsafe_code)]

fn main() {
    let cmd = match tapwire::cli::parse(std::env::args_os()) {
        Ok(cmd) => cmd,
        Err(e) => e.exit(),
    };
    std::process::exit(tapwire::startup::run(cmd));
}
