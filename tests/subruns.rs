//! Sub-runs through the real binaries: the testing agent as a parent (`fan`) starting
//! runs of itself (`kid`) with `runs.start` and joining them, from the command line and
//! through the daemon; admission, order, cancel, refusals, and a durable parent resumed
//! and replayed without running its finished children again.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{TestHome, code, exit_of, report, stderr, stdout};
use agent_contract::Outcome;

/// A home with `fan` (the testing agent, which may start `kid`s, `parallel` at once, and
/// `durable` in its `[durable]`) and `kid` (the testing agent), both compiled.
fn fan_home(parallel: u32, durable: &str) -> TestHome {
    let home = TestHome::new();
    home.install_testing(
        "fan",
        &format!(
            "[limits]\ntimeout_ms = 60000\n\n[runs]\nagents = [\"kid\"]\nparallel = {parallel}\nmax = 64\n\n[durable]\n{durable}"
        ),
    );
    home.install_testing("kid", "[limits]\ntimeout_ms = 60000\n");
    home.precompile("fan");
    home.precompile("kid");
    home
}

/// One line of a fan-out's answer: `<n> <run id> <status> <rest>`.
struct Line {
    child: u32,
    run_id: String,
    status: String,
    rest: String,
}

fn lines_of(answer: &str) -> Vec<Line> {
    answer
        .lines()
        .filter(|l| {
            l.split(' ')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let mut next = || parts.next().unwrap_or("").to_owned();
            Line {
                child: next().parse().expect("child number"),
                run_id: next(),
                status: next(),
                rest: next(),
            }
        })
        .collect()
}

/// The most intervals `(start, end)` open at one instant.
fn most_at_once(intervals: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // An end and a start at the same instant do not overlap.
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        open += delta;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

#[test]
fn a_fan_out_of_64_runs_at_most_4_at_once_and_answers_in_the_order_asked() {
    let home = fan_home(4, "");
    let out = home.run(&["run", "fan", "--json", "fan-out", "kid", "64", "busy", "20"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let parent = report(&out);
    let parent_id = parent["run_id"].as_str().expect("run id").to_owned();
    let answer = parent["output"].as_str().expect("output");
    let lines = lines_of(answer);
    assert_eq!(lines.len(), 64, "{answer}");
    let mut intervals = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.child as usize, i, "joined in the order asked");
        assert_eq!(
            line.run_id,
            format!("{parent_id}.{i}"),
            "derived from the parent's"
        );
        assert_eq!(line.status, "ok", "{answer}");
        let (start, end) = line.rest.split_once(' ').expect("two clock readings");
        intervals.push((
            start.parse::<u128>().expect("start"),
            end.parse::<u128>().expect("end"),
        ));
    }
    let most = most_at_once(&intervals);
    assert!(
        most <= 4,
        "{most} sub-runs ran at once; [runs] parallel is 4"
    );

    // Each child has its own record, linked to its parent, in the order started.
    let store = home.store();
    let children = store.children(&parent_id).expect("children");
    assert_eq!(children.len(), 64);
    for (i, child) in children.iter().enumerate() {
        assert_eq!(child.run_id, format!("{parent_id}.{i}"));
        assert_eq!(child.parent_run_id.as_deref(), Some(parent_id.as_str()));
        assert_eq!((child.agent.as_str(), child.status), ("kid", Outcome::Ok));
    }
    let record = store
        .run(&parent_id)
        .expect("run")
        .expect("parent recorded");
    assert_eq!((record.status, record.parent_run_id), (Outcome::Ok, None));

    // `spawner runs` folds the children into their parent; `runs show` lists them.
    let listed = stdout(&home.run(&["runs"]));
    assert!(listed.contains("+ 64 sub-runs: 64 ok"), "{listed}");
    assert!(!listed.contains(&format!("{parent_id}.0")), "{listed}");
    let of_kid = stdout(&home.run(&["runs", "--agent", "kid", "--limit", "5"]));
    assert_eq!(
        of_kid.lines().filter(|l| l.contains(&parent_id)).count(),
        5,
        "{of_kid}"
    );
    let shown = stdout(&home.run(&["runs", "show", &parent_id]));
    assert!(
        shown.contains(&format!("sub-run {parent_id}.63: kid ok (exit 0)")),
        "{shown}"
    );
    let child = stdout(&home.run(&["runs", "show", &format!("{parent_id}.7")]));
    assert!(
        child.contains(&format!("sub-run of {parent_id}\n")),
        "{child}"
    );
    let json = stdout(&home.run(&["runs", "show", &parent_id, "--json"]));
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        json["sub_runs"].as_array().map(Vec::len),
        Some(64),
        "{json}"
    );
}

