#!/usr/bin/env python3
"""Two builds of `spawner run <agent> <input>` side by side, alternated run by run.

    python3 benches/pair_ab.py A/spawner HOME_A B/spawner HOME_B [pairs] [agent] [input]

Each pair runs A then B, or B then A on every other pair, so that drift in the machine's
speed falls on both alike; each build gets its own home (a copy: their compiled caches
must not evict each other). Prints the medians, the ratio B/A and the p95s. Wall time of
a whole `spawner` process, from Python's fork to its exit: compare the ratio, not the
absolute figures, with hyperfine's.
"""

import statistics
import subprocess
import sys
import time


def main() -> None:
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    spawner_a, home_a, spawner_b, home_b = sys.argv[1:5]
    pairs = int(sys.argv[5]) if len(sys.argv) > 5 else 300
    agent = sys.argv[6] if len(sys.argv) > 6 else "echo"
    words = sys.argv[7:] or ["hi"]
    a = [spawner_a, "--home", home_a, "run", agent, *words]
    b = [spawner_b, "--home", home_b, "run", agent, *words]
    times: dict[str, list[float]] = {"A": [], "B": []}
    for _ in range(10):  # warm both caches and the page cache
        for cmd in (a, b):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    for i in range(pairs):
        order = (("A", a), ("B", b)) if i % 2 == 0 else (("B", b), ("A", a))
        for name, cmd in order:
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    p95 = {k: statistics.quantiles(v, n=20)[18] * 1e3 for k, v in times.items()}
    print(
        f"{pairs} pairs: A median {med['A']:.3f} ms (p95 {p95['A']:.2f}), "
        f"B median {med['B']:.3f} ms (p95 {p95['B']:.2f}), B/A {med['B'] / med['A']:.3f}"
    )


if __name__ == "__main__":
    main()
