#!/usr/bin/env bash
# Build the Debian package: man pages and shell completions generated from the clap
# definitions (crates/tapwire/examples/gen-docs.rs) into target/docs, then cargo-deb
# ([package.metadata.deb] in crates/tapwire/Cargo.toml). Prints the .deb's path last.
# Needs cargo-deb (`cargo install cargo-deb --locked`). README "Install".
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf target/docs
cargo run --locked --release -p tapwire --example gen-docs -- target/docs >&2
cargo deb --locked -p tapwire "$@" >&2
ls -t target/debian/tapwire_*.deb | head -n 1
