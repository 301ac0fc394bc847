#!/bin/bash
# A/B of the run log's import pruning once per agent instead of once per record:
# /work/ab/{before,after} hold the dist spawner and agent-exec of the two trees; each round
# copies the benchmark's home (echo compiled, run log empty) afresh for each build, starts a
# daemon, and runs 8 clients x 500 runs of echo (about 8 imports of the run log), alternated.
set -e
HOME_SRC=${HOME_SRC:-/work/main/benches/results/home}
for round in 1 2 3; do
  for b in before after; do
    H=/work/ab/home-$b; rm -rf $H; cp -r $HOME_SRC $H; S=$H/ab.sock
    /work/ab/$b/spawner --home $H serve --socket $S 2>/dev/null & D=$!
    while ! [ -S $S ]; do sleep 0.05; done; sleep 0.5
    echo "round $round $b: $(python3 /work/main/benches/daemon_ab.py $S 500 8)"
    kill $D; wait $D 2>/dev/null || true
  done
done
