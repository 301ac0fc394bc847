# Resume latency: the testing agent's `steps 10` (a memory read, 10 `record` calls to a warm
# MCP server, tests/mcp/faulty_server.py, and a clock read) as a durable agent, three ways,
# alternated round by round, 30 rounds after 3 warm-up rounds, medians:
#   fresh   a new run, every step live;
#   resume  `spawner runs resume` of a run whose agent-exec was SIGKILLed once the server
#           had recorded its 5th call: the journaled steps are served from the journal, the
#           rest run live (the calls the server saw are counted; on a loaded machine the
#           kill may land a step or two later);
#   replay  `spawner runs replay` of a finished run: every step from the journal, the answer
#           checked byte for byte.
# Needs `cargo xtask test` to have built the binaries, the agents and target/tools/mcp-python.
# Used by benches/ab.md: python3 benches/resume_ab.py
import json, os, shutil, signal, statistics, subprocess, time

from faulty_home import SPAWNER as spawner, install_testing, new_home

home = new_home("resume-ab-")
install_testing(home, "steps", "true")

def spawner_cmd(*args):
    return [spawner, "--home", home, *args]

def timed(*args):
    t = time.perf_counter()
    out = subprocess.run(spawner_cmd(*args), capture_output=True)
    ms = (time.perf_counter() - t) * 1000
    if out.returncode != 0:
        raise SystemExit(f"spawner {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}")
    return ms, out.stdout

def lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0

def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found

def killed_run(n):
    """A run killed once the server recorded its 5th call: its id and its calls file."""
    calls = os.path.join(home, f"calls-{n}.txt")
    p = subprocess.Popen(spawner_cmd("run", "steps", f"steps 10 faulty {calls}"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # agent-exec found first, so that the kill follows the 5th call at once.
    execs = []
    while not execs:
        execs = children(p.pid)
    while lines(calls) < 5:
        time.sleep(0.0002)
    for pid in execs:
        os.kill(pid, signal.SIGKILL)
    p.wait()
    listed = subprocess.run(spawner_cmd("runs", "--json", "--limit", "1"), check=True,
                            capture_output=True, text=True).stdout
    return json.loads(listed.splitlines()[0])["run_id"], calls

try:
    fresh, resume, replay, redone = [], [], [], []
    for n in range(33):
        ms_fresh, out = timed("run", "steps", "--json", f"steps 10 faulty {home}/fresh-{n}.txt")
        finished = json.loads(out)["run_id"]
        run_id, calls = killed_run(n)
        before = lines(calls)
        ms_resume, _ = timed("runs", "resume", run_id)
        after = lines(calls)
        ms_replay, _ = timed("runs", "replay", finished)
        if n >= 3:
            fresh.append(ms_fresh); resume.append(ms_resume); replay.append(ms_replay)
            redone.append(after - before)
    mf, mr, mp = (statistics.median(x) for x in (fresh, resume, replay))
    print(f"fresh run median {mf:.2f} ms; resume after 5 of 10 calls {mr:.2f} ms ({mr / mf:.2f}x), "
          f"live calls in the resume: median {statistics.median(redone):.0f} (min {min(redone)}, max {max(redone)}); "
          f"replay of a finished run {mp:.2f} ms ({mp / mf:.2f}x); {len(fresh)} rounds")
finally:
    subprocess.run(["pkill", "-TERM", "-f", f"gpu-broker --home {home}"])
    shutil.rmtree(home, ignore_errors=True)
