//! Shared test harness: a temp home with agents installed, and the real binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use memory_store::Store;

/// The project root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is one level below the root")
        .to_owned()
}

/// The host workspace's target directory (`$CARGO_TARGET_DIR`, else `<root>/target`),
/// where `cargo xtask test` puts the model and the test servers it installs.
pub fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A binary built by `cargo build --release`: next to this test binary's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask test` (it builds the binaries before testing)",
        path.display()
    );
    path
}

/// A built agent component.
pub fn wasm(agent: &str) -> PathBuf {
    let path = root()
        .join("agents/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", agent.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-agents`",
        path.display()
    );
    path
}

/// A home directory in a temp dir. When it is dropped at the end of a test that passed,
/// every run it holds that journaled and finished ok is replayed, and must answer the
/// same from its journal alone ([`TestHome::replay_every_run`]): so every durable run the
/// suite makes, fresh, resumed, retried, in a fan-out or through the daemon, is replayed.
pub struct TestHome {
    dir: tempfile::TempDir,
    /// Set by [`TestHome::leave_unreplayed`].
    unreplayed: std::cell::Cell<Option<&'static str>>,
    /// Set by [`TestHome::run_on`].
    machine: std::cell::Cell<Option<crate::network::Entry>>,
}

impl TestHome {
    /// An empty home.
    pub fn new() -> TestHome {
        TestHome {
            dir: tempfile::tempdir().expect("tempdir"),
            unreplayed: std::cell::Cell::new(None),
            machine: std::cell::Cell::new(None),
        }
    }

    /// Run this home's spawner commands on the machine side of a test network, from now
    /// on: what they start (agent-exec, the broker) is there too. The network must outlive
    /// the home.
    pub fn run_on(&self, machine: crate::network::Entry) {
        self.machine.set(Some(machine));
    }

    /// Do not replay this home's runs when it is dropped, because `why` (a test that
    /// changes a journal or a component on purpose).
    pub fn leave_unreplayed(&self, why: &'static str) {
        self.unreplayed.set(Some(why));
    }

    /// Replay every run in this home that journaled and finished ok: each must answer the
    /// same from its journal alone. Returns how many were.
    pub fn replay_every_run(&self) -> usize {
        let store = self.store();
        let mut stmt = store
            .connection()
            .prepare(
                "SELECT run_id FROM runs WHERE status = 'ok' AND EXISTS
                 (SELECT 1 FROM journal j WHERE j.run_id = runs.run_id AND j.kind = 'component')
                 ORDER BY run_id",
            )
            .expect("query");
        let runs: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .expect("runs")
            .collect::<Result<_, _>>()
            .expect("runs");
        drop(stmt);
        drop(store);
        for run_id in &runs {
            let replay = self.run(&["runs", "replay", run_id]);
            assert_eq!(
                code(&replay),
                0,
                "replay of run {run_id}: {}",
                stderr(&replay)
            );
            assert!(stdout(&replay).contains("matches"), "{}", stdout(&replay));
        }
        runs.len()
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's directory.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.path().join("agents").join(name)
    }

    /// Install an example agent with the manifest from `agents/<name>/agent.toml`.
    pub fn install_example(&self, name: &str) {
        let manifest = std::fs::read_to_string(root().join("agents").join(name).join("agent.toml"))
            .expect("example manifest");
        self.install(name, name, &manifest);
    }

    /// Install component `component_of` as agent `name` with `manifest` as its agent.toml.
    /// The component is copied to `<name>.wasm`.
    pub fn install(&self, name: &str, component_of: &str, manifest: &str) {
        let dir = self.agent_dir(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::copy(wasm(component_of), dir.join(format!("{name}.wasm"))).expect("copy");
        self.write_manifest(name, manifest);
    }

    /// Replace an agent's agent.toml.
    pub fn write_manifest(&self, name: &str, manifest: &str) {
        std::fs::write(self.agent_dir(name).join("agent.toml"), manifest).expect("write");
    }

    /// Install the `testing` agent as `name`, with extra manifest text appended.
    pub fn install_testing(&self, name: &str, extra: &str) {
        self.install(
            name,
            "testing",
            &format!(
                "name = \"{name}\"\nversion = \"0.1.0\"\ncomponent = \"{name}.wasm\"\n{extra}"
            ),
        );
    }

    /// Compile the agent installed as `name` into the compiled cache (`agent-compile`, the
    /// step the spawner takes on a request's cache miss), so that a test
    /// about something else starts from a warm cache: its first run is then a plain run.
    pub fn precompile(&self, name: &str) {
        let out = Command::new(bin("agent-compile"))
            .arg(self.path())
            .arg(name)
            .stdin(Stdio::null())
            .output()
            .expect("agent-compile runs");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }

    /// `program`, run on the machine of [`TestHome::run_on`] if set, else here.
    pub fn program(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.machine.get() {
            Some(machine) => machine.command(program),
            None => Command::new(program),
        }
    }

    /// `spawner --home <home> <args>`, with standard input closed (on the machine of
    /// [`TestHome::run_on`], if set).
    pub fn spawner(&self, args: &[&str]) -> Command {
        let mut cmd = self.program(bin("spawner"));
        cmd.arg("--home")
            .arg(self.path())
            .args(args)
            .stdin(Stdio::null())
            .env_remove("SPAWNER_HOME")
            .env_remove("SPAWNER_LOG");
        cmd
    }

    /// Run `spawner --home <home> <args>` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.spawner(args).output().expect("spawner runs")
    }

    /// Run `spawner --home <home> <args>` with `input` on its standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .spawner(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawner starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write input");
        child.wait_with_output().expect("spawner ends")
    }

    /// Open the memory store.
    pub fn store(&self) -> Store {
        Store::open(&self.path().join("memory.db")).expect("store opens")
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        let passed = !std::thread::panicking();
        if passed
            && self.unreplayed.get().is_none()
            && Store::exists(&self.path().join("memory.db"))
        {
            self.replay_every_run();
        }
    }
}

/// The single integer `sql` (a `SELECT count(*) ...`) yields on `store`.
pub fn count(store: &Store, sql: &str) -> i64 {
    store
        .connection()
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code (panics when killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {o:?}"))
}

/// The exit code of an outcome.
pub fn exit_of(outcome: agent_contract::Outcome) -> i32 {
    i32::from(outcome.exit_code())
}

/// The one JSON report a `--json` run printed.
pub fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON report ({e}): {}", stdout(o)))
}

/// Start `agent-exec` directly on an envelope for `agent` with `input`; standard error is
/// piped so tests can wait for log lines.
pub fn start_agent_exec(
    home: &TestHome,
    agent: &str,
    input: &str,
    log_level: &str,
) -> std::process::Child {
    start_agent_exec_with(home, agent, input, |h| {
        h.log_level = Some(log_level.into());
    })
}

/// [`start_agent_exec`] with the envelope's header as `change` leaves it.
pub fn start_agent_exec_with(
    home: &TestHome,
    agent: &str,
    input: &str,
    change: impl FnOnce(&mut agent_contract::RequestHeader),
) -> std::process::Child {
    use agent_contract::envelope::{ENVELOPE_VERSION, write_envelope};
    use agent_contract::{LogFormat, OutputFormat, RequestHeader};
    use std::io::Write;

    let mut header = RequestHeader {
        v: ENVELOPE_VERSION,
        run_id: format!("direct-{}", std::process::id()),
        agent: agent.into(),
        home: home.path().to_owned(),
        timeout_ms: None,
        output: OutputFormat::Raw,
        log_format: LogFormat::Json,
        log_level: None,
        spawned_at_unix_ns: None,
        work_dir: None,
        hook: None,
        compile: Default::default(),
        stream_llm: false,
        broker: None,
        journal: Default::default(),
        attempt: 1,
        sub_runs: None,
        parent_run_id: None,
        marked: false,
    };
    change(&mut header);
    let mut envelope = Vec::new();
    write_envelope(&mut envelope, &header, input.as_bytes()).expect("envelope");
    let mut child = Command::new(bin("agent-exec"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent-exec starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&envelope)
        .expect("write envelope");
    child
}

/// Read `reader` line by line until a line contains `needle`; false at end of stream.
pub fn wait_for_line(reader: impl std::io::Read, needle: &str) -> bool {
    use std::io::BufRead;
    std::io::BufReader::new(reader)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains(needle))
}

/// Field `n` (from 0: the state) of `/proc/<pid>/stat` after the command's name.
pub fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(n)
        .map(str::to_owned)
}

/// Pids of the processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_field(*pid, 1).and_then(|p| p.parse().ok()) == Some(parent))
        .collect()
}

/// Wait until `f` holds, polling; fails after a minute (a hang, not a slow machine).
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's resident set size, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

/// Stop the broker answering at `socket`, if one does (a test's broker would otherwise wait
/// out its idle TTL holding its models); its pid.
pub fn stop_broker_at(socket: &Path) -> Option<u32> {
    let mut client = broker_client::Client::connect(socket).ok()?;
    let pid = u32::try_from(client.status().ok()?["pid"].as_u64()?).ok()?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    Some(pid)
}

/// [`stop_broker_at`], then wait until that broker has exited (gone, or a zombie), so that
/// the next run that needs a broker starts a new one.
pub fn stop_broker_and_wait(socket: &Path) {
    if let Some(pid) = stop_broker_at(socket) {
        wait_until("the broker has exited", || {
            stat_field(pid, 0).is_none_or(|state| state == "Z")
        });
    }
}
