#!/usr/bin/env bash
# Runs Regent's main job on its embedded default: a private PostgreSQL it starts and stops itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
bash scripts/ensure-deps.sh
swift build --product regent 2>&1 | grep -E 'error|warning: |Compiling|Build complete' | grep -v '^\[' || true
exec .build/debug/regent demo "$@"
