//! Tools through the real binaries: agents calling `tools.list` and `tools.call` from
//! their WebAssembly handlers, the broker holding real MCP servers' sessions (PyPI's
//! `mcp-server-time` and `mcp-server-git`, npm's `server-everything` over streamable HTTP
//! and `server-filesystem`, and a misbehaving server written with the `mcp` SDK,
//! tests/mcp/faulty_server.py), the allowlist, faults, consent, and the evidence each call
//! leaves. `cargo xtask test` installs the servers once per machine.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::{TestHome, children_of, code, root, stderr, stdout, wait_until};

/// `target/tools/<name>`, installed by `cargo xtask test`.
fn tool_dir(name: &str) -> PathBuf {
    let dir = crate::harness::target().join("tools").join(name);
    assert!(
        dir.join("installed").is_file(),
        "{} is missing: run `cargo xtask test` (it installs the MCP servers once)",
        dir.display()
    );
    dir
}

/// A stdio server entry running Python with the installed packages, `env` besides them.
fn python_server(name: &str, args: &[&str], env: &[(&str, &str)], extra: &str) -> String {
    let env: String = env.iter().map(|(k, v)| format!(", {k} = {v:?}")).collect();
    format!(
        "[[server]]\nname = \"{name}\"\ncommand = \"python3\"\nargs = {args:?}\n\
         env = {{ PYTHONPATH = {path:?}{env} }}\n{extra}\n",
        path = tool_dir("mcp-python").display().to_string(),
    )
}

pub(crate) fn faulty(name: &str, env: &[(&str, &str)], extra: &str) -> String {
    let script = root().join("tests/mcp/faulty_server.py");
    python_server(name, &[script.to_str().expect("utf-8 path")], env, extra)
}

fn time_server(extra: &str) -> String {
    python_server(
        "time",
        &["-m", "mcp_server_time", "--local-timezone", "UTC"],
        &[],
        extra,
    )
}

/// A home with `tools.toml` and the testing agent as `caller`, allowed `[tools]`.
fn tools_home(servers: &str, tools: &str) -> TestHome {
    let home = TestHome::new();
    std::fs::write(home.path().join("tools.toml"), servers).expect("tools.toml");
    home.install_testing(
        "caller",
        &format!("[limits]\ntimeout_ms = 60000\n\n[tools]\n{tools}\n"),
    );
    home.precompile("caller");
    home
}

/// One tool call by the `caller` agent; its answer (`ok\n...` or `error <kind>: ...`).
fn call(home: &TestHome, server: &str, tool: &str, arguments: &str) -> String {
    let out = home.run(&[
        "run",
        "caller",
        &format!("tool {server} {tool} {arguments}"),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out)
}

fn broker_pid(home: &TestHome) -> Option<u32> {
    let socket = home.path().join("run/broker.sock");
    broker_client::Client::connect(&socket)
        .ok()?
        .status()
        .ok()?["pid"]
        .as_u64()
        .map(|p| p as u32)
}

/// Processes whose working directory is under `dir` (the servers of a test's home).
fn processes_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    crate::harness::stat_field(pid, 0).is_some_and(|state| state == "Z")
}

/// Stop the home's broker and wait until it, and every server it started, is gone.
pub(crate) fn stop_and_count_leftovers(home: &TestHome) {
    let pid = broker_pid(home);
    crate::harness::stop_broker_at(&home.path().join("run/broker.sock"));
    if let Some(pid) = pid {
        wait_until("the broker exits", || {
            !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)
        });
    }
    wait_until("no server of this home is left", || {
        processes_in(home.path()).is_empty()
    });
}

