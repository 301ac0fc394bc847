//! `spawner serve`: the real daemon on a real socket, real agent-exec runs, and clients
//! that misbehave.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use agent_contract::Outcome;

use crate::harness::{TestHome, bin, code, exit_of, rss_kib, stderr, stdout, wait_until};

/// A daemon started on a socket in its own temp dir; killed on drop.
pub(crate) struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub(crate) fn start(home: &TestHome, extra: &[&str]) -> Daemon {
        Self::start_under(home, None, extra)
    }

    /// `start`, with the daemon run by `wrapper` (e.g. `prlimit --nofile=...`), which must
    /// exec it.
    fn start_under(home: &TestHome, wrapper: Option<Command>, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run").join("s.sock");
        let child = Self::command(home, &socket, wrapper, extra)
            .spawn()
            .expect("spawner serve starts");
        let daemon = Daemon {
            child,
            socket,
            _dir: dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn spawn(home: &TestHome, socket: &Path, extra: &[&str]) -> Child {
        Self::command(home, socket, None, extra)
            .spawn()
            .expect("spawner serve starts")
    }

    fn command(
        home: &TestHome,
        socket: &Path,
        wrapper: Option<Command>,
        extra: &[&str],
    ) -> Command {
        let mut cmd = match wrapper {
            Some(mut wrapper) => {
                wrapper.arg(bin("spawner"));
                wrapper
            }
            None => home.program(bin("spawner")),
        };
        cmd.arg("--home")
            .arg(home.path())
            .args(["serve", "--socket"])
            .arg(socket)
            .args(["--grace", "3s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("SERVE_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::piped()
            });
        cmd
    }

    /// Wait until the daemon answers `health` (a handshake, not a sleep).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = Client::connect(&self.socket)
                && c.call("health", json!({})).get("result").is_some()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon did not become ready on {}", self.socket.display());
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    /// Send SIGTERM and wait for the exit; returns (exit code, stderr).
    fn terminate(mut self) -> (i32, String) {
        signal(self.pid(), "TERM");
        let status = self.child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A JSON-RPC client over one connection.
pub(crate) struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Client {
    fn connect(socket: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client {
            stream,
            reader,
            next_id: 0,
        })
    }

    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Send, but to a daemon that may refuse the connection and close it before reading
    /// (its `busy` answer is then already waiting to be read): a failed write is no error.
    fn send_maybe_refused(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The next line from the daemon, as JSON; `None` at end of stream.
    pub(crate) fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("the daemon sends JSON lines")),
        }
    }

    /// Send a request and return its response (skipping notifications).
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            .to_string()
            .into_bytes();
        line.push(b'\n');
        self.send_raw(&line);
        loop {
            let answer = self.read().expect("an answer");
            if answer.get("id") == Some(&json!(id)) {
                return answer;
            }
        }
    }

    pub(crate) fn result(&mut self, method: &str, params: Value) -> Value {
        let answer = self.call(method, params);
        answer
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{method} failed: {answer}"))
    }

    fn error_code(&mut self, method: &str, params: Value) -> i64 {
        let answer = self.call(method, params);
        answer["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{method} did not fail: {answer}"))
    }
}

/// Pids of `pid`'s live or zombie children.
fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let after = stat.rsplit(')').next().unwrap_or("");
        let mut fields = after.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((child, state));
        }
    }
    out
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

