#!/usr/bin/env bash
# Stops the nodes (SIGTERM: each hands over and deletes its row) and the PostgreSQL of start-cluster.sh.
set -uo pipefail
dir="${REGENT_LOCAL_DIR:-/tmp/regent-local}"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
for f in "$dir"/node*.pid; do
  [ -f "$f" ] || continue
  kill -TERM "$(cat "$f")" 2>/dev/null
  rm -f "$f"
done
sleep 1
if [ -f "$dir/data/postmaster.pid" ]; then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
  else "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null; fi
fi
echo "stopped (data kept in $dir; rm -rf it to start afresh)"
