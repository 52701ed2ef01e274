#!/usr/bin/env bash
# Builds the previous release's regent binary once and prints its path, for the upgrade drill
# (`regent drill upgrade --from "$(bash scripts/build-previous.sh)"`). The previous release is
# the newest v* tag on HEAD's history (REGENT_PREVIOUS_TAG overrides it), else the one named in
# releases/PREVIOUS. Its sources come from git when the clone has the tag or the commit, else
# from releases/<tag>-source.tar.gz (a fresh CI clone may have no tags or history). The binary
# is kept in .build/previous/<tag>/regent, so later runs reuse it. Exit 3: nothing to build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
recorded="$(grep -v '^#' releases/PREVIOUS 2>/dev/null | head -1 || true)"
read -r rec_tag rec_commit rec_sum <<<"${recorded:-}" || true
tag="${REGENT_PREVIOUS_TAG:-$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null || true)}"
tag="${tag:-${rec_tag:-}}"
if [ -z "$tag" ]; then
  echo "no v* tag on this history and no releases/PREVIOUS: there is no previous release to build" >&2
  exit 3
fi
case "$tag" in *[!A-Za-z0-9._-]*) echo "refusing tag name '$tag'" >&2; exit 2 ;; esac
out=".build/previous/$tag"
if [ ! -x "$out/regent" ]; then
  src="$(mktemp -d /tmp/regent-previous-XXXXXX)"
  trap 'rm -rf "$src"' EXIT
  if git rev-parse -q --verify "refs/tags/$tag^{commit}" >/dev/null; then
    echo "building $tag from its tag (once; kept in $out) …" >&2
    git archive "$tag" | tar -x -C "$src"
  elif [ "$tag" = "${rec_tag:-}" ] && git cat-file -e "${rec_commit}^{commit}" 2>/dev/null; then
    echo "building $tag from commit $rec_commit (this clone has no tag $tag; once; kept in $out) …" >&2
    git archive "$rec_commit" | tar -x -C "$src"
  elif [ "$tag" = "${rec_tag:-}" ] && [ -f "releases/$tag-source.tar.gz" ]; then
    echo "this clone has neither tag $tag nor commit ${rec_commit:0:12} (shallow: $(git rev-parse --is-shallow-repository 2>/dev/null || echo unknown)); building from releases/$tag-source.tar.gz …" >&2
    sum="$(sha256sum "releases/$tag-source.tar.gz" | cut -d' ' -f1)"
    if [ "$sum" != "$rec_sum" ]; then
      echo "releases/$tag-source.tar.gz has SHA-256 $sum, but releases/PREVIOUS records $rec_sum: refusing it" >&2
      exit 2
    fi
    tar -xzf "releases/$tag-source.tar.gz" -C "$src" --strip-components=1
  else
    echo "cannot find the sources of $tag: no such tag or commit here and no releases/$tag-source.tar.gz" >&2
    exit 3
  fi
  (cd "$src" && swift build --product regent >&2)
  mkdir -p "$out"
  cp "$src/.build/debug/regent" "$out/regent"
fi
echo "$PWD/$out/regent"