#[test]
fn every_method_answers_over_the_socket() {
    let home = TestHome::new();
    home.install_example("echo");
    home.install_example("command-guard");
    let daemon = Daemon::start(&home, &[]);
    let mut c = daemon.client();

    let run = c.result("run", json!({"agent": "echo", "input": "hello daemon"}));
    assert_eq!(run["status"], "ok");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["output"], "hello daemon");
    assert!(run["timings"]["handler_us"].is_u64(), "{run}");
    let run_id = run["run_id"].as_str().expect("run id").to_owned();

    let rejected = c.result(
        "run",
        json!({"agent": "command-guard", "input": "rm -rf /"}),
    );
    assert_eq!(
        (rejected["status"].as_str(), rejected["exit_code"].as_u64()),
        (Some("rejected"), Some(7))
    );

    let agents = c.result("agents.list", json!({}));
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["command-guard", "echo"]);
    let described = c.result("agents.describe", json!({"agent": "command-guard"}));
    assert_eq!(described["status"], "ok");
    assert_eq!(described["limits"]["timeout_ms"], 2000);
    assert!(
        described["config"]["deny"]
            .as_str()
            .expect("deny")
            .contains("git push --force")
    );

    let runs = c.result("runs.list", json!({"agent": "echo"}));
    assert_eq!(runs["runs"][0]["run_id"], run_id.as_str());
    let got = c.result("runs.get", json!({"run_id": run_id}));
    assert_eq!(got["run"]["status"], "ok");
    assert_eq!(c.error_code("runs.get", json!({"run_id": "nope"})), -32005);

    let health = c.result("health", json!({}));
    assert_eq!(health["status"], "ok");
    assert_eq!(health["pid"], daemon.pid());
    let caps = c.result("capabilities", json!({}));
    assert!(caps["cpus"].as_u64().expect("cpus") >= 1);
    assert!(caps["memory_total_bytes"].as_u64().expect("memory") > 0);
    assert_eq!(caps["broker"]["status"], "not running");
    assert_eq!(caps["runnable_agents"], json!(["command-guard", "echo"]));

    let metrics = c.result("metrics", json!({}));
    let text = metrics["text"].as_str().expect("text");
    assert!(
        text.contains("spawner_runs_total{status=\"ok\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("spawner_runs_total{status=\"rejected\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("spawner_run_duration_seconds_count 2\n"),
        "{text}"
    );
    assert!(
        text.contains("spawner_cold_start_seconds_count 2\n"),
        "{text}"
    );
    assert!(text.contains("spawner_runs_in_flight 0\n"), "{text}");
}

#[test]
fn bad_requests_get_the_right_errors_and_the_daemon_keeps_serving() {
    let home = TestHome::new();
    home.install_example("echo");
    let daemon = Daemon::start(&home, &["--client-timeout", "2s"]);
    let mut c = daemon.client();
    let mut raw = |bytes: &[u8]| -> Value {
        c.send_raw(bytes);
        c.read().expect("an answer")
    };
    assert_eq!(raw(b"{not json\n")["error"]["code"], -32700);
    // JSON-RPC 2.0 batches: an array of answers, in order; none for notifications.
    let batch = raw(b"[1,2]\n");
    assert_eq!(batch.as_array().map(Vec::len), Some(2), "{batch}");
    assert!(
        batch
            .as_array()
            .expect("array")
            .iter()
            .all(|a| a["error"]["code"] == -32600 && a["id"].is_null())
    );
    let batch = raw(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\"},\
        {\"jsonrpc\":\"2.0\",\"method\":\"health\"},\
        {\"jsonrpc\":\"2.0\",\"id\":\"b\",\"method\":\"nope\"}]\n");
    assert_eq!(batch[0]["id"], 1, "{batch}");
    assert_eq!(batch[0]["result"]["status"], "ok", "{batch}");
    assert_eq!(
        (batch[1]["id"].as_str(), batch[1]["error"]["code"].as_i64()),
        (Some("b"), Some(-32601))
    );
    assert_eq!(
        batch.as_array().map(Vec::len),
        Some(2),
        "the notification got no answer"
    );
    assert_eq!(
        raw(b"[]\n")["error"]["code"],
        -32600,
        "an empty batch is invalid"
    );
    // A batch of notifications only gets no answer: the next line is the next request's.
    let mut other = daemon.client();
    other.send_raw(b"[{\"jsonrpc\":\"2.0\",\"method\":\"health\"}]\n");
    assert_eq!(other.call("health", json!({}))["result"]["status"], "ok");
    // An id that is an object, an array or a boolean is answered with id null.
    for bad_id in ["{\"a\":1}", "[7]", "true"] {
        let answer = raw(format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{bad_id},\"method\":\"health\"}}\n"
        )
        .as_bytes());
        assert_eq!(
            (answer["id"].is_null(), answer["error"]["code"].as_i64()),
            (true, Some(-32600)),
            "{bad_id}: {answer}"
        );
    }
    // Positional params are invalid params, with the request's id.
    let answer = raw(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"health\",\"params\":[1]}\n");
    assert_eq!(
        (answer["id"].as_i64(), answer["error"]["code"].as_i64()),
        (Some(9), Some(-32602))
    );
    assert_eq!(
        raw(b"{\"id\":1,\"method\":\"health\"}\n")["error"]["code"],
        -32600
    );
    let answer = raw(b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"reboot\"}\n");
    assert_eq!(
        (answer["id"].as_str(), answer["error"]["code"].as_i64()),
        (Some("x"), Some(-32601))
    );
    // A notification (no id) gets no answer: the next line is the next request's.
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"health\"}\n");
    assert_eq!(c.call("health", json!({}))["result"]["status"], "ok");

    assert_eq!(c.error_code("run", json!({"agent": 5})), -32602);
    assert_eq!(
        c.error_code("run", json!({"agent": "echo", "colour": "red"})),
        -32602
    );
    assert_eq!(
        c.error_code(
            "run",
            json!({"agent": "echo", "input": "a", "input_base64": "YQ=="})
        ),
        -32602
    );
    let missing = c.call("run", json!({"agent": "nosuch"}));
    assert_eq!(missing["error"]["code"], -32000);
    assert_eq!(missing["error"]["data"]["status"], "not_found");
    assert_eq!(missing["error"]["data"]["exit_code"], 3);
    let traversal = c.call("run", json!({"agent": "../etc"}));
    assert_eq!(traversal["error"]["data"]["status"], "usage_error");

    // A line over the limit is refused, and the same connection goes on.
    let mut huge = vec![b'x'; 25 * 1024 * 1024];
    huge.push(b'\n');
    c.send_raw(&huge);
    assert_eq!(c.read().expect("answer")["error"]["code"], -32002);
    assert_eq!(
        c.result("run", json!({"agent": "echo", "input": "still here"}))["output"],
        "still here"
    );

    // A client that sends half a line and stalls holds nobody up, and is dropped after
    // the client timeout (2 s here).
    let mut stalled = daemon.client();
    stalled.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth");
    let mut other = daemon.client();
    assert_eq!(
        other.result("run", json!({"agent": "echo", "input": "other"}))["output"],
        "other"
    );
    let started = Instant::now();
    let answer = stalled.read().expect("the stalled connection is told why");
    assert_eq!(answer["error"]["code"], -32006, "{answer}");
    assert!(stalled.read().is_none(), "the stalled connection is closed");
    assert!(started.elapsed() < Duration::from_secs(10));
    // (`other` idled as long, so it was closed too; a new connection is served.)
    assert_eq!(daemon.client().result("health", json!({}))["status"], "ok");
}

