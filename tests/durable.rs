//! Durable runs through the real binaries: the testing agent with `[durable] journal =
//! true` making tool calls to a real MCP server (tests/mcp/faulty_server.py's `record`,
//! which appends a line to a file per call, so the calls made can be counted at the
//! server), killed at a step, resumed, replayed, and refused where it must be.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{
    TestHome, children_of, code, count, exit_of, report, stderr, stdout, wait_until,
};
use agent_contract::Outcome;

/// A home with the faulty server and the testing agent as `steps`, durable.
fn durable_home() -> TestHome {
    home_with_steps("")
}

/// A home with the faulty server and the testing agent as `steps`, durable, retried twice.
fn retrying_home() -> TestHome {
    home_with_steps("retries = 2\nretry_backoff_ms = 10\n")
}

/// A home with the faulty server and the testing agent as `steps`, its `[durable]` table
/// `journal = true` and `durable`.
fn home_with_steps(durable: &str) -> TestHome {
    let home = TestHome::new();
    std::fs::write(
        home.path().join("tools.toml"),
        crate::tools::faulty("faulty", &[], "timeout_s = 60"),
    )
    .expect("tools.toml");
    install_steps(&home, "steps", durable);
    home
}

/// The testing agent as `name`, using the faulty server, durable with `durable` too, and
/// compiled.
fn install_steps(home: &TestHome, name: &str, durable: &str) {
    home.install_testing(
        name,
        &format!(
            "[limits]\ntimeout_ms = 60000\n\n[tools]\nservers = [\"faulty\"]\n\n[durable]\njournal = true\n{durable}"
        ),
    );
    home.precompile(name);
}

