#!/usr/bin/env bash
# Short fuzz runs of the udp backend's receive-path parser and route table
# (cargo-fuzz, libFuzzer). Usage: scripts/fuzz.sh [SECONDS per target, default 20]
# New inputs go to target/fuzz-corpus; the seed corpus in fuzz/corpus stays as committed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
# cargo-fuzz passes -Z sanitizer flags; the machine's toolchain is stable,
# and RUSTC_BOOTSTRAP lets it accept them.
export RUSTC_BOOTSTRAP=1
for target in inbound route_table wireguard; do
    mkdir -p "target/fuzz-corpus/$target"
    echo "fuzz: $target for ${secs}s" >&2
    log="target/fuzz-$target.log"
    if ! cargo fuzz run --fuzz-dir fuzz "$target" "target/fuzz-corpus/$target" "fuzz/corpus/$target" \
        -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target FAILED (crash input in fuzz/artifacts/$target)" >&2
        exit 1
    fi
    grep -E "^Done" "$log" >&2
done