#[test]
fn crashing_hanging_and_hoarding_agents_end_with_their_status() {
    let home = TestHome::new();
    home.install_example("echo");
    home.install_testing("testing", "[limits]\ntimeout_ms = 400\nmemory_mb = 32\n");
    home.precompile("testing");
    // No spares, so that every child of the daemon is a run's.
    let daemon = Daemon::start(&home, &["--spares", "0"]);
    let socket = daemon.socket.clone();
    let statuses: Vec<String> = ["panic", "loop", "alloc"]
        .into_iter()
        .map(|fault| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                c.result("run", json!({"agent": "testing", "input": fault}))["status"]
                    .as_str()
                    .expect("status")
                    .to_owned()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    assert_eq!(statuses, ["trap", "timeout", "memory_limit"]);
    let mut c = daemon.client();
    assert_eq!(
        c.result("run", json!({"agent": "echo", "input": "fine"}))["output"],
        "fine"
    );
    // The last run's agent-exec answered before it exited, and is reaped in the
    // background: none is left soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children(daemon.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        children(daemon.pid()).is_empty(),
        "{:?}",
        children(daemon.pid())
    );
}

/// Start a streamed run of the endless `loop` on `c`; returns its run id.
fn start_loop(c: &mut Client) -> String {
    let line = json!({"jsonrpc": "2.0", "id": 99, "method": "run",
                      "params": {"agent": "testing", "input": "loop", "stream": true}});
    c.send_raw(format!("{line}\n").as_bytes());
    let started = c.read().expect("run.started");
    assert_eq!(started["method"], "run.started", "{started}");
    started["params"]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned()
}

/// Wait until the run's record is written; returns it.
fn wait_for_record(daemon: &Daemon, run_id: &str) -> Value {
    let mut c = daemon.client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = c.call("runs.get", json!({"run_id": run_id}));
        if let Some(run) = answer["result"].get("run") {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "no record for {run_id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_disconnects_mid_run_has_its_run_killed() {
    let home = TestHome::new();
    home.install_testing("testing", "[limits]\ntimeout_ms = 60000\n");
    let daemon = Daemon::start(&home, &["--spares", "0"]);
    let mut c = daemon.client();
    let run_id = start_loop(&mut c);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        children(daemon.pid()).len(),
        1,
        "the run's agent-exec is running"
    );
    // Listed while it runs, owned by the daemon, with no record yet.
    let mut other = daemon.client();
    let got = other.result("runs.get", json!({"run_id": run_id}));
    assert_eq!(got["running"]["state"], "running", "{got}");
    assert_eq!(got["running"]["owner_pid"], daemon.pid(), "{got}");
    assert!(got.get("run").is_none(), "{got}");
    let listed = other.result("runs.list", json!({}));
    assert_eq!(listed["runs"][0]["run_id"], run_id.as_str(), "{listed}");
    assert_eq!(listed["runs"][0]["state"], "running", "{listed}");
    drop(c);
    let record = wait_for_record(&daemon, &run_id);
    assert_eq!(record["status"], "killed");
    assert!(
        record["error"]
            .as_str()
            .expect("error")
            .contains("disconnected"),
        "{record}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children(daemon.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        children(daemon.pid()).is_empty(),
        "the process group is gone and reaped"
    );
}

#[test]
fn cancel_kills_a_run_by_id_and_busy_refuses_beyond_the_queue() {
    let home = TestHome::new();
    home.install_testing("testing", "[limits]\ntimeout_ms = 60000\n");
    home.install_example("echo");
    let daemon = Daemon::start(&home, &["--max-running", "1", "--max-queued", "0"]);
    let mut a = daemon.client();
    let run_id = start_loop(&mut a);
    let mut b = daemon.client();
    let active = b.result("runs.active", json!({}));
    assert_eq!(active["runs"][0]["run_id"], run_id.as_str());

    let busy = b.call("run", json!({"agent": "echo", "input": "x"}));
    assert_eq!(busy["error"]["code"], -32001, "{busy}");
    assert_eq!(busy["error"]["data"]["exit_code"], 13);

    assert_eq!(
        b.result("runs.cancel", json!({"run_id": run_id}))["cancelled"],
        true
    );
    let answer = loop {
        let line = a.read().expect("the run's answer");
        if line.get("id").is_some() {
            break line;
        }
    };
    assert_eq!(answer["result"]["status"], "killed");
    assert_eq!(answer["result"]["error"], "the run was cancelled");
    assert_eq!(
        b.error_code("runs.cancel", json!({"run_id": run_id})),
        -32005
    );
    // The slot is free again.
    assert_eq!(
        b.result("run", json!({"agent": "echo", "input": "x"}))["output"],
        "x"
    );
}

