#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a private PostgreSQL the
# tests start themselves (or REGENT_TEST_DATABASE_URL when set).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
bash scripts/ensure-deps.sh
swift build --build-tests
status=0
swift test --skip-build "$@" || status=$?
# A crashed test process can leave its private cluster behind; stop any of ours.
pgctl="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/pg_ctl"
for d in /tmp/regent-pg-*/data; do
  [ -f "$d/postmaster.pid" ] || continue
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$pgctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  else "$pgctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true; fi
done
exit $status
