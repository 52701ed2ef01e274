#!/usr/bin/env bash
# Runs Regent's main job on its embedded default: a private PostgreSQL it starts itself and a
# local cluster of three nodes; kills the leader (SIGKILL, then SIGTERM) and shows the failovers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
bash scripts/ensure-deps.sh
echo "building regent (the first build takes a minute or two) …"
# regent, and the example worker on the RegentWorker library that the demo's last part runs.
if ! { swift build --product regent && swift build --product regent-example-worker; } >/tmp/regent-demo-build.log 2>&1; then
  tail -30 /tmp/regent-demo-build.log >&2
  echo "build failed; full log in /tmp/regent-demo-build.log" >&2
  exit 1
fi
exec .build/debug/regent demo "$@"