#[test]
fn the_cli_gives_the_same_results_through_the_daemon() {
    let home = TestHome::new();
    home.install_example("echo");
    home.install_example("command-guard");
    let daemon = Daemon::start(&home, &[]);
    let socket = daemon.socket.to_str().expect("utf-8").to_owned();
    for args in [
        vec!["echo", "same", "answer"],
        vec!["command-guard", "--", "git push --force"],
        vec!["nosuch", "x"],
        vec!["../x"],
    ] {
        let mut local = vec!["run"];
        local.extend(&args);
        let mut remote = vec!["run", "--daemon", "--socket", &socket];
        remote.extend(&args);
        let (l, r) = (home.run(&local), home.run(&remote));
        assert_eq!(
            code(&l),
            code(&r),
            "{args:?}: {} / {}",
            stderr(&l),
            stderr(&r)
        );
        assert_eq!(stdout(&l), stdout(&r), "{args:?}");
        let first_line = |s: String| s.lines().next().unwrap_or("").replace("spawner: ", "");
        assert_eq!(first_line(stderr(&l)), first_line(stderr(&r)), "{args:?}");
    }
    let l = home.run(&["run", "--json", "echo", "j"]);
    let r = home.run(&[
        "run", "--daemon", "--socket", &socket, "--json", "echo", "j",
    ]);
    let (l, r): (Value, Value) = (
        serde_json::from_slice(&l.stdout).expect("json"),
        serde_json::from_slice(&r.stdout).expect("json"),
    );
    assert_eq!((&l["status"], &l["output"]), (&r["status"], &r["output"]));

    let out = home.run(&["call", "health", "--socket", &socket]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let health: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(health["status"], "ok");
    let out = home.run(&["call", "metrics", "--socket", &socket]);
    assert!(
        stdout(&out).contains("# TYPE spawner_runs_total counter"),
        "{}",
        stdout(&out)
    );
    let out = home.run(&["call", "run", "{\"agent\":\"nosuch\"}", "--socket", &socket]);
    assert_eq!(code(&out), 3, "a run error exits with its outcome's code");
    let out = home.run(&["call", "health", "not json", "--socket", &socket]);
    assert_eq!(code(&out), 2);
    drop(daemon);
    let out = home.run(&["call", "health", "--socket", &socket]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("spawner serve"),
        "says how to start one: {}",
        stderr(&out)
    );
}

#[test]
fn thirty_two_clients_five_thousand_runs_no_leaks() {
    let home = TestHome::new();
    home.install_example("echo");
    let daemon = Daemon::start(&home, &[]);
    let pid = daemon.pid();
    // Warm up (the compiled cache, the store, the allocator), then take the baseline.
    let mut c = daemon.client();
    for i in 0..100 {
        let input = format!("warm {i}");
        let run = c.result("run", json!({"agent": "echo", "input": input}));
        assert_eq!(run["output"], input.as_str(), "{run}");
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    // Compare at rest: the spare pool full (each spare holds a few of the daemon's
    // descriptors) and nothing in flight.
    let at_rest = |daemon: &Daemon| {
        let mut c = daemon.client();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let health = c.result("health", json!({}));
            if health["spares_ready"] == 2 && health["in_flight"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not settle: {health}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(c);
        // The health connection's thread ends after its close.
        std::thread::sleep(Duration::from_millis(100));
    };
    at_rest(&daemon);
    let (fds_before, rss_before) = (fd_count(pid), rss_kib(pid));

    let clients = 32;
    let total = 5000;
    let socket = daemon.socket.clone();
    let answered: usize = (0..clients)
        .map(|k| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                let mut ok = 0;
                for i in (k..total).step_by(clients) {
                    let input = format!("client {k} request {i}");
                    let result = c.result("run", json!({"agent": "echo", "input": input}));
                    assert_eq!(result["output"], input.as_str(), "{result}");
                    ok += 1;
                }
                ok
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    assert_eq!(answered, total);
    std::thread::sleep(Duration::from_millis(200));
    // What is left are the idle spares (at most 2 by default), none a zombie.
    let left = children(pid);
    assert!(
        left.len() <= 2 && left.iter().all(|(_, state)| *state != 'Z'),
        "no zombies or strays: {left:?}"
    );
    at_rest(&daemon);
    let (fds_after, rss_after) = (fd_count(pid), rss_kib(pid));
    assert_eq!(fds_after, fds_before, "descriptors leaked");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "daemon memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let mut c = daemon.client();
    let text = c.result("metrics", json!({}))["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(
        text.contains(&format!(
            "spawner_runs_total{{status=\"ok\"}} {}\n",
            total + 100
        )),
        "{text}"
    );
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn spares_open_the_store_ahead_only_for_agents_whose_last_run_used_it() {
    let home = TestHome::new();
    home.install_example("echo");
    home.install_example("notes");
    home.precompile("echo");
    home.precompile("notes");
    let daemon = Daemon::start(&home, &["--spares", "1"]);
    let mut c = daemon.client();
    let store = home.path().join("memory.db");
    // The one spare, once it is ready: whether it was started to open the store, and (when
    // it was) that it did.
    let spare_with_store = |c: &mut Client| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.result("health", json!({}))["spares_ready"] != 1 {
            assert!(Instant::now() < deadline, "the pool did not fill");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The last run's agent-exec, which answered, is reaped in the background: wait
        // until only the spare is left.
        let mut spares = children(daemon.pid());
        while spares.len() != 1 {
            assert!(Instant::now() < deadline, "not one spare: {spares:?}");
            std::thread::sleep(Duration::from_millis(10));
            spares = children(daemon.pid());
        }
        let pid = spares[0].0;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let with_store = cmdline.split(|b| *b == 0).any(|arg| arg == b"--with-store");
        while with_store
            && !std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == store))
            })
        {
            assert!(
                Instant::now() < deadline,
                "the spare did not open the store"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        with_store
    };
    // Nothing learned yet: spares open the store, as they always did.
    assert!(spare_with_store(&mut c));
    let run = |c: &mut Client, agent: &str, input: &str| {
        let report = c.result("run", json!({"agent": agent, "input": input}));
        assert_eq!(report["status"], "ok", "{report}");
        report
    };
    // Each run below takes the one ready spare (waited for), whose replacement starts then,
    // of the kind learned from the agent's runs before.
    // echo uses no memory, and says so; its first run had nothing learned to go by.
    assert!(run(&mut c, "echo", "one")["used_store"].is_null());
    assert!(spare_with_store(&mut c));
    // Its second run's replacement goes without the store.
    run(&mut c, "echo", "two");
    assert!(!spare_with_store(&mut c));
    // A spare without the store serves an agent that uses memory all the same.
    let added = run(&mut c, "notes", "add from a spare without the store");
    assert_eq!(added["output"], "noted: from a spare without the store\n");
    assert_eq!(added["used_store"], true, "{added}");
    assert!(!spare_with_store(&mut c));
    // An agent that only reads memory counts as using it: once learned, its spares open it.
    let counted = run(&mut c, "notes", "count");
    assert_eq!(counted["output"], "1\n");
    assert_eq!(counted["used_store"], true, "{counted}");
    assert!(spare_with_store(&mut c));
    // And a spare with the store serves an agent that uses none.
    assert_eq!(run(&mut c, "echo", "three")["output"], "three");
    let (exit, err) = daemon.terminate();
    assert_eq!(exit, 0, "{err}");
}

#[test]
fn spares_serve_one_request_each_and_are_replaced_even_when_killed() {
    let home = TestHome::new();
    home.install_example("echo");
    // Compiled ahead: a run that finds no compiled entry compiles first and then runs in
    // a fresh agent-exec, not in a spare.
    home.precompile("echo");
    let daemon = Daemon::start(&home, &["--spares", "2"]);
    let mut c = daemon.client();
    let wait_for_spares = |c: &mut Client, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.result("health", json!({}))["spares_ready"] != n {
            assert!(Instant::now() < deadline, "the pool did not fill");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for_spares(&mut c, 2);
    let spares: Vec<u32> = children(daemon.pid()).into_iter().map(|(p, _)| p).collect();
    assert_eq!(spares.len(), 2);
    // Each opens the store ahead of its request (nothing is learned yet: the next test).
    let store = home.path().join("memory.db");
    let has_store_open = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == store))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spares.iter().all(|pid| has_store_open(*pid)) {
        assert!(
            Instant::now() < deadline,
            "the spares did not open the store"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A spare is a fresh agent-exec: it answers one request and exits.
    let run = c.result("run", json!({"agent": "echo", "input": "from a spare"}));
    assert_eq!(run["output"], "from a spare");
    assert!(run["timings"]["start_to_main_us"].is_null(), "{run}");
    wait_for_spares(&mut c, 2);
    // The spare that answered is reaped in the background, after the reply: wait until
    // the daemon's children are the two ready spares alone.
    wait_until("the daemon's children are two spares", || {
        children(daemon.pid()).len() == 2
    });
    let now: Vec<u32> = children(daemon.pid()).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        now.iter().filter(|p| spares.contains(p)).count(),
        1,
        "one was used up"
    );
    // A spare that died while it waited is not handed a request; the next run still works.
    for pid in &now {
        signal(*pid, "KILL");
    }
    let dead = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !now.iter().all(dead) {
        assert!(Instant::now() < deadline, "the killed spares did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..5 {
        let input = format!("after the kill {i}");
        let run = c.result("run", json!({"agent": "echo", "input": input}));
        assert_eq!(run["output"], input.as_str(), "{run}");
    }
    wait_for_spares(&mut c, 2);
    // No zombie is left: the last run's agent-exec, which answered before it exited, is
    // reaped in the background soon after.
    wait_until("the daemon's children are two spares", || {
        children(daemon.pid()).len() == 2
    });
    assert!(
        children(daemon.pid())
            .iter()
            .all(|(_, state)| *state != 'Z')
    );
    // A daemon that stops takes its spares with it.
    let home_path = home.path().to_str().expect("utf-8").to_owned();
    let (exit, err) = daemon.terminate();
    assert_eq!(exit, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&home_path).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        processes_mentioning(&home_path).is_empty(),
        "spares outlived the daemon"
    );
}

#[test]
fn sigterm_lets_runs_finish_within_the_grace_then_kills_the_rest() {
    let home = TestHome::new();
    home.install_testing("short", "[limits]\ntimeout_ms = 700\n");
    home.install_testing("long", "[limits]\ntimeout_ms = 60000\n");
    // One component for both: compiled once, before the 0.7 s deadline counts.
    home.precompile("short");
    let daemon = Daemon::start(&home, &[]);
    let socket = daemon.socket.clone();
    // The short run ends by itself (timeout at 0.7 s) within the grace of 3 s: it gets its
    // own answer. The long one is killed when the grace runs out.
    let short = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&socket).expect("connect");
            c.result("run", json!({"agent": "short", "input": "loop"}))
        })
    };
    let long = std::thread::spawn(move || {
        let mut c = Client::connect(&socket).expect("connect");
        c.result("run", json!({"agent": "long", "input": "loop"}))
    });
    let mut c = daemon.client();
    while c.result("runs.active", json!({}))["runs"]
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let socket = daemon.socket.clone();
    let started = Instant::now();
    let (exit, err) = daemon.terminate();
    assert_eq!(exit, 0, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("grace period over, killing 1 run"), "{err}");
    assert_eq!(short.join().expect("short")["status"], "timeout");
    assert_eq!(long.join().expect("long")["status"], "killed");
    assert!(!socket.exists(), "the socket is removed");
}