#[test]
fn tools_are_listed_and_called_only_as_the_manifest_allows() {
    let home = tools_home(
        &time_server(""),
        "servers = [\"time\"]\nallow = [\"time/get_current_time\"]",
    );
    let out = home.run(&["run", "caller", "tools"]);
    let listed = stdout(&out);
    assert!(
        listed.starts_with("time/get_current_time {"),
        "{listed}{}",
        stderr(&out)
    );
    assert!(listed.contains("\"timezone\""), "{listed}");
    assert!(
        !listed.contains("convert_time"),
        "allow narrows the list: {listed}"
    );

    let answer = call(
        &home,
        "time",
        "get_current_time",
        r#"{"timezone": "Asia/Tokyo"}"#,
    );
    assert!(answer.starts_with("ok\n"), "{answer}");
    assert!(
        answer.contains("Asia/Tokyo") && answer.contains("+09:00"),
        "{answer}"
    );

    let refused = call(
        &home,
        "time",
        "convert_time",
        r#"{"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}"#,
    );
    assert!(refused.starts_with("error not allowed:"), "{refused}");
    assert!(refused.contains("time/convert_time"), "{refused}");

    let bad = call(&home, "time", "get_current_time", r#"{"timezone": 9}"#);
    assert!(
        bad.starts_with("error invalid arguments:") && bad.contains("must be string"),
        "{bad}"
    );
    let bad = call(&home, "time", "get_current_time", "[1, 2]");
    assert!(bad.starts_with("error invalid arguments:"), "{bad}");
    let bad = call(
        &home,
        "time",
        "get_current_time",
        r#"{"timezone": "Mars/Olympus"}"#,
    );
    assert!(
        bad.starts_with("error "),
        "the server refuses an unknown zone: {bad}"
    );

    // Evidence: every call, allowed or not, with its outcome and sizes.
    let store = home.store();
    let runs = store
        .runs(&memory_store::RunFilter {
            agent: Some("caller".into()),
            limit: 10,
        })
        .expect("runs");
    let mut outcomes = Vec::new();
    for run in runs.iter().rev() {
        for c in store.tool_calls(&run.run_id).expect("calls") {
            outcomes.push((c.tool.clone(), c.outcome.clone(), c.bytes_in > 0));
            assert_eq!(c.arguments, None, "not retained without tools.retain");
        }
    }
    assert_eq!(
        outcomes[..4],
        [
            ("get_current_time".to_owned(), "ok".to_owned(), true),
            ("convert_time".to_owned(), "not-allowed".to_owned(), true),
            (
                "get_current_time".to_owned(),
                "invalid-arguments".to_owned(),
                true
            ),
            (
                "get_current_time".to_owned(),
                "invalid-arguments".to_owned(),
                true
            ),
        ]
    );
    let shown = stdout(&home.run(&["runs", "show", &runs[runs.len() - 2].run_id]));
    assert!(
        shown.contains("tool call 1: time/get_current_time (local): ok;"),
        "{shown}"
    );
    stop_and_count_leftovers(&home);
}

#[test]
fn refusals_come_before_any_connection() {
    let home = tools_home(&time_server(""), "servers = [\"time\", \"absent\"]");
    let refused = call(&home, "time2", "get_current_time", "{}");
    assert!(refused.starts_with("error not allowed:"), "{refused}");
    let missing = call(&home, "absent", "anything", "{}");
    assert!(
        missing.starts_with("error unavailable:") && missing.contains("tools.toml"),
        "{missing}"
    );
    assert!(
        !home.path().join("run/broker.sock").exists(),
        "nothing was started for refused calls"
    );
    // An agent without [tools] lists nothing and starts nothing.
    home.install_testing("plain", "");
    let out = home.run(&["run", "plain", "tools"]);
    assert_eq!(stdout(&out), "", "{}", stderr(&out));
    assert!(!home.path().join("run/broker.sock").exists());
}

#[test]
fn a_server_that_misbehaves_fails_its_call_clearly_and_the_next_call_works() {
    let home = TestHome::new();
    let cwd = home.path().join("server-cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    std::fs::write(
        home.path().join("tools.toml"),
        format!(
            "{}{}{}",
            faulty(
                "faulty",
                &[("ONLY_THIS", "set by the user")],
                "cwd = \"server-cwd\"\ntimeout_s = 3\nmax_result_kib = 1024"
            ),
            faulty(
                "slow",
                &[("FAULTY_SLOW_START", "30")],
                "cwd = \"server-cwd\"\nstart_timeout_s = 1"
            ),
            time_server("cwd = \"server-cwd\""),
        ),
    )
    .expect("tools.toml");
    home.install_testing(
        "caller",
        "[limits]\ntimeout_ms = 60000\n\n[memory]\nretain_input = true\n\n[tools]\nservers = [\"faulty\", \"slow\", \"time\"]\n",
    );
    home.precompile("caller");

    // Its environment is PATH, HOME and what tools.toml sets; its directory the one set.
    let where_ = call(&home, "faulty", "where", "{}");
    let json: serde_json::Value = serde_json::from_str(
        where_
            .trim_start_matches("ok\n")
            .lines()
            .next()
            .unwrap_or(""),
    )
    .unwrap_or_else(|e| panic!("{e}: {where_}"));
    assert_eq!(json["cwd"], cwd.display().to_string());
    let env: Vec<&str> = json["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|name| *name != "LC_CTYPE") // Python sets it for itself
        .filter(|name| *name != "HOME") // the broker's own, when it has one
        .collect();
    assert_eq!(env, ["ONLY_THIS", "PATH", "PYTHONPATH"], "{where_}");

    let first = call(&home, "faulty", "pid", "{}");
    let server_pid = first
        .lines()
        .nth(1)
        .and_then(|l| l.split(' ').next())
        .map(str::to_owned);
    let again = call(&home, "faulty", "pid", "{}");
    assert_eq!(
        again
            .lines()
            .nth(1)
            .and_then(|l| l.split(' ').next())
            .map(str::to_owned),
        server_pid,
        "the session is held warm across requests: {first} {again}"
    );

    let crashed = call(&home, "faulty", "crash", "{}");
    assert!(
        crashed.starts_with("error unavailable:") && crashed.contains("exited"),
        "{crashed}"
    );
    let restarted = call(&home, "faulty", "pid", "{}");
    assert!(restarted.starts_with("ok\n"), "{restarted}");
    assert_ne!(
        restarted
            .lines()
            .nth(1)
            .and_then(|l| l.split(' ').next())
            .map(str::to_owned),
        server_pid,
        "a new server after the crash"
    );

    let hung = call(&home, "faulty", "hang", r#"{"seconds": 600}"#);
    assert!(
        hung.starts_with("error timeout:") && hung.contains("started again"),
        "{hung}"
    );
    assert!(
        call(&home, "faulty", "echo", r#"{"text": "après ✓ 後 café 👋🏽"}"#)
            .contains("après ✓ 後 café 👋🏽")
    );

    let garbage = call(&home, "faulty", "garbage", "{}");
    assert!(garbage.contains("answered after garbage"), "{garbage}");

    let big = call(&home, "faulty", "big", r#"{"megabytes": 50}"#);
    assert!(
        big.starts_with("error failed:") && big.contains("over the server's limit"),
        "{big}"
    );
    assert!(call(&home, "faulty", "echo", r#"{"text": "still here"}"#).contains("still here"));

    let slow = call(&home, "slow", "echo", r#"{"text": "x"}"#);
    assert!(
        slow.starts_with("error timeout:") && slow.contains("did not start"),
        "{slow}"
    );

    // Other servers were never disturbed, and nothing is left as a zombie.
    assert!(call(&home, "time", "get_current_time", r#"{"timezone": "UTC"}"#).starts_with("ok\n"));
    // The servers stopped above are reaped (tokio reaps a dropped child in the background).
    let broker = broker_pid(&home).expect("a broker");
    wait_until("the broker has no zombie child", || {
        !children_of(broker).into_iter().any(is_zombie)
    });
    assert_eq!(
        children_of(broker).len(),
        2,
        "only the running faulty and time servers: {:?}",
        children_of(broker)
    );
    stop_and_count_leftovers(&home);
}

#[test]
fn a_hung_call_does_not_hold_up_other_servers_and_a_killed_caller_leaves_the_session_usable() {
    let home = tools_home(
        &format!(
            "{}{}",
            faulty("faulty", &[], "timeout_s = 120"),
            time_server("")
        ),
        "servers = [\"faulty\", \"time\"]",
    );
    // Warm both servers.
    assert!(call(&home, "faulty", "pid", "{}").starts_with("ok\n"));
    assert!(call(&home, "time", "get_current_time", r#"{"timezone": "UTC"}"#).starts_with("ok\n"));
    let mark = home.path().join("hanging");
    let mut hanging: Child = home
        .spawner(&[
            "run",
            "caller",
            &format!(
                "tool faulty hang {{\"seconds\": 30, \"mark\": {:?}}}",
                mark.display().to_string()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawner starts");
    wait_until("the server is in the hanging call", || mark.exists());
    // Another server answers while that call hangs.
    assert!(
        call(
            &home,
            "time",
            "get_current_time",
            r#"{"timezone": "Europe/Paris"}"#
        )
        .contains("Europe/Paris")
    );
    assert!(hanging.try_wait().expect("wait").is_none(), "still hanging");
    // The caller (agent-exec, and its spawner) is killed mid-call: its result is
    // discarded, the session stays.
    for pid in children_of(hanging.id()).into_iter().chain([hanging.id()]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = hanging.wait();
    let cancelled = PathBuf::from(format!("{}.cancelled", mark.display()));
    wait_until("the server is told the call is cancelled", || {
        cancelled.exists()
    });
    let after = call(&home, "faulty", "pid", "{}");
    assert!(after.starts_with("ok\n"), "{after}");
    let calls: u32 = after
        .lines()
        .nth(1)
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert_eq!(calls, 2, "the same server process answered: {after}");

    // A caller whose run runs out of time: its call is cancelled, and the healthy server
    // (whose own timeout_s is far off) is kept.
    home.install_testing(
        "hasty",
        "[limits]\ntimeout_ms = 4000\n\n[tools]\nservers = [\"faulty\"]\n",
    );
    home.precompile("hasty");
    let out = home.run(&["run", "hasty", r#"tool faulty hang {"seconds": 600}"#]);
    let hasty = stdout(&out);
    assert!(
        hasty.starts_with("error timeout:") && hasty.contains("the call was cancelled"),
        "{hasty}{}",
        stderr(&out)
    );
    let kept = call(&home, "faulty", "pid", "{}");
    assert!(
        kept.lines().nth(1).is_some_and(|l| l.ends_with(" 3")),
        "the same server, its third pid call: {kept}"
    );
    stop_and_count_leftovers(&home);
}

/// `npm`'s server-everything over streamable HTTP on a free loopback port.
struct Everything {
    child: Child,
    port: u16,
}

impl Everything {
    fn start() -> Everything {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let script = tool_dir("mcp-node")
            .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        let mut child = Command::new("node")
            .arg(script)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("listening on port"));
        assert!(ready, "server-everything did not start");
        std::thread::spawn(move || lines.for_each(drop));
        Everything { child, port }
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn streamable_http_servers_serve_calls_and_remote_ones_need_consent() {
    let server = Everything::start();
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    let home = tools_home(
        &format!(
            "[[server]]\nname = \"everything\"\nurl = {url:?}\n\
             [[server]]\nname = \"far\"\nurl = {url:?}\nremote = true\n\
             [[server]]\nname = \"leaky\"\nurl = {url:?}\nheaders_file = \"leaky.headers\"\n"
        ),
        "servers = [\"everything\", \"far\", \"leaky\"]\nretain = true",
    );
    let echoed = call(
        &home,
        "everything",
        "echo",
        r#"{"message": "héllo 世界 🙂 café"}"#,
    );
    assert!(
        echoed.starts_with("ok\n") && echoed.contains("héllo 世界 🙂 café"),
        "{echoed}"
    );
    let structured = call(
        &home,
        "everything",
        "get-structured-content",
        r#"{"location": "New York"}"#,
    );
    assert!(structured.contains("\nstructured {"), "{structured}");

    // A remote server: refused without consent, served with it, and the consent is
    // recorded with the call.
    let refused = call(&home, "far", "echo", r#"{"message": "x"}"#);
    assert!(
        refused.starts_with("error consent required:")
            && refused.contains("spawner consent grant caller far"),
        "{refused}"
    );
    let out = home.run(&["consent", "grant", "caller", "far"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(call(&home, "far", "echo", r#"{"message": "now allowed"}"#).contains("now allowed"));

    // A headers file others can read is refused, naming the fix (and never its content).
    let headers = home.path().join("leaky.headers");
    std::fs::write(&headers, "Authorization: Bearer s3cr3t-value\n").expect("write");
    std::fs::set_permissions(
        &headers,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let leaky = call(&home, "leaky", "echo", r#"{"message": "x"}"#);
    assert!(
        leaky.starts_with("error unavailable:") && leaky.contains("chmod 600"),
        "{leaky}"
    );
    assert!(!leaky.contains("s3cr3t"));
    // A private file with a bad line: named by its line, never by its content.
    std::fs::write(&headers, "Bearer s3cr3t-value\n").expect("write");
    std::fs::set_permissions(
        &headers,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let bad = call(&home, "leaky", "echo", r#"{"message": "x"}"#);
    assert!(
        bad.starts_with("error unavailable:") && bad.contains("line 1: expected `Name: value`"),
        "{bad}"
    );
    assert!(!bad.contains("s3cr3t"), "{bad}");
    // A good one: the header is sent (the server answers as before).
    std::fs::write(&headers, "X-Api-Key: s3cr3t-value\n").expect("write");
    assert!(
        call(&home, "leaky", "echo", r#"{"message": "with a header"}"#).contains("with a header")
    );

    let store = home.store();
    let runs = store
        .runs(&memory_store::RunFilter {
            agent: Some("caller".into()),
            limit: 10,
        })
        .expect("runs");
    let calls: Vec<memory_store::ToolCall> = runs
        .iter()
        .rev()
        .flat_map(|r| store.tool_calls(&r.run_id).expect("calls"))
        .collect();
    let granted = calls
        .iter()
        .find(|c| c.server == "far" && c.outcome == "ok")
        .expect("the consented call");
    assert!(
        granted.remote
            && granted
                .consent
                .as_deref()
                .is_some_and(|c| c.starts_with("consent "))
    );
    let first = &calls[0];
    assert_eq!(
        first.arguments.as_deref(),
        Some(r#"{"message": "héllo 世界 🙂 café"}"#)
    );
    assert!(
        first
            .result
            .as_deref()
            .is_some_and(|r| r.contains("héllo 世界 🙂 café"))
    );
    assert!(first.bytes_out > 0);
    crate::harness::stop_broker_at(&home.path().join("run/broker.sock"));
}

#[test]
fn git_and_filesystem_servers_answer_about_a_temporary_repository() {
    let home = TestHome::new();
    let repo = home.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=Ada", "-c", "user.email=ada@example.com"])
            .args(args)
            .current_dir(&repo)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("notes.txt"), "ヘロー\n").expect("write");
    git(&["add", "notes.txt"]);
    git(&["commit", "-q", "-m", "Add the notes file (première)"]);
    let filesystem = tool_dir("mcp-node")
        .join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
    std::fs::write(
        home.path().join("tools.toml"),
        format!(
            "{}[[server]]\nname = \"files\"\ncommand = \"node\"\nargs = [{:?}, {:?}]\n",
            python_server(
                "git",
                &[
                    "-m",
                    "mcp_server_git",
                    "--repository",
                    repo.to_str().expect("utf-8")
                ],
                &[],
                ""
            ),
            filesystem.display().to_string(),
            repo.display().to_string(),
        ),
    )
    .expect("tools.toml");
    home.install_testing(
        "caller",
        "[limits]\ntimeout_ms = 60000\n\n[tools]\nservers = [\"git\", \"files\"]\n",
    );
    home.precompile("caller");
    let log = call(
        &home,
        "git",
        "git_log",
        &format!("{{\"repo_path\": {:?}}}", repo.display().to_string()),
    );
    assert!(log.contains("Add the notes file (première)"), "{log}");
    let listing = call(
        &home,
        "files",
        "list_directory",
        &format!("{{\"path\": {:?}}}", repo.display().to_string()),
    );
    assert!(listing.contains("notes.txt"), "{listing}");
    let outside = call(&home, "files", "list_directory", r#"{"path": "/etc"}"#);
    assert!(
        outside.starts_with("error failed:"),
        "the server's own refusal: {outside}"
    );
    stop_and_count_leftovers(&home);
}

#[test]
fn the_tool_agent_answers_a_question_with_the_time_from_the_time_server() {
    let home = crate::llm::home_with_model();
    std::fs::write(home.path().join("tools.toml"), time_server("")).expect("tools.toml");
    home.install_example("tool-agent");
    home.precompile("tool-agent");
    let out = home.run(&["run", "tool-agent", "What time is it in Tokyo?"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let answer = stdout(&out);
    let mut lines = answer.lines();
    let said = lines.next().unwrap_or("");
    assert!(!said.is_empty() && !said.starts_with('['), "{answer}");
    let evidence = lines.next().unwrap_or("");
    assert!(
        evidence.starts_with(r#"[time/get_current_time {"timezone":"Asia/Tokyo"} -> "#)
            && evidence.contains("+09:00"),
        "{answer}"
    );
    let store = home.store();
    let run = &store
        .runs(&memory_store::RunFilter {
            agent: Some("tool-agent".into()),
            limit: 1,
        })
        .expect("runs")[0];
    let record = store.run(&run.run_id).expect("run").expect("record");
    assert_eq!(record.tool_calls.len(), 1);
    assert_eq!(record.tool_calls[0].outcome, "ok");
    assert!(record.llm_calls.len() >= 2, "a call, then an answer");
    // An empty task is the caller's mistake.
    let out = home.run(&["run", "tool-agent", ""]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("give a task"), "{}", stderr(&out));
    stop_and_count_leftovers(&home);
}

#[test]
fn doctor_shows_the_tool_servers_and_a_bad_tools_file_is_named() {
    let home = tools_home(
        &format!(
            "{}[[server]]\nname = \"far\"\nurl = \"https://tools.example.com/mcp\"\n",
            time_server("timeout_s = 7")
        ),
        "servers = [\"time\"]",
    );
    let out = home.run(&["doctor"]);
    let text = stdout(&out);
    assert!(text.contains("tools    2 server(s)"), "{text}");
    assert!(
        text.contains("time: stdio python3 (this machine), timeout 7 s"),
        "{text}"
    );
    assert!(
        text.contains("far: streamable-http tools.example.com (remote)"),
        "{text}"
    );
    std::fs::write(home.path().join("tools.toml"), "[[server]]\nname = \"x\"\n").expect("write");
    let text = stdout(&home.run(&["doctor"]));
    assert!(
        text.contains("tools    servers:") && text.contains("give `command`"),
        "{text}"
    );
    // A call finds the same problem, named, and nothing is started.
    let out = call(&home, "time", "get_current_time", "{}");
    assert!(
        out.starts_with("error unavailable:") && out.contains("tools.toml"),
        "{out}"
    );
}
