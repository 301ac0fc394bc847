#!/bin/bash
# Builds of the daemon side by side: for each round, for each build, a fresh
# `spawner serve` of that build on its own home, then CLIENTS connections sending RUNS `run`
# requests of echo each (benches/daemon_ab.py: p50/p95/p99/max, first 20 of each dropped,
# and the throughput).
#   bash benches/daemon_builds.sh ROUNDS RUNS CLIENTS NAME=BIN_DIR:HOME ...
# BIN_DIR holds the build's spawner, agent-exec and agent-compile; each HOME has echo
# installed and run once (compiled).
set -e
rounds=$1; runs=$2; clients=$3; shift 3
here=$(cd "$(dirname "$0")" && pwd)
for round in $(seq "$rounds"); do
  for build in "$@"; do
    name=${build%%=*}; rest=${build#*=}; bin=${rest%%:*}; home=${rest#*:}
    sock=$home/ab.sock; rm -f "$sock"
    "$bin/spawner" --home "$home" serve --socket "$sock" 2>/dev/null & daemon=$!
    while ! [ -S "$sock" ]; do sleep 0.05; done; sleep 0.5
    echo "round $round $name: $(python3 "$here/daemon_ab.py" "$sock" "$runs" "$clients")"
    kill $daemon; wait $daemon 2>/dev/null || true
  done
done