#[test]
fn a_live_daemon_is_not_stolen_and_a_stale_socket_is_replaced() {
    let home = TestHome::new();
    home.install_example("echo");
    let first = Daemon::start(&home, &[]);
    let out = Command::new(bin("spawner"))
        .arg("--home")
        .arg(home.path())
        .args(["serve", "--socket"])
        .arg(&first.socket)
        .output()
        .expect("second daemon");
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("another spawner serve is running"),
        "{}",
        stderr(&out)
    );
    assert_eq!(first.client().result("health", json!({}))["status"], "ok");

    // Crash the first: its socket file stays behind, and the next daemon replaces it.
    let socket = first.socket.clone();
    let dir = socket.parent().expect("dir").to_owned();
    signal(first.pid(), "KILL");
    let mut first = first;
    let _ = first.child.wait();
    assert!(socket.exists(), "a crashed daemon leaves its socket");
    let mut second = Daemon::spawn(&home, &socket, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answered = loop {
        if let Ok(mut c) = Client::connect(&socket)
            && let Some(r) = c.call("health", json!({})).get("result")
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "the new daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(answered["pid"], second.id());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let _ = second.kill();
    let _ = second.wait();
}

#[test]
fn a_socket_handed_over_by_systemd_is_served() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let home = TestHome::new();
    home.install_example("echo");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --home \"$1\" serve")
        .arg(bin("spawner"))
        .arg(home.path())
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe; they put the listener at descriptor 3,
    // open across exec, as systemd does, in the child only.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let rc = if fd == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("activated daemon");
    drop(listener);
    let mut c = Client::connect(&socket).expect("connect to the activated socket");
    assert_eq!(
        c.result("run", json!({"agent": "echo", "input": "activated"}))["output"],
        "activated"
    );
    signal(child.id(), "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert!(socket.exists(), "the socket is systemd's: left in place");
}

