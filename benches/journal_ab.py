# The journal's cost: the testing agent's `steps 10` (a memory read, 10 tool calls to a
# warm MCP server, tests/mcp/faulty_server.py's `record`, and a clock read) as a durable
# agent (`[durable] journal = true`) and as a plain one, alternated run by run, 60 runs
# each after 5 warm-up runs. Needs `cargo xtask test` to have built the binaries, the
# agents and target/tools/mcp-python. Used by benches/ab.md: python3 benches/journal_ab.py
import os, shutil, statistics, subprocess, time

from faulty_home import SPAWNER as spawner, install_testing, new_home

home = new_home("journal-ab-")
for name, journal in (("durable", "true"), ("plain", "false")):
    install_testing(home, name, journal)
calls = os.path.join(home, "calls.txt")
def run(agent):
    t = time.perf_counter()
    subprocess.run([spawner, "--home", home, "run", agent, f"steps 10 faulty {calls}"], check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000
try:
    for a in ("durable", "plain"):
        for _ in range(5): run(a)
    d, p = [], []
    for i in range(60):
        for a in (("durable", "plain") if i % 2 else ("plain", "durable")):
            (d if a == "durable" else p).append(run(a))
    md, mp = statistics.median(d), statistics.median(p)
    print(f"durable median {md:.2f} ms, plain {mp:.2f} ms: the journal adds {md - mp:.2f} ms "
          f"({100 * (md - mp) / md:.1f}% of the durable run), {(md - mp) / 11 * 1000:.0f} us per write (10 tool calls + the run's end)")
finally:
    # The home's broker (and its server) go with it.
    subprocess.run(["pkill", "-TERM", "-f", f"gpu-broker --home {home}"])
    shutil.rmtree(home, ignore_errors=True)
