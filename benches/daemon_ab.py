# One client, one connection: N `run` requests of echo back to back over the daemon socket;
# prints p50/p95/p99 of the last N-20. Used by benches/ab.md: python3 daemon_ab.py SOCKET N
import socket, json, time, sys
sock_path, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX); s.connect(sock_path); f = s.makefile('rb')
lat = []
for i in range(n):
    req = json.dumps({"jsonrpc":"2.0","id":i,"method":"run","params":{"agent":"echo","input":"hi"}}).encode()+b"\n"
    t = time.perf_counter(); s.sendall(req)
    while True:
        line = json.loads(f.readline())
        if "id" in line: break
    lat.append(time.perf_counter()-t)
    assert line.get("result",{}).get("output") == "hi", line
lat = sorted(lat[20:]); m = len(lat)
print("p50 %.2f ms p95 %.2f ms p99 %.2f" % (lat[m//2]*1e3, lat[int(m*.95)]*1e3, lat[int(m*.99)]*1e3))