#[test]
fn peers_running_as_another_user_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let home = TestHome::new();
    let daemon = Daemon::start(&home, &[]);
    use std::os::unix::fs::PermissionsExt;
    // Open the fences the daemon put up (0700 dir, 0600 socket), to reach the uid check.
    let dir = daemon.socket.parent().expect("dir");
    for (path, mode) in [
        (daemon._dir.path(), 0o755),
        (dir, 0o755),
        (daemon.socket.as_path(), 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("spawner"))
        .args(["--home", "/tmp", "call", "health", "--socket"])
        .arg(&daemon.socket)
        .output()
        .expect("setpriv");
    if stderr(&out).contains("Permission denied") && !stderr(&out).contains("-32004") {
        eprintln!(
            "skipped: the spawner binary is not reachable as uid 65534: {}",
            stderr(&out)
        );
        return;
    }
    assert!(
        stderr(&out).contains("-32004") && stderr(&out).contains("uid 65534"),
        "{}",
        stderr(&out)
    );
    assert_eq!(daemon.client().result("health", json!({}))["status"], "ok");
}

/// `spawner serve` started under `prlimit --nofile=<soft>:<hard>`, without spares.
fn daemon_with_open_files(home: &TestHome, soft: u64, hard: u64) -> Daemon {
    let mut prlimit = Command::new("prlimit");
    prlimit.arg(format!("--nofile={soft}:{hard}"));
    Daemon::start_under(home, Some(prlimit), &["--spares", "0"])
}