/// The lines of a file the server appended to (none when it does not exist yet).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether a JSON-RPC answer is an error whose message says `text`.
fn error_says(answer: &serde_json::Value, text: &str) -> bool {
    answer["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(text))
}

fn journal_count(home: &TestHome, run_id: &str, kind: &str) -> i64 {
    count(
        &home.store(),
        &format!("SELECT count(*) FROM journal WHERE run_id = '{run_id}' AND kind = '{kind}'"),
    )
}

#[test]
fn a_finished_durable_run_replays_the_same_from_its_journal_alone() {
    let home = durable_home();
    let file = home.path().join("calls-ελληνικά-🦀.txt");
    let input = format!("steps 3 faulty {}", file.display());
    let out = home.run(&["run", "steps", "--json", &input]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let first = report(&out);
    let run_id = first["run_id"].as_str().expect("run id").to_owned();
    let answer = first["output"].as_str().expect("output").to_owned();
    assert!(
        answer.contains("step 2: recorded step 2 as line 3"),
        "{answer}"
    );
    assert_eq!(lines(&file).len(), 3);
    // Each call carried its step's idempotency key, `<run id>:<seq>`, one per step.
    let keys = lines(&PathBuf::from(format!("{}.keys", file.display())));
    let seqs: Vec<u32> = keys
        .iter()
        .map(|k| {
            k.strip_prefix(&format!("{run_id}:"))
                .and_then(|seq| seq.parse().ok())
                .unwrap_or_else(|| panic!("not a key of run {run_id}: {k:?}"))
        })
        .collect();
    assert_eq!(seqs.len(), 3, "{keys:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    // The component, the memory read, three tool calls and a clock read.
    assert_eq!(journal_count(&home, &run_id, "component"), 1);
    assert_eq!(journal_count(&home, &run_id, "memory"), 1);
    assert_eq!(journal_count(&home, &run_id, "tool"), 3);
    assert_eq!(journal_count(&home, &run_id, "clock"), 1);

    // The replay answers the same (its random number and time included) and calls
    // nothing: the server saw no more calls.
    let replay = home.run(&["runs", "replay", &run_id]);
    assert_eq!(code(&replay), 0, "{}", stderr(&replay));
    assert!(stdout(&replay).contains("matches"), "{}", stdout(&replay));
    assert_eq!(lines(&file).len(), 3, "a replay makes no call");
    let json = home.run(&["runs", "replay", "--json", &run_id]);
    assert_eq!(code(&json), 0, "{}", stderr(&json));
    assert_eq!(report(&json)["output"].as_str(), Some(answer.as_str()));
    // Another run of the same input draws other random numbers.
    let other = home.run(&["run", "steps", "--json", &input]);
    let other = report(&other)["output"].as_str().unwrap_or("").to_owned();
    let random = |a: &str| {
        a.lines()
            .find(|l| l.starts_with("random "))
            .map(str::to_owned)
    };
    assert!(random(&answer).is_some());
    assert_ne!(random(&answer), random(&other));

    // A finished run is not resumed.
    let resume = home.run(&["runs", "resume", &run_id]);
    assert_eq!(code(&resume), exit_of(Outcome::Usage));
    assert!(
        stderr(&resume).contains("nothing to resume"),
        "{}",
        stderr(&resume)
    );

    // A journal that says otherwise than the run did: the replay diverges and says where.
    home.leave_unreplayed("its journal is tampered with below");
    home.store()
        .connection()
        .execute(
            "UPDATE journal SET result = CAST('{\"Ok\":{\"text\":\"tampered\",\"structured\":null}}' AS BLOB)
             WHERE run_id = ?1 AND seq = 3",
            [&run_id],
        )
        .expect("update");
    let tampered = home.run(&["runs", "replay", &run_id]);
    assert_eq!(
        code(&tampered),
        exit_of(Outcome::Diverged),
        "{}",
        stderr(&tampered)
    );
    assert!(
        stderr(&tampered).contains("diverged") || stderr(&tampered).contains("answered otherwise"),
        "{}",
        stderr(&tampered)
    );
    home.store()
        .connection()
        .execute(
            "UPDATE journal SET request_hash = zeroblob(32) WHERE run_id = ?1 AND seq = 2",
            [&run_id],
        )
        .expect("update");
    let asked = home.run(&["runs", "replay", &run_id]);
    assert_eq!(
        code(&asked),
        exit_of(Outcome::Diverged),
        "{}",
        stderr(&asked)
    );
    assert!(
        stderr(&asked).contains("step 2 (tool) asked otherwise"),
        "{}",
        stderr(&asked)
    );
    // Replays wrote nothing: the run's record is as it was.
    let show = home.run(&["runs", "show", "--json", &run_id]);
    let record = report(&show);
    assert_eq!(
        (record["status"].as_str(), record["attempt"].as_u64()),
        (Some("ok"), Some(1))
    );
    crate::tools::stop_and_count_leftovers(&home);
}

/// Steps of the killed runs.
const STEPS: usize = 5;

#[test]
fn a_failed_attempt_is_retried_from_its_journal_as_the_manifest_says() {
    let home = retrying_home();
    // The server crashes in the middle of step 1 once: the attempt fails (the server
    // unavailable), the retry serves step 0 from the journal and makes step 1 again.
    let file = home.path().join("calls-한국어-🦀.txt");
    let crash = PathBuf::from(format!("{}.crash", file.display()));
    std::fs::write(&crash, "step 1").expect("crash mark");
    let input = format!("steps 3 faulty {}", file.display());
    let out = home.run(&["run", "steps", "--json", &input]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!crash.exists(), "the server crashed once");
    // One report, of the attempt that answered.
    let answered = report(&out);
    let run_id = answered["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(answered["status"], "ok");
    assert!(
        stderr(&out).contains(&format!(
            "run {run_id} attempt 1 ended agent_error; retry 1 of 2 in 10 ms"
        )),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("retry 2 of 2"), "{}", stderr(&out));
    assert_eq!(
        lines(&file),
        ["step 0", "step 1", "step 2"],
        "the journaled step was not made again"
    );
    let record = home.store().run(&run_id).expect("run").expect("recorded");
    assert_eq!((record.status, record.attempt), (Outcome::Ok, 2));
    assert_eq!(journal_count(&home, &run_id, "tool"), 3);
    let shown = home.run(&["runs", "show", &run_id]);
    assert!(
        stdout(&shown).contains("attempt 2 (resumed or retried)"),
        "{}",
        stdout(&shown)
    );

    // A failure that does not pass: the retries run out, the last attempt is the answer.
    let file = home.path().join("calls-always.txt");
    std::fs::write(format!("{}.crash", file.display()), "always step 1").expect("mark");
    let input = format!("steps 3 faulty {}", file.display());
    let out = home.run(&["run", "steps", "--json", &input]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError), "{}", stderr(&out));
    let failed = report(&out);
    let run_id = failed["run_id"].as_str().expect("run id").to_owned();
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("step 1")),
        "{failed}"
    );
    for n in 1..=2 {
        assert!(
            stderr(&out).contains(&format!(
                "attempt {n} ended agent_error; retry {n} of 2 in {} ms",
                10 << (n - 1)
            )),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        lines(&file),
        ["step 0"],
        "step 0 ran once in three attempts"
    );
    let record = home.store().run(&run_id).expect("run").expect("recorded");
    assert_eq!((record.status, record.attempt), (Outcome::AgentError, 3));
    assert_eq!(home.replay_every_run(), 1, "the retried run replays");
    crate::tools::stop_and_count_leftovers(&home);
}

#[test]
fn the_daemon_resumes_replays_and_retries_durable_runs() {
    let home = durable_home();
    install_steps(&home, "retried", "retries = 1\nretry_backoff_ms = 10\n");
    // A run that failed at step 1 (the server crashes there each time), from the CLI.
    let file = home.path().join("calls-देवनागरी-🦀.txt");
    let crash = PathBuf::from(format!("{}.crash", file.display()));
    std::fs::write(&crash, "always step 1").expect("crash mark");
    let input = format!("steps 3 faulty {}", file.display());
    let out = home.run(&["run", "steps", "--json", &input]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError), "{}", stderr(&out));
    let run_id = report(&out)["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(lines(&file), ["step 0"]);
    std::fs::remove_file(&crash).expect("the server mends");

    let daemon = crate::serve::Daemon::start(&home, &[]);
    let mut c = daemon.client();
    let resumed = c.result("runs.resume", serde_json::json!({"run_id": run_id}));
    assert_eq!(resumed["status"], "ok", "{resumed}");
    assert_eq!(resumed["run_id"], run_id.as_str());
    let answer = resumed["output"].as_str().expect("output").to_owned();
    assert!(
        answer.contains("step 0: recorded step 0 as line 1\n"),
        "step 0 from the journal: {answer}"
    );
    assert_eq!(lines(&file), ["step 0", "step 1", "step 2"]);
    let record = home.store().run(&run_id).expect("run").expect("recorded");
    assert_eq!((record.status, record.attempt), (Outcome::Ok, 2));
    // Finished ok: nothing to resume, said as the command line says it.
    let again = c.call("runs.resume", serde_json::json!({"run_id": run_id}));
    assert_eq!(again["error"]["data"]["status"], "usage_error", "{again}");
    assert!(error_says(&again, "there is nothing to resume"), "{again}");
    let replayed = c.result("runs.replay", serde_json::json!({"run_id": run_id}));
    assert_eq!(replayed["status"], "ok", "{replayed}");
    assert_eq!(replayed["output"].as_str(), Some(answer.as_str()));
    assert_eq!(lines(&file).len(), 3, "a replay makes no call");
    let unknown = c.call("runs.replay", serde_json::json!({"run_id": "no-such-run"}));
    assert!(error_says(&unknown, "no run \"no-such-run\""), "{unknown}");

    // A run through the daemon is retried as its manifest says; the retry is a log line.
    let file = home.path().join("calls-retried.txt");
    std::fs::write(format!("{}.crash", file.display()), "step 0").expect("mark");
    let input = format!("steps 2 faulty {}", file.display());
    let ran = c.result(
        "run",
        serde_json::json!({"agent": "retried", "input": input}),
    );
    assert_eq!(ran["status"], "ok", "{ran}");
    let said = ran["logs"].to_string();
    assert!(
        said.contains("attempt 1 ended agent_error; retry 1 of 1 in 10 ms"),
        "{said}"
    );
    assert_eq!(lines(&file), ["step 0", "step 1"]);

    // In its backoff, a retried run holds its lease: a resume is refused; a cancel ends the
    // wait (the client's 30 s read timeout is shorter than the minute's backoff).
    install_steps(&home, "patient", "retries = 1\nretry_backoff_ms = 60000\n");
    let file = home.path().join("calls-patient.txt");
    std::fs::write(format!("{}.crash", file.display()), "always step 0").expect("mark");
    let input = format!("steps 2 faulty {}", file.display());
    let mut waiting = daemon.client();
    let line = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "run",
                      "params": {"agent": "patient", "input": input, "stream": true}});
    waiting.send_raw(format!("{line}\n").as_bytes());
    let mut run_id = String::new();
    loop {
        let message = waiting.read().expect("a notification");
        match message["method"].as_str() {
            Some("run.started") => {
                run_id = message["params"]["run_id"].as_str().expect("id").to_owned();
            }
            Some("run.log") if message.to_string().contains("retry 1 of 1 in 60000 ms") => break,
            Some(_) => {}
            None => panic!("the run ended before its retry: {message}"),
        }
    }
    let refused = c.call("runs.resume", serde_json::json!({"run_id": run_id}));
    assert!(
        error_says(
            &refused,
            "is running or being retried (attempt 1, in process"
        ),
        "{refused}"
    );
    let cancelled = c.result("runs.cancel", serde_json::json!({"run_id": run_id}));
    assert_eq!(cancelled["cancelled"], true);
    let ended = loop {
        let message = waiting.read().expect("the result");
        if message.get("id").is_some() {
            break message;
        }
    };
    assert_eq!(ended["result"]["status"], "agent_error", "{ended}");
    let record = home.store().run(&run_id).expect("run").expect("recorded");
    assert_eq!(record.attempt, 1, "no retry after the cancel");
    assert_eq!(
        count(
            &home.store(),
            &format!("SELECT count(*) FROM run_leases WHERE run_id = '{run_id}'")
        ),
        0,
        "the lease was given back"
    );
    drop(waiting);
    drop(c);
    drop(daemon);
    assert_eq!(
        home.replay_every_run(),
        2,
        "the resumed and the retried run"
    );
    crate::tools::stop_and_count_leftovers(&home);
}

