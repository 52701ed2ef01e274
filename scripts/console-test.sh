#!/usr/bin/env bash
# The console in a real browser: headless Chromium (Debian's chromium and chromium-driver,
# installed by scripts/ensure-deps.sh when root) driven by Selenium (PyPI, in a virtual
# environment under .build/), against a private PostgreSQL and two `regent serve` nodes that
# Tests/Browser/test_console.py starts. Screenshots of every view land in
# .build/console-screenshots/. When Chromium or Selenium cannot be had it prints the reason
# and exits 0, unless REGENT_REQUIRE_TOOLS=1 (set by .ci/run): then it fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
missing() {
  if [ "${REGENT_REQUIRE_TOOLS:-0}" = 1 ]; then echo "FAILED: $1 and REGENT_REQUIRE_TOOLS=1" >&2; exit 1; fi
  echo "SKIPPED the console browser tests: $1"
  exit 0
}
chromium="$(command -v chromium || true)"; driver="$(command -v chromedriver || true)"
[ -n "$chromium" ] && [ -n "$driver" ] || missing "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
venv=.build/browser-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import selenium' 2>/dev/null; then
  { python3 -m venv "$venv" && "$venv/bin/pip" install -q "selenium>=4.27,<5"; } >/tmp/regent-selenium-install.log 2>&1 \
    || { rm -rf "$venv"; missing "Selenium could not be installed from PyPI (see /tmp/regent-selenium-install.log)"; }
fi
swift build --product regent >/dev/null
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
dir="$(mktemp -d /tmp/regent-console-XXXXXX)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
pgport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
cleanup() {
  as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
as_pg "$bin/initdb" -D "$dir/data" --no-sync --no-locale -E UTF8 -U postgres --auth=trust >/dev/null
as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -o "-p $pgport -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
export REGENT_DATABASE_URL="postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable"
export REGENT_BIN="$PWD/.build/debug/regent" REGENT_SCREENSHOTS="$PWD/.build/console-screenshots"
export REGENT_CHROMIUM="$chromium" REGENT_CHROMEDRIVER="$driver"
rm -rf "$REGENT_SCREENSHOTS"
"$REGENT_BIN" migrate --database-url "$REGENT_DATABASE_URL" >/dev/null
timeout --signal=TERM --kill-after=30 600 "$venv/bin/python" Tests/Browser/test_console.py
echo "screenshots: $REGENT_SCREENSHOTS"
