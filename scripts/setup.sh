#!/usr/bin/env bash
# Install what weft's build, tests, demo and benchmark need on Debian 12.
# Idempotent: installs only what is missing. Run as root.
set -euo pipefail

packages=(etcd-server etcd-client openssl protobuf-compiler g++ iproute2 iptables nftables iperf3 iputils-ping procps)
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
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is not installed; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi
