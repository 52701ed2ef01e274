#!/bin/bash
# A/B of `regent bench runs` between two regent binaries on one PostgreSQL server: ROUNDS
# rounds, A then B (B then A with ORDER=ba), each run in a database of its own made for it;
# prints each round's figures, the per-round ratios B/A of the steps rate and of the raw lease
# cycle (the control: the same plain claims and completions in both builds), and their medians.
# On a noisy machine quote the medians of many rounds, never one round.
#
# usage: scripts/bench-ab.sh BIN_A BIN_B [ROUNDS=6] [RUNS=2000] [WORKERS=16]
#   PGURL   the server, without a database (default postgres://postgres@127.0.0.1:5432)
#   A_ARGS  extra flags for A's bench runs, B_ARGS for B's (an older binary knows fewer; the
#           default skips the timer, sleeper and keyed phases where a binary has them)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BIN_A BIN_B [ROUNDS] [RUNS] [WORKERS]" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-6} runs=${4:-2000} workers=${5:-16}
url=${PGURL:-postgres://postgres@127.0.0.1:5432}
for bin in "$a" "$b"; do [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }; done
[[ $rounds =~ ^[1-9][0-9]?$ && $runs =~ ^[1-9][0-9]*$ && $workers =~ ^[1-9][0-9]?$ ]] || { echo "ROUNDS, RUNS and WORKERS are whole numbers" >&2; exit 2; }
defaults() { if "$1" bench runs --help 2>&1 | grep -q -- --run-keys; then echo "--timers 0 --sleepers 0 --run-keys 0"; fi; }
a_args=${A_ARGS-$(defaults "$a")} b_args=${B_ARGS-$(defaults "$b")}
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
one() { # name binary args round
    local db="regent_ab_$1_$4_$$"
    psql "$url/postgres" -qtA -c "CREATE DATABASE $db" >/dev/null
    # shellcheck disable=SC2086
    "$2" bench runs --runs "$runs" --workers "$workers" --samples 20 --database-url "$url/$db" --json $3 > "$out/$1_$4.json" 2>"$out/$1_$4.err" \
        || { echo "$1 round $4 failed:" >&2; tail -3 "$out/$1_$4.err" >&2; }
    psql "$url/postgres" -qtA -c "DROP DATABASE $db" >/dev/null
}
for i in $(seq 1 "$rounds"); do
    if [ "${ORDER:-ab}" = ba ]; then one b "$b" "$b_args" "$i"; one a "$a" "$a_args" "$i"; else one a "$a" "$a_args" "$i"; one b "$b" "$b_args" "$i"; fi
done
python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
steps, raw = [], []
for i in range(1, rounds + 1):
    try:
        a, b = (json.load(open(f"{out}/{n}_{i}.json")) for n in "ab")
    except (OSError, ValueError):
        print(f"round {i}: a bench failed, left out"); continue
    steps.append(b["steps_per_s"] / a["steps_per_s"]); raw.append(b["raw_lease_cycles_per_s"] / a["raw_lease_cycles_per_s"])
    print(f"round {i}: A steps/s {a['steps_per_s']:.0f} raw {a['raw_lease_cycles_per_s']:.0f} | "
          f"B steps/s {b['steps_per_s']:.0f} raw {b['raw_lease_cycles_per_s']:.0f} | B/A steps {steps[-1]:.3f} raw {raw[-1]:.3f}")
if steps:
    print(f"median B/A over {len(steps)} rounds: steps {statistics.median(steps):.3f}, raw lease cycle {statistics.median(raw):.3f}")
EOF
