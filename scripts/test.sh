#!/usr/bin/env bash
# Every test of the crate, on a fresh machine with only the Rust toolchain.
# (README: "Run every test".) Later steps add the NVRTC and simulator layers here.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== unit, integration and doc tests (release) =="
cargo test --release

echo "== benches and examples build =="
cargo build --release --benches --examples
