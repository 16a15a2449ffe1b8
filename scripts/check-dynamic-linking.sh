#!/usr/bin/env bash
# A scratch crate under target/ that depends on aiec and on cudarc with its
# `dynamic-linking` feature (what candle-core's `cuda` feature turns on) must
# build: aiec asks cudarc for `fallback-dynamic-loading`, which gives way to
# `dynamic-linking` when another crate of the graph wants it, and aiec's code
# compiles under either mode. `cargo check` only: linking would need libcuda.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=target/compat-dynamic-linking
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "aiec-compat-dynamic-linking"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
aiec = { path = "$root", default-features = false }
cudarc = { version = "0.19", default-features = false, features = ["std", "driver", "dynamic-linking", "cuda-12040"] }
TOML
cat > "$dir/src/lib.rs" <<'RS'
//! Uses aiec's CUDA entry points, so that their code is checked in this mode.
pub fn probe() -> Result<usize, aiec::AiecError> {
    let dev = aiec::Device::cuda(0)?;
    Ok(dev.loaded_modules())
}
RS
(cd "$dir" && CARGO_TARGET_DIR="$root/target/compat-dynamic-linking/target" cargo check --quiet)
echo "aiec builds beside cudarc's dynamic-linking: ok"
