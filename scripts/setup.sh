#!/usr/bin/env bash
# Install what weft's build, tests, demo and benchmark need on Debian 12, then
# check that it works. Idempotent: installs only what is missing. Run as root.
#
#   scripts/setup.sh              install what is missing, then check
#   scripts/setup.sh --no-install only check; exit 1 naming the first missing piece
#
# Every package is named here, even those a full Debian install usually has:
# `apt-get install --no-install-recommends` skips Recommends (protoc's
# well-known .proto files in libprotobuf-dev are only a Recommends of
# protobuf-compiler), and a fresh machine has none of what a used one happened
# to collect. Keep this list and the README's in step.
set -euo pipefail

# package: what uses it
packages=(
    ca-certificates    # cargo fetches crates over https
    gcc g++ libc6-dev  # cc/c++ for ring (TLS) and libFuzzer
    protobuf-compiler  # protoc, for etcd-client's build script
    libprotobuf-dev    # protoc's well-known protos (google/protobuf/*.proto)
    etcd-server        # etcd: the tests', demo's and benchmark's store
    etcd-client        # etcdctl: test harness health checks and fault injection
    openssl            # test certificates for etcd TLS
    iproute2           # ip, bridge: namespaces, links, routes, FDB in the lab
    iptables           # iptables, iptables-restore: weft's masquerade/forward rules
    nftables           # nft: the same rules in nftables ("EnableNFTables": true)
    iputils-ping       # ping: the lab's reachability checks
    iperf3             # throughput in the demo and benchmark
    procps             # sysctl in the lab's namespaces
    containernetworking-plugins # bridge, host-local: the delegates of weft's CNI plugin in the lab
    lintian            # checks the Debian package (scripts/package.sh, tests/package.rs)
    systemd            # systemd-analyze verify on the packaged unit
    debootstrap        # the Debian 12 tree the systemd-node tests boot (tests/systemd_nodes.rs)
    systemd-container  # systemd-nspawn: boots those nodes with systemd as PID 1
    wireguard-go       # an independent userspace WireGuard: the wireguard backend's interop test
    wireguard-tools    # wg: configures it as flanneld configures its kernel device
)

fail() {
    echo "setup: $1" >&2
    exit 1
}

install=1
case "${1:-}" in
    --no-install) install=0 ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--no-install]" >&2; exit 2 ;;
esac

if ((install)); then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "setup: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Debian's etcd-server would start a system etcd on 127.0.0.1:2379;
        # weft's tests and demo run their own, so keep packages from starting services.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        log=$(mktemp)
        if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
            cat "$log" >&2
            fail "apt-get install failed (above)"
        fi
        rm -f "$log"
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

# Check that what was installed works, so a gap shows here as one line
# instead of a build script's panic half-way through the build.
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || fail "'$1' not found; it comes with Debian's $2 package (apt-get install $2)"
}
need cc gcc
need c++ g++
need protoc protobuf-compiler
need etcd etcd-server
need etcdctl etcd-client
need openssl openssl
need ip iproute2
need bridge iproute2
need iptables iptables
need iptables-restore iptables
need nft nftables
need ping iputils-ping
need iperf3 iperf3
need sysctl procps
need lintian lintian
need wireguard-go wireguard-go
need wg wireguard-tools
need systemd-analyze systemd
need dpkg-deb dpkg
need unshare util-linux
need nsenter util-linux
need debootstrap debootstrap
need systemd-nspawn systemd-container
for plugin in bridge host-local; do
    [ -x "/usr/lib/cni/$plugin" ] ||
        fail "no CNI plugin /usr/lib/cni/$plugin; it comes with Debian's containernetworking-plugins package"
done
[ -e /etc/ssl/certs/ca-certificates.crt ] ||
    fail "no CA bundle at /etc/ssl/certs/ca-certificates.crt; it comes with Debian's ca-certificates package"

probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\n' > "$probe/probe.proto"
protoc --proto_path="$probe" --descriptor_set_out="$probe/out.pb" "$probe/probe.proto" >/dev/null 2>&1 ||
    fail "protoc cannot find its well-known protos (google/protobuf/descriptor.proto); they come with Debian's libprotobuf-dev package (apt-get install libprotobuf-dev)"
printf 'int main(void) { return 0; }\n' > "$probe/probe.c"
cc "$probe/probe.c" -o "$probe/probe" >/dev/null 2>&1 ||
    fail "the C compiler cannot build a program; it needs Debian's gcc and libc6-dev packages"

if ! command -v cargo >/dev/null; then
    fail "cargo is not installed; install a Rust toolchain (rustup) first"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    ((install)) || fail "cargo-nextest is not installed (cargo install --locked cargo-nextest)"
    echo "setup: installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi
