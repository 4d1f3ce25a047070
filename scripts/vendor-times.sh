#!/usr/bin/env bash
# Lets a clone at a new path reuse a shared CARGO_TARGET_DIR's build of vendor/ (the offline
# cubecl-llvm stand-in) instead of rebuilding it and every crate downstream of it.
#
#   scripts/vendor-times.sh pin      before building (what .ci/run does)
#   scripts/vendor-times.sh record   after a successful build
#
# Cargo keys a path dependency's build by its path relative to the workspace, so clones share
# it, but it judges the build stale when a source file is newer than the build. A fresh clone's
# files are all new, so every clone would rebuild cubecl-llvm, then cubecl-cuda, burn-cuda,
# burn and prdit. `pin` sets vendor/'s file times to the commit time of their last change, and
# does so only when the target dir's stamp says its build is of exactly this vendored tree (git
# tree hash) and no build of cubecl-llvm happened after the stamp was written (a build from a
# checkout with uncommitted vendor/ changes); otherwise it leaves the times alone and cargo
# rebuilds. `record` writes the stamp; it refuses to when vendor/ has uncommitted changes.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
STAMP="$TARGET/.prdit-vendor-tree"
mode=${1:-}

if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
    echo "vendor-times: not a git checkout; file times left as they are"
    exit 0
fi
if ! git diff --quiet HEAD -- vendor || [ -n "$(git ls-files --others --exclude-standard -- vendor)" ]; then
    echo "vendor-times: vendor/ has uncommitted changes; file times left as they are, no stamp"
    exit 0
fi
tree=$(git rev-parse HEAD:vendor)

case $mode in
pin)
    if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$tree" ]; then
        echo "vendor-times: $TARGET holds no recorded build of this vendor/ tree; cargo builds it"
        exit 0
    fi
    if [ -n "$(find "$TARGET" -maxdepth 4 -path '*/.fingerprint/cubecl-llvm-*/*' -newer "$STAMP" -print -quit)" ]; then
        echo "vendor-times: cubecl-llvm was rebuilt after the stamp (another vendor/); cargo decides afresh"
        rm -f "$STAMP"
        exit 0
    fi
    when=$(git log -1 --format=%ct -- vendor)
    git ls-files -z -- vendor | xargs -0 touch -m -d "@$when"
    echo "vendor-times: vendor/ dated to its last commit ($(date -u -d "@$when" '+%F %T') UTC); its build in $TARGET is reused"
    ;;
record)
    mkdir -p "$TARGET"
    printf '%s\n' "$tree" >"$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
    ;;
*)
    echo "usage: $0 pin|record" >&2
    exit 2
    ;;
esac
