// node build.mjs <app.js> <wit dir> <out.wasm>: componentize-js, without the features
// whose imports the host does not provide (wasi:http).
import { componentize } from "@bytecodealliance/componentize-js";
import { readFile, writeFile } from "node:fs/promises";

const [source, wit, out] = process.argv.slice(2);
const { component } = await componentize(await readFile(source, "utf8"), {
  witPath: wit,
  worldName: "agent",
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