#[test]
fn a_run_killed_at_any_step_resumes_without_redoing_its_journaled_steps() {
    let home = durable_home();
    let trials = 200;
    for trial in 0..trials {
        // Any script in the tool's arguments and results: the journal keeps them as sent.
        let file = home.path().join(format!("calls-{trial}-日本語-é́-🦀.txt"));
        // Killed while it waits on a call (at a gate, before step `at`), after `at` steps:
        // the gate stays shut until the kill has landed, whatever the machine's speed.
        let at = trial % STEPS;
        let mark = PathBuf::from(format!("{}.hang", file.display()));
        let gate = PathBuf::from(format!("{}.gate", file.display()));
        std::fs::write(&gate, "").expect("gate");
        let input = format!("steps {STEPS} faulty {} {at}", file.display());
        let spawner = home
            .spawner(&["run", "steps", "--json", &input])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawner starts");
        wait_until("the run waits at its gate", || {
            std::fs::read_to_string(&mark).is_ok_and(|key| !key.is_empty())
        });
        let gate_key = std::fs::read_to_string(&mark).expect("the gate call's key");
        for pid in children_of(spawner.id()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let out = spawner.wait_with_output().expect("spawner ends");
        std::fs::remove_file(&gate).expect("open the gate");
        let ended = report(&out);
        let run_id = ended["run_id"].as_str().expect("run id").to_owned();
        assert_eq!(code(&out), exit_of(Outcome::Killed), "{}", stderr(&out));
        let journaled = journal_count(&home, &run_id, "tool") as usize;
        assert_eq!(
            journaled, at,
            "trial {trial}: the steps before the kill are journaled"
        );
        let before = lines(&file);

        let resumed = home.run(&["runs", "resume", &run_id]);
        assert_eq!(code(&resumed), 0, "trial {trial}: {}", stderr(&resumed));
        let answer = stdout(&resumed);
        let after = lines(&file);
        // The gate call, cut short by the kill, was made again with the same key.
        assert!(gate_key.starts_with(&format!("{run_id}:")), "{gate_key:?}");
        assert_eq!(
            std::fs::read_to_string(&mark).expect("the gate call's key, again"),
            gate_key,
            "trial {trial}: the call made again carries its first attempt's key"
        );
        // Every step ran once: those journaled before the kill were not made again.
        for step in 0..STEPS {
            let times = after
                .iter()
                .filter(|l| **l == format!("step {step}"))
                .count();
            assert!(
                times >= 1,
                "trial {trial}: step {step} never ran: {after:?}"
            );
            if step < journaled {
                assert_eq!(
                    times, 1,
                    "trial {trial}: journaled step {step} ran again: {after:?}"
                );
                // Its result is the journaled one (the line it was then), not a new call's.
                let line = before
                    .iter()
                    .position(|l| *l == format!("step {step}"))
                    .expect("ran")
                    + 1;
                assert!(
                    answer.contains(&format!(
                        "step {step}: recorded step {step} as line {line}\n"
                    )),
                    "trial {trial}: {answer}"
                );
            }
        }
        assert_eq!(after.len(), STEPS, "trial {trial}: {after:?}");
        let record = home.store().run(&run_id).expect("run").expect("recorded");
        assert_eq!(
            (record.status, record.attempt),
            (Outcome::Ok, 2),
            "trial {trial}"
        );
        // And the resumed run replays.
        let replay = home.run(&["runs", "replay", &run_id]);
        assert_eq!(code(&replay), 0, "trial {trial}: {}", stderr(&replay));
    }
    let integrity: String = home
        .store()
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(integrity, "ok");
    crate::tools::stop_and_count_leftovers(&home);
}

#[test]
fn a_resume_refuses_a_changed_component_unless_told_and_a_plain_agent_cannot_resume() {
    let home = durable_home();
    // A run that fails: its server is not one the agent may use (not journaled).
    let out = home.run(&["run", "steps", "--json", "steps 2 elsewhere /nonexistent"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError), "{}", stderr(&out));
    let run_id = report(&out)["run_id"].as_str().expect("id").to_owned();
    assert_eq!(journal_count(&home, &run_id, "component"), 1);
    assert_eq!(
        journal_count(&home, &run_id, "tool"),
        0,
        "a refused call is not journaled"
    );

    // Another component in its place.
    home.leave_unreplayed("its component is replaced below");
    std::fs::copy(
        crate::harness::wasm("echo"),
        home.agent_dir("steps").join("steps.wasm"),
    )
    .expect("copy");
    let refused = home.run(&["runs", "resume", &run_id]);
    assert_eq!(
        code(&refused),
        exit_of(Outcome::Diverged),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("component has changed")
            && stderr(&refused).contains("--allow-changed"),
        "{}",
        stderr(&refused)
    );
    let allowed = home.run(&["runs", "resume", "--allow-changed", &run_id]);
    assert_eq!(code(&allowed), 0, "{}", stderr(&allowed));
    assert_eq!(
        stdout(&allowed),
        "steps 2 elsewhere /nonexistent",
        "echo answers"
    );
    let record = home.store().run(&run_id).expect("run").expect("recorded");
    assert_eq!(record.attempt, 3, "two resumes");
    assert_eq!(record.status, Outcome::Ok);

    // An agent without a journal: its runs cannot be resumed, and say why.
    home.install_testing("plain", "");
    home.precompile("plain");
    let out = home.run(&["run", "plain", "--json", "fail"]);
    let plain = report(&out)["run_id"].as_str().expect("id").to_owned();
    let refused = home.run(&["runs", "resume", &plain]);
    assert_eq!(code(&refused), exit_of(Outcome::Usage));
    assert!(
        stderr(&refused).contains("[durable] journal = true"),
        "{}",
        stderr(&refused)
    );
    let missing = home.run(&["runs", "resume", "no-such-run"]);
    assert_eq!(code(&missing), exit_of(Outcome::Usage));
    assert!(stderr(&missing).contains("no run"), "{}", stderr(&missing));
}

#[test]
fn a_run_is_listed_while_it_runs_and_recorded_killed_when_its_processes_die_unrecorded() {
    let home = durable_home();
    let file = home.path().join("calls-en-cours-実行中.txt");
    let (mark, gate) = (
        PathBuf::from(format!("{}.hang", file.display())),
        PathBuf::from(format!("{}.gate", file.display())),
    );
    std::fs::write(&gate, "").expect("gate");
    // Three steps, held at the gate before step 1: step 0 is journaled by then.
    let input = format!("steps 3 faulty {} 1", file.display());
    let mut spawner = home
        .spawner(&["run", "steps", "--json", &input])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawner starts");
    wait_until("the run waits at its gate", || {
        std::fs::read_to_string(&mark).is_ok_and(|key| !key.is_empty())
    });
    let key = std::fs::read_to_string(&mark).expect("the gate call's key");
    let run_id = key.split(':').next().expect("run id").to_owned();
    let owner = spawner.id();

    // Seen from another process while it runs.
    let listed = home.run(&["runs", "--json"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let first: serde_json::Value =
        serde_json::from_str(stdout(&listed).lines().next().expect("a line")).expect("json");
    assert_eq!(first["run_id"], run_id.as_str(), "{first}");
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(first["owner_pid"], owner, "{first}");
    assert_eq!(first["attempt"], 1, "{first}");
    let shown = home.run(&["runs", "show", &run_id]);
    let text = stdout(&shown);
    assert!(
        text.contains(&format!("status running (attempt 1, in process {owner})")),
        "{text}"
    );
    assert!(
        text.contains(": tool at "),
        "its journaled tool call: {text}"
    );
    let refused = home.run(&["runs", "resume", &run_id]);
    assert_eq!(
        code(&refused),
        exit_of(Outcome::Usage),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("is running"),
        "{}",
        stderr(&refused)
    );

    // The spawner and its agent-exec are killed outright: neither can record the run.
    let children = children_of(owner);
    assert!(!children.is_empty(), "agent-exec runs");
    kill(Pid::from_raw(owner as i32), Signal::SIGKILL).expect("kill the spawner");
    spawner.wait().expect("spawner ends");
    for pid in &children {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    wait_until("agent-exec has ended", || {
        children
            .iter()
            .all(|pid| crate::harness::stat_field(*pid, 0).is_none_or(|s| s == "Z"))
    });
    std::fs::remove_file(&gate).expect("open the gate");
    assert!(
        home.store().run(&run_id).expect("run").is_none(),
        "nobody recorded the run"
    );

    // The next reader of runs finds it so, and records it killed, once.
    let listed = home.run(&["runs", "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(stdout(&listed).lines().next().expect("a line")).expect("json");
    assert_eq!(
        (&first["run_id"], &first["state"], &first["status"]),
        (&run_id.as_str().into(), &"ended".into(), &"killed".into()),
        "{first}"
    );
    assert!(
        first["error"].as_str().is_some_and(
            |e| e.contains(&format!("pid {owner}")) && e.contains("ended before it did")
        ),
        "{first}"
    );
    let markers = std::fs::read_dir(home.path().join("memory.db-running"))
        .expect("markers")
        .count();
    assert_eq!(markers, 0, "the marker is settled");

    // It kept its input, so it resumes, without redoing its journaled step.
    let resumed = home.run(&["runs", "resume", &run_id]);
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    let calls = lines(&file);
    assert_eq!(
        calls.iter().filter(|l| *l == "step 0").count(),
        1,
        "{calls:?}"
    );
    assert_eq!(calls.len(), 3, "{calls:?}");
    let record = home.store().run(&run_id).expect("run").expect("recorded");
    assert_eq!((record.status, record.attempt), (Outcome::Ok, 2));
    crate::tools::stop_and_count_leftovers(&home);
}

#[test]
fn agent_exec_runs_a_marked_run_only_while_its_marker_stands() {
    use memory_store::running::{Marker, Started};
    let home = TestHome::new();
    home.install_example("echo");
    home.precompile("echo");
    let store_path = home.path().join("memory.db");
    let marked = |run_id: &str| {
        let child = crate::harness::start_agent_exec_with(&home, "echo", "héllo", |h| {
            h.run_id = run_id.to_owned();
            h.marked = true;
        });
        child.wait_with_output().expect("agent-exec ends")
    };

    // Its owner (this test) holds the marker: the run runs and is recorded.
    let owned = Marker::create(
        &store_path,
        Started {
            run_id: "owned-1".into(),
            agent: "echo".into(),
            started_at_ms: memory_store::now_ms(),
            attempt: 1,
            parent_run_id: None,
            owner_pid: std::process::id(),
            keep_runs: 100,
            input: None,
        },
    )
    .expect("mark");
    let out = marked("owned-1");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "héllo");
    drop(owned);
    assert_eq!(
        home.store()
            .run("owned-1")
            .expect("run")
            .expect("recorded")
            .status,
        Outcome::Ok
    );

    // Its marker is gone (settled as killed once its owner died): it runs nothing and
    // records nothing.
    let out = marked("settled-1");
    assert_eq!(code(&out), exit_of(Outcome::Killed), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("recorded as killed before it could start"),
        "{}",
        stderr(&out)
    );
    assert!(home.store().run("settled-1").expect("run").is_none());
}
