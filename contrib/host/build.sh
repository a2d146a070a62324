#!/bin/sh
# Build writ-principals as shipped to hosts: static, whole-program optimised, panic=abort
# (the `host` profile in Cargo.toml), with CPU-feature probes left out of the crypto
# (sha2 in plain software through the `host-build` feature; curve25519-dalek's portable
# serial backend, chosen by the cfg below). sshd execs `writ-principals check` on every
# authentication attempt, so start-up is its main cost; each crate's `cpuid` probe traps
# to the hypervisor on a VM and costs more than the vector code saves on two signature
# checks. Measured in docs/performance.md ("Host check"). Portable to any x86-64 CPU.
# Only the host crates are compiled (`-p writ-principals`: writ-principals, writ-formats
# and their dependencies; no async runtime, HTTP server or database, README "Layout").
#
#   contrib/host/build.sh        → target/x86_64-unknown-linux-gnu/host/writ-principals
set -eu
cd "$(dirname "$0")/../.."
target="${TARGET:-x86_64-unknown-linux-gnu}"
RUSTFLAGS="-C target-feature=+crt-static --cfg curve25519_dalek_backend=\"serial\"" \
    cargo build -p writ-principals --profile host --target "$target" --features host-build
echo "target/$target/host/writ-principals"
