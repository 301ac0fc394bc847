// shout-js: a JavaScript agent. It answers its input in capitals and counts its runs in
// its memory (the host's `memory` interface), as shout-py does in Python.
//
// Built with componentize-js from wit/agent.wit alone (`cargo xtask build-agents` does it,
// with build.mjs): its default output imports wasi:http, which the host does not provide,
// so the build disables the `http` and `fetch-event` features.

import { get, put } from "spawner:agent/memory@0.2.4";
import { log } from "spawner:agent/log@0.2.4";

export function handle(request) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(request.input);
  } catch {
    // A `result` error is thrown as its variant: { tag, val }.
    throw { tag: "invalid-input", val: "shout-js takes UTF-8 text" };
  }
  const count = Number(new TextDecoder().decode(get("runs") ?? new Uint8Array())) + 1;
  put("runs", new TextEncoder().encode(String(count)));
  log("info", `run ${count}`);
  return { output: new TextEncoder().encode(`${text.toUpperCase()} (run ${count})`) };
}
