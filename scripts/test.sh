#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the integration tests
# against real etcd servers and network namespaces, and short fuzz runs of the
# udp backend's parser and route table. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/fuzz.sh 20
# The Debian package, which tests/package.rs checks and runs.
scripts/package.sh
cargo nextest run --workspace --locked --no-fail-fast
