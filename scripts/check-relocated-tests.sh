#!/usr/bin/env bash
# Test binaries built in one checkout must work from another that shares the build folder.
#
#   scripts/check-relocated-tests.sh
#
# Clones HEAD into A, builds the tests there (CARGO_TARGET_DIR, default ~/.cache/prdit/target,
# as .ci/run), copies A to B keeping file times (so cargo judges A's test binaries fresh and
# reuses them), deletes A, and runs from B the tests that read repository files: the shipped
# configs (unit tests), the parity fixtures and the LIDC zoom fixture. They must find those
# files in B, at run time.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/prdit/target}
export CARGO_TERM_COLOR=never
WORK=$(mktemp -d "${TMPDIR:-/tmp}/prdit-relocated.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

git clone -q "$SRC" "$WORK/a"
(cd "$WORK/a" && bash scripts/vendor-times.sh pin && cargo test --release --locked --no-run)
cp -a "$WORK/a" "$WORK/b"
rm -rf "$WORK/a"
cd "$WORK/b"
fresh=$(cargo test --release --locked --no-run 2>&1 | grep -c '^ *Compiling' || true)
if [ "$fresh" != 0 ]; then
    echo "relocated: cargo recompiled $fresh crate(s) in B, so A's test binaries were not reused: no check" >&2
    exit 1
fi
echo "relocated: B reuses A's test binaries"
cargo test --release --locked --lib -- shipped presets_are_valid
cargo test --release --locked --test parity -- pytorch_zip_file_loads_the_same_weights resampling_matches
cargo test --release --locked --test prepare -- lidc_recipe_matches_scipy_step_by_step
echo "relocated: the tests found their files in $WORK/b with $WORK/a gone"
