#!/usr/bin/env bash
# The demo: a local etcd, a network config, nodes leasing subnets, and
# `weft leases` showing who holds what. Everything is torn down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked --bin weft --bin weft-cni --example demo
exec target/release/examples/demo "$@"