#[test]
fn the_daemon_raises_its_open_file_limit_and_answers_busy_before_running_out() {
    let home = TestHome::new();
    home.install_example("echo");
    // Raised to the hard limit at start.
    let daemon = daemon_with_open_files(&home, 256, 8192);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files");
    assert!(
        line.split_whitespace().filter(|f| *f == "8192").count() == 2,
        "{line}"
    );
    drop(daemon);
    // Where the hard limit is low, the connection past what fits gets `busy`, not silence.
    let daemon = daemon_with_open_files(&home, 128, 128);
    let mut held = Vec::new();
    let busy = loop {
        let mut c = daemon.client();
        // A refused connection is answered (id null) and closed: read its first line.
        c.send_maybe_refused(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\"}\n");
        let answer = c.read().expect("an answer, never silence");
        if answer["error"]["code"] == -32001 {
            break answer;
        }
        assert_eq!(answer["result"]["status"], "ok", "{answer}");
        held.push(c);
        assert!(held.len() < 128, "no connection was refused");
    };
    assert!(
        busy["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many connections")),
        "{busy}"
    );
    // Every held connection still works, and one freed makes room.
    for c in &mut held {
        assert_eq!(c.result("health", json!({}))["status"], "ok");
    }
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = daemon.client();
        c.send_maybe_refused(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\"}\n");
        let answer = c.read().expect("an answer, never silence");
        if answer.get("result").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a close: {answer}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_trickling_client_is_closed_at_its_lines_deadline() {
    let home = TestHome::new();
    let daemon = Daemon::start(&home, &["--client-timeout", "1s"]);
    let mut client = daemon.client();
    let mut writer = client.stream.try_clone().expect("clone");
    // A byte every 50 ms: each read of the daemon's gets something well within its
    // timeout, so only a deadline for the whole line ends this.
    let trickle = std::thread::spawn(move || {
        let started = Instant::now();
        let line = br#"{"jsonrpc":"2.0","id":1,"method":"health","params":{"pad":""#;
        for byte in line.iter().chain(std::iter::repeat(&b'x')) {
            if writer.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    });
    let answer = client.read().expect("an answer before the close");
    assert_eq!(answer["error"]["code"], -32006, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("client-timeout"),
        "{answer}"
    );
    assert!(client.read().is_none(), "then the connection is closed");
    let trickled = trickle.join().expect("trickle");
    assert!(
        trickled < Duration::from_secs(60),
        "the daemon kept reading a trickle for {trickled:?}"
    );
    assert_eq!(daemon.client().result("health", json!({}))["status"], "ok");
}

#[test]
fn unfinished_lines_of_all_connections_share_one_memory_bound() {
    let home = TestHome::new();
    home.install_example("echo");
    let daemon = Daemon::start(&home, &[]);
    let limits = daemon.client().result("capabilities", json!({}));
    let budget = limits["max_pending_bytes"]
        .as_u64()
        .expect("max_pending_bytes");
    let rss_before = rss_kib(daemon.pid());
    // 24 connections each send 20 MiB of a line and hold it unfinished: 480 MiB in all,
    // over three times what the daemon may hold for them.
    let part = vec![b'x'; 20 << 20];
    let mut clients: Vec<Client> = (0..24).map(|_| daemon.client()).collect();
    for c in &mut clients {
        let _ = c.stream.write_all(&part);
    }
    let grown = (rss_kib(daemon.pid()).saturating_sub(rss_before)) * 1024;
    assert!(
        grown < budget + budget / 2,
        "the daemon grew by {} MiB holding unfinished lines (bound {} MiB)",
        grown >> 20,
        budget >> 20
    );
    // It still serves others meanwhile.
    let others = daemon
        .client()
        .result("run", json!({"agent": "echo", "input": "others"}));
    assert_eq!(others["output"], "others", "{others}");
    // Each connection was either told busy (and closed) or holds its line: finished now,
    // it is read whole (and, 20 MiB of x, is not JSON).
    let (mut busy, mut held) = (0, 0);
    for c in &mut clients {
        let _ = c.stream.write_all(b"\n");
        let answer = c.read().expect("an answer");
        match answer["error"]["code"].as_i64() {
            Some(-32001) => busy += 1,
            Some(-32700) => held += 1,
            _ => panic!("unexpected answer {answer}"),
        }
    }
    assert_eq!(busy + held, 24);
    assert!(held >= 1, "the first line fits");
    let fit = budget / (20 << 20);
    assert!(
        busy >= 24 - fit,
        "{busy} busy, {held} held; at most {fit} fit"
    );
    assert_eq!(daemon.client().result("health", json!({}))["status"], "ok");
}

#[test]
fn a_large_answer_of_control_bytes_is_the_same_through_the_cli_and_the_daemon() {
    let home = TestHome::new();
    home.install_testing("big", "[limits]\nmemory_mb = 256\ntimeout_ms = 60000\n");
    home.precompile("big");
    let daemon = Daemon::start(&home, &[]);
    let socket = daemon.socket.to_str().expect("utf-8").to_owned();
    // 30 MiB of 0x01: valid UTF-8, but six bytes each as a JSON string.
    let count = 30 << 20;
    let args = ["big", "bytes", &count.to_string(), "1"];
    let local = home.run(&[&["run"][..], &args].concat());
    assert_eq!(code(&local), 0, "{}", stderr(&local));
    assert!(local.stdout.len() == count && local.stdout.iter().all(|b| *b == 1));
    let remote = home.run(&[&["run", "--daemon", "--socket", &socket][..], &args].concat());
    assert_eq!(code(&remote), 0, "{}", stderr(&remote));
    assert!(
        remote.stdout == local.stdout,
        "the same bytes through the daemon"
    );
    // Over JSON-RPC the answer is base64: 4/3 of it, not 6x.
    let mut client = daemon.client();
    client.send_raw(
        format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "id": 1, "method": "run",
                   "params": {"agent": "big", "input": args[1..].join(" ")}})
        )
        .as_bytes(),
    );
    let mut line = Vec::new();
    client.reader.read_until(b'\n', &mut line).expect("answer");
    assert!(
        line.len() < count / 3 * 4 + (1 << 20),
        "{} bytes",
        line.len()
    );
    let answer: Value = serde_json::from_slice(&line).expect("json");
    let result = &answer["result"];
    assert_eq!(result["status"], "ok", "{}", answer["error"]);
    let b64 = result["output_base64"].as_str().expect("output_base64");
    assert_eq!(b64.len(), count.div_ceil(3) * 4);
    assert!(result.get("output").is_none());

    // Past the output limit: the same agent error, named, on both paths, and recorded.
    let over = (64 << 20) + 1;
    let args = ["big", "bytes", &over.to_string(), "0"];
    let local = home.run(&[&["run"][..], &args].concat());
    let remote = home.run(&[&["run", "--daemon", "--socket", &socket][..], &args].concat());
    for out in [&local, &remote] {
        assert_eq!(code(out), exit_of(Outcome::AgentError), "{}", stderr(out));
        assert!(out.stdout.is_empty());
        assert!(
            stderr(out).contains("over the limit of 64 MiB"),
            "{}",
            stderr(out)
        );
    }
    let run = daemon
        .client()
        .call("run", json!({"agent": "big", "input": args[1..].join(" ")}));
    assert_eq!(run["result"]["status"], "agent_error", "{run}");
    let records = daemon
        .client()
        .result("runs.list", json!({"agent": "big", "limit": 3}));
    for record in records["runs"].as_array().expect("runs") {
        assert_eq!(record["status"], "agent_error", "{record}");
    }
}

