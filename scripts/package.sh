#!/usr/bin/env bash
# Build the Debian package with cargo-deb: target/debian/weft_<version>-1_amd64.deb
# holding /usr/bin/weft, the CNI plugin in /usr/lib/cni (as flannel and
# weft-cni), the systemd unit, /etc/default/weft, man pages and the docs.
# Run as root (setup installs packages); prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb" >&2
    cargo install --locked cargo-deb
fi
cargo build --release --locked --bin weft --bin weft-cni
rm -rf target/man
target/release/weft man target/man
cargo deb --no-build --locked -p weft --output target/debian/ | tail -n 1