#[test]
fn a_parent_in_a_daemon_of_one_slot_lends_it_to_its_children() {
    // With one slot, a parent that held it while joining would wait forever for children
    // that need it: the client's 30 s read timeout would fail the test.
    let home = fan_home(4, "");
    let daemon = crate::serve::Daemon::start(&home, &["--max-running", "1", "--spares", "0"]);
    let mut c = daemon.client();
    let ran = c.result(
        "run",
        serde_json::json!({"agent": "fan", "input": "fan-out kid 6 busy 5"}),
    );
    assert_eq!(ran["status"], "ok", "{ran}");
    let lines = lines_of(ran["output"].as_str().expect("output"));
    assert_eq!(lines.len(), 6);
    let intervals: Vec<(u128, u128)> = lines
        .iter()
        .map(|l| {
            let (a, b) = l.rest.split_once(' ').expect("two readings");
            (a.parse().expect("start"), b.parse().expect("end"))
        })
        .collect();
    assert_eq!(most_at_once(&intervals), 1, "one slot: one run at a time");
    let parent_id = ran["run_id"].as_str().expect("run id");
    let listed = c.result("runs.list", serde_json::json!({}));
    let runs = listed["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "children folded: {listed}");
    assert_eq!(
        runs[0]["sub_runs"],
        serde_json::json!({"ok": 6}),
        "{listed}"
    );
    let got = c.result("runs.get", serde_json::json!({"run_id": parent_id}));
    assert_eq!(got["sub_runs"].as_array().map(Vec::len), Some(6), "{got}");
    // The slot came back: the daemon serves the next run.
    let next = c.result(
        "run",
        serde_json::json!({"agent": "kid", "input": "busy 1"}),
    );
    assert_eq!(next["status"], "ok", "{next}");
}

#[test]
fn stopping_a_parent_cancels_its_children_and_starts_no_more() {
    let home = fan_home(2, "");
    let mut child = home
        .spawner(&[
            "run",
            "--log-level",
            "info",
            "fan",
            "fan-out",
            "kid",
            "5",
            "put-then-loop",
            "k",
            "v",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawner starts");
    // The children's log lines (at the parent's level) reach the spawner's standard
    // error: two running.
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = 0;
    let mut line = String::new();
    while seen < 2 {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("stderr") > 0,
            "the run ended early"
        );
        seen += usize::from(line.contains("wrote, now looping"));
    }
    let pids = crate::harness::children_of(child.id());
    assert_eq!(
        pids.len(),
        3,
        "the parent's agent-exec and two children: {pids:?}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("spawner ends");
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "128 + the signal, as shells expect"
    );
    for pid in pids {
        assert!(
            crate::harness::stat_field(pid, 3).is_none(),
            "process {pid} outlived its run"
        );
    }
    let store = home.store();
    let parent = store
        .runs(&memory_store::RunFilter {
            agent: Some("fan".into()),
            limit: 1,
        })
        .expect("runs")
        .pop()
        .expect("the parent's record");
    assert_eq!(parent.status, Outcome::Killed);
    let children = store.children(&parent.run_id).expect("children");
    assert_eq!(children.len(), 2, "the three still waiting never started");
    for c in &children {
        assert_eq!(c.status, Outcome::Killed, "{c:?}");
        assert!(
            c.error.as_deref().is_some_and(|e| e.contains("cancelled")),
            "{c:?}"
        );
    }
}

#[test]
fn in_the_daemon_sub_runs_are_listed_streamed_and_cancelled_alone_or_with_their_parent() {
    let home = fan_home(2, "");
    let daemon = crate::serve::Daemon::start(&home, &["--spares", "0"]);
    let mut a = daemon.client();
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "run", "params": {
        "agent": "fan", "input": "fan-out kid 5 put-then-loop k v",
        "stream": true, "log_level": "info"}});
    a.send_raw(format!("{call}\n").as_bytes());
    let started = a.read().expect("run.started");
    assert_eq!(started["method"], "run.started", "{started}");
    let parent = started["params"]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    // The children's log lines reach the client, each under the child's own run id:
    // two running.
    let mut looping = std::collections::BTreeSet::new();
    while looping.len() < 2 {
        let note = a.read().expect("a notification");
        assert!(note.get("id").is_none(), "the run ended early: {note}");
        if note["method"] == "run.log" && note["params"]["line"].to_string().contains("now looping")
        {
            looping.insert(note["params"]["run_id"].as_str().expect("id").to_owned());
        }
    }
    for id in &looping {
        assert!(id.starts_with(&format!("{parent}.")), "{id} of {parent}");
    }
    let pids = crate::harness::children_of(daemon.pid());
    assert_eq!(pids.len(), 3, "the parent and two children: {pids:?}");
    let mut b = daemon.client();
    let mut active = || {
        let listed = b.result("runs.active", serde_json::json!({}));
        listed["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| {
                (
                    r["run_id"].as_str().expect("id").to_owned(),
                    r["parent_run_id"].as_str().map(str::to_owned),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let listed = active();
    assert_eq!(listed.get(&parent), Some(&None), "{listed:?}");
    for id in &looping {
        assert_eq!(listed.get(id), Some(&Some(parent.clone())), "{listed:?}");
    }

    // One child cancelled alone: its slot goes to the next child waiting.
    let first = looping.iter().next().expect("a child").clone();
    let mut c = daemon.client();
    let cancelled = c.result("runs.cancel", serde_json::json!({"run_id": first}));
    assert_eq!(cancelled["cancelled"], true);
    crate::harness::wait_until("the next child runs in the cancelled one's slot", || {
        let now = active();
        !now.contains_key(&first) && now.len() == 3 && now.contains_key(&parent)
    });

    let cancelled = c.result("runs.cancel", serde_json::json!({"run_id": parent}));
    assert_eq!(cancelled["cancelled"], true);
    let answer = loop {
        let line = a.read().expect("the run's answer");
        if line.get("id").is_some() {
            break line;
        }
    };
    assert_eq!(answer["result"]["status"], "killed", "{answer}");
    assert_eq!(answer["result"]["error"], "the run was cancelled");
    for pid in pids {
        assert!(
            crate::harness::stat_field(pid, 3).is_none(),
            "process {pid} outlived its run"
        );
    }
    assert!(
        crate::harness::children_of(daemon.pid()).is_empty(),
        "no process left"
    );
    let got = c.result("runs.get", serde_json::json!({"run_id": parent}));
    let children = got["sub_runs"].as_array().expect("sub_runs");
    assert_eq!(
        children.len(),
        3,
        "the two still waiting never started: {got}"
    );
    for child in children {
        assert_eq!(child["status"], "killed", "{child}");
        assert_eq!(child["error"], "the run was cancelled", "{child}");
    }
    assert!(active().is_empty());
    // The daemon serves on.
    let next = c.result(
        "run",
        serde_json::json!({"agent": "kid", "input": "busy 1"}),
    );
    assert_eq!(next["status"], "ok", "{next}");
}

#[test]
fn sub_run_inputs_and_answers_in_any_script_arrive_whole() {
    let home = fan_home(2, "");
    let out = home.run(&[
        "run",
        "fan",
        "fan-out",
        "kid",
        "3",
        "Ζωή-{i}",
        "🦀",
        "最後の行",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines = lines_of(&stdout(&out));
    assert_eq!(lines.len(), 3, "{}", stdout(&out));
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.child as usize, i);
        assert_eq!(line.status, "ok");
        // `kid` answers its input: the parent's words, its number in place of `{i}`.
        assert_eq!(line.rest, format!("Ζωή-{i} 🦀 最後の行"));
    }
    let show = home.run(&["runs", "show", &lines[0].run_id]);
    assert_eq!(code(&show), 0, "{}", stderr(&show));
}

#[test]
fn a_daemon_run_with_an_unknown_log_level_is_refused_before_it_starts() {
    let home = fan_home(2, "");
    let daemon = crate::serve::Daemon::start(&home, &["--spares", "0"]);
    let mut c = daemon.client();
    let refused = c.call(
        "run",
        serde_json::json!({"agent": "kid", "input": "busy 1", "log_level": "loud"}),
    );
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"loud\"") && m.contains("info")),
        "{refused}"
    );
    let listed = c.result("runs.list", serde_json::json!({}));
    assert_eq!(
        listed["runs"],
        serde_json::json!([]),
        "nothing ran: {listed}"
    );
}

