#!/usr/bin/env bash
# The lab benchmark: underlay, host-gw, vxlan, udp, wireguard and the
# userspace WireGuard anchors, measured in one run on a 2-node lab in network
# namespaces. Run as root.
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
# bookworm-backports' wireguard-go (0.0.20231211, with TUN and UDP offloads),
# the anchor of the wireguard case: downloaded once with apt and unpacked
# under target/, through a private apt state, so the system's own
# wireguard-go (Debian 12's, the "wireguard-go-2022" case and the interop
# tests' peer) and its apt sources stay as they are.
bpo=target/wireguard-go-backports
if [[ ! -x $bpo/usr/bin/wireguard-go && ( " $* " != *" --only "* || "$*" == *wireguard-go* ) ]]; then
    apt_dir=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial" "$bpo"
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$apt_dir/sources.list"
    apt_opts=(-q -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::Lists=$apt_dir/lists" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
    if apt-get "${apt_opts[@]}" update >/dev/null &&
        (cd "$apt_dir" && apt-get "${apt_opts[@]}" download wireguard-go/bookworm-backports >/dev/null); then
        dpkg-deb -x "$apt_dir"/wireguard-go_*.deb "$bpo"
    else
        echo "bench: could not download bookworm-backports' wireguard-go; its case will fail, the others run" >&2
    fi
    rm -rf "$apt_dir"
fi
exec target/release/examples/bench "$@"
