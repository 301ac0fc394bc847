# CLIENTS connections at once (default 1), each sending N `run` requests of echo back to
# back over the daemon socket; prints p50/p95/p99/max of all latencies (the first 20 of each
# connection dropped) and the throughput. Used by benches/ab.md:
# python3 daemon_ab.py SOCKET N [CLIENTS]
import json, socket, sys, threading, time

sock_path, n = sys.argv[1], int(sys.argv[2])
clients = int(sys.argv[3]) if len(sys.argv) > 3 else 1
lat, lock = [], threading.Lock()

def client():
    s = socket.socket(socket.AF_UNIX); s.connect(sock_path); f = s.makefile('rb')
    mine = []
    for i in range(n):
        req = json.dumps({"jsonrpc": "2.0", "id": i, "method": "run",
                          "params": {"agent": "echo", "input": "hi"}}).encode() + b"\n"
        t = time.perf_counter(); s.sendall(req)
        while True:
            line = json.loads(f.readline())
            if "id" in line: break
        mine.append(time.perf_counter() - t)
        assert line.get("result", {}).get("output") == "hi", line
    with lock: lat.extend(mine[20:])

t0 = time.perf_counter()
threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.perf_counter() - t0
lat.sort(); m = len(lat)
if m < clients * (n - 20):
    sys.exit("a client failed: see its error above")
print("p50 %.2f ms p95 %.2f ms p99 %.2f ms max %.2f ms %.0f runs/s" % (
    lat[m // 2] * 1e3, lat[int(m * .95)] * 1e3, lat[int(m * .99)] * 1e3, lat[-1] * 1e3,
    clients * n / wall))
