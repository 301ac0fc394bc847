"""A misbehaving MCP stdio server for the tool tests' faults, written with the official
Python SDK (`mcp`, its MCPServer). Each tool misbehaves in one way a real server can:
it crashes mid-call, hangs, writes garbage on stdout, returns a huge result. Set
FAULTY_SLOW_START to a number of seconds to make it slow to start.
"""

import json
import os
import sys
import time

import anyio
from mcp.server.mcpserver import Context, MCPServer

if os.environ.get("FAULTY_SLOW_START"):
    time.sleep(float(os.environ["FAULTY_SLOW_START"]))

server = MCPServer("faulty")

# Where a durable run's call carries its idempotency key (broker_client::tools).
IDEMPOTENCY_KEY = "spawner/idempotency-key"


def idempotency_key(ctx: Context) -> str:
    """The call's idempotency key, or "" when it came without one."""
    return (ctx.request_context.meta or {}).get(IDEMPOTENCY_KEY, "")


calls = 0


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def pid() -> str:
    """This process's id and how many calls it has answered."""
    global calls
    calls += 1
    return f"{os.getpid()} {calls}"


@server.tool()
def crash() -> str:
    """Exit in the middle of the call."""
    os._exit(3)


@server.tool()
async def hang(seconds: float, mark: str = "") -> str:
    """Sleep for `seconds`, then answer. Creates the file `mark`, if given, when it starts
    sleeping, and `<mark>.cancelled` if the call is cancelled."""
    if mark:
        open(mark, "w").close()
    try:
        await anyio.sleep(seconds)
    except BaseException:
        if mark:
            open(mark + ".cancelled", "w").close()
        raise
    return f"slept {seconds}"


@server.tool()
def garbage() -> str:
    """Write lines that are not JSON-RPC on stdout, then answer."""
    sys.stdout.write("this is not json\n{\"half\": \n")
    sys.stdout.flush()
    return "answered after garbage"


@server.tool()
def big(megabytes: int) -> str:
    """A result of `megabytes` MB."""
    return "x" * (megabytes * 1024 * 1024)


@server.tool()
async def gate(mark: str, gate: str, ctx: Context) -> str:
    """Write the call's idempotency key to the file `mark`, then wait while the file
    `gate` exists."""
    with open(mark, "w") as f:
        f.write(idempotency_key(ctx))
    while os.path.exists(gate):
        await anyio.sleep(0.01)
    return "passed the gate"


@server.tool()
def record(path: str, line: str, ctx: Context) -> str:
    """Append `line` to the file `path` (and the call's idempotency key to `path`.keys);
    answer how many lines it has now, so that a call made twice answers otherwise the
    second time. When the file `path`.crash names this line, exit in the middle of the
    call instead: once (the file is removed), or every time if it says `always` too."""
    crash = path + ".crash"
    if os.path.exists(crash):
        with open(crash) as f:
            words = f.read().split()
        if " ".join(w for w in words if w != "always") == line:
            if "always" not in words:
                os.remove(crash)
            os._exit(3)
    with open(path, "a") as f:
        f.write(line + "\n")
    with open(path + ".keys", "a") as f:
        f.write(idempotency_key(ctx) + "\n")
    with open(path) as f:
        count = sum(1 for _ in f)
    return f"recorded {line} as line {count}"


@server.tool()
def where() -> str:
    """The working directory and the names of the environment's variables."""
    return json.dumps({"cwd": os.getcwd(), "env": sorted(os.environ)})


if __name__ == "__main__":
    server.run()
