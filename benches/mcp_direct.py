"""The yardstick of a tool call through the host: the same MCP server called directly by
the official Python SDK's client from one long-lived process. Starts the server, lists
its tools (timed: the server's cold start), then makes `calls` calls (each timed), and
prints the times as JSON.

    python mcp_direct.py <calls> <tool> <arguments JSON> <command> [args...]
"""

import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters, stdio_client


async def main():
    calls = int(sys.argv[1])
    tool = sys.argv[2]
    arguments = json.loads(sys.argv[3])
    # The environment the broker gives a server: PATH and the configured PYTHONPATH.
    env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ}
    server = StdioServerParameters(command=sys.argv[4], args=sys.argv[5:], env=env)
    started = time.perf_counter()
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()
            start_ms = (time.perf_counter() - started) * 1000
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                result = await session.call_tool(tool, arguments)
                times.append((time.perf_counter() - t) * 1000)
                if result.is_error:
                    raise SystemExit(f"the call failed: {result.content}")
    print(json.dumps({"start_ms": start_ms, "calls_ms": times}))


asyncio.run(main())
