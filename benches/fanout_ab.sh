#!/bin/sh
# A 64-run fan-out against 64 runs one after another and against one run, side by side in
# one hyperfine invocation (medians). The parent is the testing agent's `fan-out`, its
# children the testing agent's `busy 0` (an answer of two clock readings), at [runs]
# parallel = 4. Needs `cargo xtask build-agents` and the dist binaries (`cargo xtask
# setup` or `cargo xtask bench`).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
spawner="$root/target/dist/spawner"
wasm="$root/agents/target/wasm32-wasip2/release/testing.wasm"
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
for agent in fan kid; do
    mkdir -p "$home/agents/$agent"
    cp "$wasm" "$home/agents/$agent/$agent.wasm"
done
printf 'name = "fan"\nversion = "0.1.0"\ncomponent = "fan.wasm"\n[limits]\ntimeout_ms = 60000\n[runs]\nagents = ["kid"]\nparallel = 4\nmax = 64\n' \
    > "$home/agents/fan/agent.toml"
printf 'name = "kid"\nversion = "0.1.0"\ncomponent = "kid.wasm"\n' > "$home/agents/kid/agent.toml"
# Compiles both (the cache is shared: same component) and makes the home private.
"$spawner" --home "$home" run fan fan-out kid 2 busy 0 > /dev/null
hyperfine --warmup 2 --runs "${RUNS:-20}" --export-json "$home/fanout.json" \
    "$spawner --home $home run kid busy 0" \
    "$spawner --home $home run fan fan-out kid 64 busy 0" \
    "for i in \$(seq 64); do $spawner --home $home run kid busy 0 > /dev/null; done"
python3 - "$home/fanout.json" <<'PY'
import json, sys
one, fan, seq = (r["median"] * 1000 for r in json.load(open(sys.argv[1]))["results"])
ideal = 64 / 4 * one
print(f"one run {one:.1f} ms; fan-out of 64 {fan:.1f} ms; 64 one after another {seq:.1f} ms")
print(f"fan-out / sequential {fan / seq:.2f}; ideal (64 / 4 x one run) {ideal:.1f} ms; fan-out / ideal {fan / ideal:.2f}")
PY
