#!/usr/bin/env bash
# A long run of the Rust fuzz-style property tests (rust/fuzz_tests.rs):
# random and mutated JPEG/PNG/WebP/GIF/BMP bytes through the probe and the
# decoders, the .npy writer and float repr, damaged Parquet footers.
# `cargo test` runs a few thousand cases in all; this runs CASES per property
# (default 200000), built with the fastbuild profile (optimised, no fat LTO).
#
#   benches/fuzz_long.sh            # 200k cases per property
#   CASES=1000000 benches/fuzz_long.sh
#
# A failure prints the shrunk input (proptest) and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
HPD_FUZZ_CASES="${CASES:-200000}" cargo test --profile fastbuild --lib fuzz_tests -- --nocapture
