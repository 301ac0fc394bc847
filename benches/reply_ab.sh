#!/bin/bash
# A/B of the daemon replying before agent-exec has exited: /tmp/ab/{before,after} hold the
# release spawner, agent-exec and agent-compile of the two trees; each home has echo, run once.
# One client (benches/daemon_ab.py, 2000 runs), a fresh daemon per round and build, alternated.
set -e
for round in 1 2 3 4 5 6; do
  for b in before after; do
    H=/tmp/ab/home-$b; S=$H/ab.sock; rm -f $S
    /tmp/ab/$b/spawner --home $H serve --socket $S 2>/dev/null & D=$!
    while ! [ -S $S ]; do sleep 0.05; done; sleep 0.5
    echo "round $round $b: $(python3 /work/main/benches/daemon_ab.py $S 2000)"
    kill $D; wait $D 2>/dev/null || true
  done
done
