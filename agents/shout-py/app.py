"""shout-py: a Python agent. It answers its input in capitals and counts its runs in its
memory (the host's `memory` interface), so each answer says how many came before.

Built with componentize-py from wit/agent.wit alone (`cargo xtask build-agents` does it):

    componentize-py -d wit -w agent componentize app -o shout_py.wasm
"""

import wit_world
from wit_world.imports import log, memory, types
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.Request) -> types.Response:
        try:
            text = request.input.decode("utf-8")
        except UnicodeDecodeError:
            raise Err(types.AgentError_InvalidInput("shout-py takes UTF-8 text"))
        count = int((memory.get("runs") or b"0").decode()) + 1
        memory.put("runs", str(count).encode())
        log.log(log.Level.INFO, f"run {count}")
        return types.Response(output=f"{text.upper()} (run {count})".encode())
