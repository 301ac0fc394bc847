# A home for the durable-run benchmarks (journal_ab.py, resume_ab.py): the faulty MCP server
# (tests/mcp/faulty_server.py) as the home's `faulty` tool server, and the testing agent
# installed under any name with `[tools] servers = ["faulty"]`. Needs `cargo xtask test` to
# have built the binaries, the agents and target/tools/mcp-python.
import os, shutil, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPAWNER = os.path.join(ROOT, "target/release/spawner")
TESTING_WASM = os.path.join(ROOT, "agents/target/wasm32-wasip2/release/testing.wasm")


def new_home(prefix):
    """A fresh home in a temp dir, with the faulty server configured."""
    home = tempfile.mkdtemp(prefix=prefix)
    with open(os.path.join(home, "tools.toml"), "w") as f:
        f.write('[[server]]\nname = "faulty"\ncommand = "python3"\nargs = [%r]\nenv = { PYTHONPATH = %r }\n'
                % (os.path.join(ROOT, "tests/mcp/faulty_server.py"), os.path.join(ROOT, "target/tools/mcp-python")))
    return home


def install_testing(home, name, journal):
    """The testing agent as `name`, using the faulty server, `[durable] journal = journal`."""
    d = os.path.join(home, "agents", name)
    os.makedirs(d)
    shutil.copy(TESTING_WASM, os.path.join(d, name + ".wasm"))
    with open(os.path.join(d, "agent.toml"), "w") as f:
        f.write(f'name = "{name}"\nversion = "0.1.0"\ncomponent = "{name}.wasm"\n[limits]\ntimeout_ms = 60000\n'
                f'[tools]\nservers = ["faulty"]\n[durable]\njournal = {journal}\n')