#[test]
fn a_sub_run_of_an_agent_not_listed_is_refused() {
    let home = fan_home(4, "");
    home.install_example("echo");
    let out = home.run(&["run", "fan", "fan-out", "echo", "1", "hi"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError));
    assert!(
        stderr(&out).contains("agent \\\"echo\\\" is not in this agent's [runs] agents (kid)"),
        "{}",
        stderr(&out)
    );
    // An agent with no [runs] may start none.
    let out = home.run(&["run", "kid", "fan-out", "kid", "1", "busy", "1"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError));
    assert!(
        stderr(&out).contains("[runs] agents (none)"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_resumed_parent_is_handed_its_finished_children_and_reruns_only_the_failed_one() {
    let home = fan_home(4, "journal = true\n");
    let out = home.run(&[
        "run",
        "fan",
        "--json",
        "fan-out",
        "kid",
        "3",
        "fail-once-at",
        "{i}",
        "2",
    ]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError), "{}", stderr(&out));
    let first = report(&out);
    let parent_id = first["run_id"].as_str().expect("run id").to_owned();
    let error = first["error"].as_str().expect("error");
    assert!(
        error.contains("agent_error failed: child 2 fails once"),
        "{error}"
    );
    let attempts = |home: &TestHome| -> Vec<(u32, Outcome)> {
        home.store()
            .children(&parent_id)
            .expect("children")
            .iter()
            .map(|c| (c.attempt, c.status))
            .collect()
    };
    assert_eq!(
        attempts(&home),
        [(1, Outcome::Ok), (1, Outcome::Ok), (1, Outcome::AgentError)]
    );

    let out = home.run(&["runs", "resume", &parent_id, "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let resumed = report(&out);
    let answer = resumed["output"].as_str().expect("output").to_owned();
    let lines = lines_of(&answer);
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.status.as_str(), l.rest.as_str()))
            .collect::<Vec<_>>(),
        [
            ("ok", "child 0 done"),
            ("ok", "child 1 done"),
            ("ok", "child 2 done")
        ]
    );
    // Children 0 and 1 did not run again; child 2 ran its second attempt.
    assert_eq!(
        attempts(&home),
        [(1, Outcome::Ok), (1, Outcome::Ok), (2, Outcome::Ok)]
    );

    // A replay starts no child, and answers the same.
    let out = home.run(&["runs", "replay", &parent_id, "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(report(&out)["output"].as_str(), Some(answer.as_str()));
    assert_eq!(
        attempts(&home),
        [(1, Outcome::Ok), (1, Outcome::Ok), (2, Outcome::Ok)]
    );
}

/// The review example's diff: two new files, `greet.py` and `deploy.env`; the second adds
/// an AWS key id.
pub fn review_diff() -> String {
    std::fs::read_to_string(crate::harness::root().join("agents/review/example.diff"))
        .expect("agents/review/example.diff")
}

/// The review example with secret-guard, `notes` as given.
pub fn review_home(home: &TestHome, notes: bool) {
    home.install_example("secret-guard");
    let manifest = std::fs::read_to_string(crate::harness::root().join("agents/review/agent.toml"))
        .expect("review's manifest");
    let manifest = manifest.replace("notes = true", &format!("notes = {notes}"));
    home.install("review", "review", &manifest);
    home.precompile("review");
    home.precompile("secret-guard");
}

#[test]
fn review_scans_each_file_in_a_sub_run_and_names_the_one_with_a_secret() {
    let home = TestHome::new();
    review_home(&home, false);
    let out = home.run_with_stdin(&["run", "review", "--json"], review_diff().as_bytes());
    assert_eq!(code(&out), exit_of(Outcome::Rejected), "{}", stderr(&out));
    let review = report(&out);
    let said = review["error"].as_str().expect("error");
    assert!(
        said.contains("greet.py:\n  secrets: no secrets found\n"),
        "{said}"
    );
    assert!(said.contains("deploy.env:2: AWS access key id"), "{said}");
    assert!(
        said.contains("2 file(s) reviewed, 1 with secrets"),
        "{said}"
    );
    assert!(
        !said.contains("AKIAZ7QW3RT5YU8PLM2K"),
        "the secret is not repeated: {said}"
    );
    let run_id = review["run_id"].as_str().expect("run id");
    let children = home.store().children(run_id).expect("children");
    assert_eq!(
        children
            .iter()
            .map(|c| (c.agent.as_str(), c.status))
            .collect::<Vec<_>>(),
        [
            ("secret-guard", Outcome::Ok),
            ("secret-guard", Outcome::Rejected)
        ]
    );
    // A clean diff passes; no diff is refused before any sub-run.
    let clean: String = review_diff()
        .split("diff --git a/deploy.env")
        .next()
        .unwrap_or("")
        .into();
    let out = home.run_with_stdin(&["run", "review"], clean.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with("1 file(s) reviewed, 0 with secrets\n"),
        "{}",
        stdout(&out)
    );
    let out = home.run_with_stdin(&["run", "review"], b"");
    assert_eq!(code(&out), exit_of(Outcome::AgentError), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pipe a unified diff"),
        "{}",
        stderr(&out)
    );
}

/// The answers of fan-outs `fan-out kid 4 busy <ms>` started at the same time in one home
/// of `slots` run slots: each has its 4 children, and no more than `slots` children ran at
/// once among them. (Each process alone has `slots` of its own: without the home's, their
/// children overlap, 4 at once here. With them, the fan-outs may also take turns.)
fn assert_bounded_together(answers: &[String], slots: usize) {
    let mut intervals = Vec::new();
    for answer in answers {
        let lines = lines_of(answer);
        assert_eq!(lines.len(), 4, "{answer}");
        let mine: Vec<(u128, u128)> = lines
            .iter()
            .map(|l| {
                let mut at = l
                    .rest
                    .split(' ')
                    .map(|w| w.parse().expect("a clock reading"));
                (at.next().expect("start"), at.next().expect("end"))
            })
            .collect();
        intervals.extend(mine);
    }
    let most = most_at_once(&intervals);
    assert!(
        most <= slots,
        "{most} children of separate fan-outs ran at once; the home has {slots} slots"
    );
}

/// `spawner run fan --max-running 2 fan-out kid 4 busy 400`, started.
fn start_fan_out(home: &TestHome) -> std::process::Child {
    home.spawner(&[
        "run",
        "fan",
        "--max-running",
        "2",
        "fan-out",
        "kid",
        "4",
        "busy",
        "400",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawner starts")
}

/// Its answer, once it has ended well.
fn answer_of(run: std::process::Child) -> String {
    let out = run.wait_with_output().expect("spawner ends");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

#[test]
fn fan_outs_of_separate_command_lines_share_the_homes_slots() {
    let home = fan_home(4, "");
    // Two `spawner run`s at once, each allowed 2 runs at work: the home's 2 slots bound
    // their children together, where each process alone would run 2.
    let runs = [start_fan_out(&home), start_fan_out(&home)];
    let answers: Vec<String> = runs.into_iter().map(answer_of).collect();
    assert_bounded_together(&answers, 2);
}

#[test]
fn a_fan_out_on_the_command_line_and_one_in_the_daemon_share_the_homes_slots() {
    let home = fan_home(4, "");
    let daemon = crate::serve::Daemon::start(&home, &["--max-running", "2"]);
    let mut client = daemon.client();
    let run = start_fan_out(&home);
    let result = client.result(
        "run",
        serde_json::json!({"agent": "fan", "input": "fan-out kid 4 busy 400"}),
    );
    let from_daemon = result["output"].as_str().expect("output").to_owned();
    assert_bounded_together(&[answer_of(run), from_daemon], 2);
}

#[test]
fn a_nested_fan_out_on_the_command_line_shares_one_gate_at_every_depth() {
    let home = TestHome::new();
    let fans_out_to = |agent: &str| {
        format!("[limits]\ntimeout_ms = 120000\n\n[runs]\nagents = [\"{agent}\"]\nparallel = 4\n")
    };
    home.install_testing("fan", &fans_out_to("mid"));
    home.install_testing("mid", &fans_out_to("kid"));
    home.install_testing("kid", "[limits]\ntimeout_ms = 60000\n");
    for agent in ["fan", "mid", "kid"] {
        home.precompile(agent);
    }
    // 4 x 4 grandchildren, `parallel = 4` at each depth: 16 at once without a shared
    // gate; the command line's 3 slots bound them all.
    let out = home.run(&[
        "run",
        "fan",
        "--max-running",
        "3",
        "--json",
        "fan-out",
        "mid",
        "4",
        "fan-out",
        "kid",
        "4",
        "busy",
        "150",
    ]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let parent = report(&out);
    let parent_id = parent["run_id"].as_str().expect("run id").to_owned();
    let answer = parent["output"].as_str().expect("output");
    // A grandchild's line: `<j> <parent>.<i>.<j> ok <start> <end>`, among its parent's.
    let mut intervals = Vec::new();
    for line in answer.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (k, word) in words.iter().enumerate() {
            if word.starts_with(&format!("{parent_id}.")) && word.matches('.').count() == 2 {
                assert_eq!(words.get(k + 1), Some(&"ok"), "{line}");
                let at = |n: usize| -> u128 { words[k + n].parse().expect("a clock reading") };
                intervals.push((at(2), at(3)));
            }
        }
    }
    assert_eq!(intervals.len(), 16, "{answer}");
    let most = most_at_once(&intervals);
    assert!(
        most <= 3,
        "{most} grandchildren ran at once; --max-running is 3"
    );
    let store = home.store();
    let children = store.children(&parent_id).expect("children");
    assert_eq!(children.len(), 4);
    for child in &children {
        assert_eq!(
            store.children(&child.run_id).expect("grandchildren").len(),
            4
        );
    }

    // One slot: every parent lends it while it waits, so the fan-out still completes.
    let out = home.run(&[
        "run",
        "fan",
        "--max-running",
        "1",
        "fan-out",
        "mid",
        "2",
        "fan-out",
        "kid",
        "2",
        "busy",
        "1",
    ]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).matches(" ok ").count(), 6, "{}", stdout(&out));
    // Not with the daemon, which has its own bound.
    let out = home.run(&["run", "fan", "--daemon", "--max-running", "2", "x"]);
    assert_eq!(code(&out), exit_of(Outcome::Usage), "{}", stderr(&out));
}
