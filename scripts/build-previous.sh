#!/usr/bin/env bash
# Builds the previous release's regent binary once and prints its path, for the upgrade drill
# (`regent drill upgrade --from "$(bash scripts/build-previous.sh)"`). The previous release is
# the newest v* tag on HEAD's history (REGENT_PREVIOUS_TAG overrides it); its binary is kept in
# .build/previous/<tag>/regent, so later runs reuse it. Exit 3: no tag to build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
tag="${REGENT_PREVIOUS_TAG:-$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null || true)}"
if [ -z "$tag" ]; then
  echo "no v* tag on this history: there is no previous release to build" >&2
  exit 3
fi
case "$tag" in *[!A-Za-z0-9._-]*) echo "refusing tag name '$tag'" >&2; exit 2 ;; esac
out=".build/previous/$tag"
if [ ! -x "$out/regent" ]; then
  src="$(mktemp -d /tmp/regent-previous-XXXXXX)"
  trap 'rm -rf "$src"' EXIT
  echo "building $tag (once; kept in $out) …" >&2
  git archive "$tag" | tar -x -C "$src"
  (cd "$src" && swift build --product regent >&2)
  mkdir -p "$out"
  cp "$src/.build/debug/regent" "$out/regent"
fi
echo "$PWD/$out/regent"