#[test]
fn a_streamed_run_sends_llm_text_as_notifications() {
    let home = crate::llm::llm_home("");
    let input = crate::llm::chat_input(&["max_tokens 16", "msg user Name three colours."]);
    // The model loaded first (seconds on a loaded machine), so that the client's read
    // timeout below measures the streamed run alone.
    let warm = home.run(&["run", "talker", &input]);
    assert_eq!(code(&warm), 0, "{}", stderr(&warm));
    let daemon = Daemon::start(&home, &[]);
    let (pieces, output) = streamed_run(&daemon, "talker", &input);
    let text = output.split_once('\n').expect("header").1;
    assert!(!pieces.is_empty());
    assert_eq!(pieces.concat(), text);
    crate::llm::stop_broker(&home);
}

/// A streamed `run` of `agent` on `input` through `daemon`: the pieces of LLM text its
/// notifications carried, in order, and the run's output.
pub(crate) fn streamed_run(daemon: &Daemon, agent: &str, input: &str) -> (Vec<String>, String) {
    let mut c = daemon.client();
    let line = json!({"jsonrpc": "2.0", "id": 7, "method": "run",
                      "params": {"agent": agent, "input": input, "stream": true}});
    c.send_raw(format!("{line}\n").as_bytes());
    let mut pieces = Vec::new();
    let result = loop {
        let message = c.read().expect("a message");
        match message["method"].as_str() {
            Some("run.llm_text") => {
                pieces.push(message["params"]["text"].as_str().expect("text").to_owned())
            }
            Some(_) => {}
            None => break message,
        }
    };
    let output = result["result"]["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no output: {result}"))
        .to_owned();
    (pieces, output)
}
