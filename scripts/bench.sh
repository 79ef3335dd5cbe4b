#!/usr/bin/env bash
# The lab benchmark: underlay, host-gw, vxlan, udp and udp without offloads,
# measured in one run on a 2-node lab in network namespaces. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked --bin weft --bin weft-cni --example bench
exec target/release/examples/bench "$@"
