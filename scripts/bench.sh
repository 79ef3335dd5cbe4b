#!/usr/bin/env bash
# The lab benchmark: underlay, host-gw, vxlan, udp and udp without offloads,
# measured in one run on a 2-node lab in network namespaces. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked --bin weft --bin weft-cni --example bench
# cloudflare's boringtun-cli, an anchor for the wireguard case (built once);
# if it does not build, its case says so and the others run.
if [[ ! -x target/boringtun-cli/bin/boringtun-cli && ( " $* " != *" --only "* || "$*" == *boringtun* ) ]]; then
    cargo install --locked boringtun-cli --version 0.7.1 --root target/boringtun-cli \
        || echo "bench: boringtun-cli did not build; its case will fail, the others run" >&2
fi
exec target/release/examples/bench "$@"
