#!/usr/bin/env bash
# Makes sure what Regent builds and tests against is installed: libpq-dev, pkg-config
# and the PostgreSQL server. As root it installs missing Debian packages; otherwise it
# says what to install and fails.
set -euo pipefail
missing=()
dpkg -s libpq-dev >/dev/null 2>&1 || missing+=(libpq-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# openssl makes the test certificates of the TLS tests (a throwaway CA, generated per run).
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
# Optional: PgBouncer for the pooler tests (they skip with a printed reason without it).
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: pgbouncer (for the pooler tests)" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null; }; } \
      || echo "pgbouncer could not be installed; the pooler tests will be skipped" >&2
    # The package enables a system service on port 6432 we do not use.
    { systemctl disable --now pgbouncer >/dev/null 2>&1 || service pgbouncer stop >/dev/null 2>&1; } || true
  else
    echo "pgbouncer is not installed; the pooler tests will be skipped (sudo apt-get install -y pgbouncer)" >&2
  fi
fi
# CI (REGENT_REQUIRE_TOOLS=1, set by .ci/run) must run every test: a pooler it could not
# install is a failure, not a skip.
if [ "${REGENT_REQUIRE_TOOLS:-0}" = 1 ] && ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "FAILED: pgbouncer is required (REGENT_REQUIRE_TOOLS=1) and could not be installed" >&2
  exit 1
fi
# Optional: Chromium and its driver for the console's browser tests (scripts/console-test.sh,
# which skips with a printed reason without them, or fails under REGENT_REQUIRE_TOOLS=1).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: chromium chromium-driver (for the console's browser tests)" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }; } \
      || echo "chromium could not be installed; the console's browser tests will be skipped" >&2
  else
    echo "chromium is not installed; the console's browser tests will be skipped (sudo apt-get install -y chromium chromium-driver)" >&2
  fi
fi
command -v swift >/dev/null 2>&1 || { echo "swift is not on PATH (expected /opt/swift/usr/bin)" >&2; exit 1; }
