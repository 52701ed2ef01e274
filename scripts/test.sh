#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a private PostgreSQL the
# tests start themselves (or REGENT_TEST_DATABASE_URL when set); then the starvation test
# alone; then the API contract (Schemathesis, scripts/schemathesis.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
bash scripts/ensure-deps.sh
# Marks this run's start: only clusters started after it are ours to stop at the end.
marker="$(mktemp /tmp/regent-test-run-XXXXXX)"
# Every phase's output is also kept here, so the run can end with a list of what failed (a CI log
# is often read from its tail, and a failure in the first phase is otherwise far above it).
log="$(mktemp /tmp/regent-test-log-XXXXXX)"
trap 'rm -f "$marker" "$log"' EXIT
swift build --build-tests
status=0
# A hung test must fail the run, not hold it until CI's own limit.
if [ $# -gt 0 ]; then
  timeout --signal=TERM --kill-after=30 "${REGENT_TEST_TIMEOUT:-1800}" swift test --skip-build "$@" 2>&1 | tee -a "$log" || status=$?
else
  # 1. Everything in-process, in parallel. 2. The suites that start processes and servers of
  # their own (drills, regent serve, promoted standbys, outages, PgBouncer), one at a time:
  # on a two-core machine running them beside everything else starves the other tests'
  # leaders (1 s test leases) and makes timing assertions flaky; the leadership and event-bus
  # suites, whose 1 s test leases flapped for 45 s at a time in that phase, run there too. 3. The starvation test
  # alone: it saturates the process's cooperative pool on purpose.
  heavy=(FaultDrillTests FailoverDrillTests QueueCLITests PackageCLITests RunCLITests ProcessTests ServeProcessTests PromotionTests OutageTests PoolerTests WorkerSDKTests PythonClientTests FlowControlTests ScheduleTests ScheduleAPITests RunConcurrencyTests VaultTests VaultAPITests BootBesideMigrationTests LeadershipTests LeadershipMetricsTests EventBusTests)
  skips=(); for s in "${heavy[@]}" StarvationTests; do skips+=(--skip "$s"); done
  filters=(); for s in "${heavy[@]}"; do filters+=(--filter "$s"); done
  timeout --signal=TERM --kill-after=30 "${REGENT_TEST_TIMEOUT:-1800}" swift test --skip-build "${skips[@]}" 2>&1 | tee -a "$log" || status=$?
  # The upgrade drill (ProcessTests) rolls a cluster from the previous tagged release's binary to
  # this build and back: build that binary once (kept in .build/previous/).
  if previous="$(bash scripts/build-previous.sh)"; then
    export REGENT_PREVIOUS_BINARY="$previous"
  elif [ "${REGENT_REQUIRE_TOOLS:-0}" = 1 ]; then
    echo "the previous release could not be built; the upgrade drill cannot run" >&2
    status=1
  else
    echo "skipping the upgrade drill: the previous release could not be built (see above)" >&2
  fi
  timeout --signal=TERM --kill-after=30 "${REGENT_TEST_TIMEOUT:-1800}" swift test --skip-build --no-parallel "${filters[@]}" 2>&1 | tee -a "$log" || status=$?
  timeout --signal=TERM --kill-after=30 600 swift test --skip-build --filter StarvationTests 2>&1 | tee -a "$log" || status=$?
  # The API contract: Schemathesis against docs/openapi.yaml and a real node (skipped, saying
  # why, when it cannot be installed from PyPI).
  timeout --signal=TERM --kill-after=30 900 bash scripts/schemathesis.sh 2>&1 | tee -a "$log" || status=$?
  # The console in a real headless Chromium against two live nodes (scripts/console-test.sh).
  timeout --signal=TERM --kill-after=30 900 bash scripts/console-test.sh 2>&1 | tee -a "$log" || status=$?
fi
# A crashed or timed-out test process can leave its private cluster behind: stop the clusters
# that appeared during this run (not other checkouts' or other runs'), by their data directory.
pgctl="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/pg_ctl"
for d in /tmp/regent-pg-*/data; do
  [ -f "$d/postmaster.pid" ] || continue
  [ -n "$(find "$d/postmaster.pid" -newer "$marker" 2>/dev/null)" ] || continue
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$pgctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  else "$pgctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true; fi
done
if [ "$status" != 0 ]; then
  echo "── what failed (status $status): failing tests and issues, then the contract's FAIL lines"
  grep -E '✘|  FAIL |Fatal error|signal code|error: fatalError|error: Exited|^FAIL: |^ERROR: |^AssertionError' "$log" | head -80 || true
fi
exit $status
