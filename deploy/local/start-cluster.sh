#!/usr/bin/env bash
# Starts a private PostgreSQL and N regent nodes on this machine, in the background.
#   deploy/local/start-cluster.sh [N]      (default 3; state in ${REGENT_LOCAL_DIR:-/tmp/regent-local})
# Stop everything with deploy/local/stop-cluster.sh. Runs the server as the postgres user when root.
set -euo pipefail
cd "$(dirname "$0")/../.."
nodes="${1:-3}"
dir="${REGENT_LOCAL_DIR:-/tmp/regent-local}"
port="${REGENT_LOCAL_PORT:-54329}"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$bin/initdb" ] || { echo "no PostgreSQL server found: apt-get install -y postgresql" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$dir/logs"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  as_pg "$bin/initdb" -D "$dir/data" --no-sync --no-locale -E UTF8 -U postgres --auth=trust >/dev/null
fi
as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1 \
  -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=10000 \
  -c client_connection_check_interval=1000 -c max_connections=200" start >/dev/null
url="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
swift build --product regent >/dev/null
for i in $(seq 1 "$nodes"); do
  nohup .build/debug/regent serve --database-url "$url" --node-name "node$i" --http-address "127.0.0.1:$((8080 + i))" >"$dir/logs/node$i.log" 2>&1 &
  echo $! >"$dir/node$i.pid"
done
echo "PostgreSQL on 127.0.0.1:$port, $nodes nodes (logs in $dir/logs)"
echo "export REGENT_DATABASE_URL='$url'; .build/debug/regent status"
echo "admin API: http://127.0.0.1:8081 .. :$((8080 + nodes)) (token: .build/debug/regent tokens create --role admin --name me)"
