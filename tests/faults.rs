use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_contract::Outcome;

use crate::harness::{
    TestHome, children_of, code, count, exit_of, report, start_agent_exec, stderr, stdout,
    wait_for_line,
};

/// A home with the testing agent as `lab` (300 ms deadline, 32 MiB cap) and a value
/// stored by an earlier, successful run.
fn lab() -> TestHome {
    let home = TestHome::new();
    home.install_testing("lab", "[limits]\ntimeout_ms = 300\nmemory_mb = 32\n");
    home.precompile("lab");
    let out = home.run(&["run", "lab", "put", "kept", "before"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    home
}

/// The run ended as `outcome`, was recorded so, and the store is intact with the earlier
/// value still there.
fn assert_recorded_and_intact(home: &TestHome, out: &std::process::Output, outcome: Outcome) {
    assert_eq!(code(out), exit_of(outcome), "{}", stderr(out));
    let r = report(out);
    assert_eq!(r["status"], outcome.as_str());
    let store = home.store();
    let record = store
        .run(r["run_id"].as_str().expect("run id"))
        .expect("query")
        .expect("the failed run is recorded");
    assert_eq!(record.status, outcome);
    assert!(record.error.is_some());
    assert_eq!(store.integrity_check().expect("check"), "ok");
    let after = home.run(&["run", "lab", "get", "kept"]);
    assert_eq!(stdout(&after), "before");
}

#[test]
fn a_panicking_agent_is_a_trap_with_its_message() {
    let home = lab();
    let out = home.run(&["run", "--json", "lab", "panic"]);
    assert!(
        stderr(&out).contains("testing agent was asked to panic"),
        "the guest's panic message reaches stderr: {}",
        stderr(&out)
    );
    assert_recorded_and_intact(&home, &out, Outcome::Trap);
}

#[test]
fn an_unreachable_instruction_is_a_trap() {
    let home = lab();
    let out = home.run(&["run", "--json", "lab", "unreachable"]);
    assert!(
        report(&out)["error"]
            .as_str()
            .expect("error")
            .contains("unreachable")
    );
    assert_recorded_and_intact(&home, &out, Outcome::Trap);
}

#[test]
fn an_agent_that_runs_forever_is_stopped_at_its_deadline() {
    let home = lab();
    let started = Instant::now();
    let out = home.run(&["run", "--json", "lab", "loop"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        report(&out)["error"]
            .as_str()
            .expect("error")
            .contains("300 ms")
    );
    assert_recorded_and_intact(&home, &out, Outcome::Timeout);
}

#[test]
fn the_command_line_timeout_overrides_the_manifest() {
    let home = TestHome::new();
    home.install_testing("lab", "[limits]\ntimeout_ms = 60000\n");
    let started = Instant::now();
    let out = home.run(&["run", "--json", "--timeout", "200ms", "lab", "loop"]);
    assert_eq!(code(&out), exit_of(Outcome::Timeout));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        report(&out)["error"]
            .as_str()
            .expect("error")
            .contains("200 ms")
    );
}

#[test]
fn fuel_exhaustion_stops_an_agent() {
    let home = TestHome::new();
    home.install_testing("lab", "[limits]\ntimeout_ms = 60000\nfuel = 5000000\n");
    let out = home.run(&["run", "--json", "lab", "loop"]);
    assert_eq!(code(&out), exit_of(Outcome::Timeout), "{}", stderr(&out));
    assert!(
        report(&out)["error"]
            .as_str()
            .expect("error")
            .contains("fuel")
    );
}

#[test]
fn an_agent_allocating_without_bound_stops_at_its_memory_cap() {
    let home = lab();
    let out = home.run(&["run", "--json", "lab", "alloc"]);
    let error = report(&out)["error"].as_str().expect("error").to_owned();
    assert!(
        error.contains("memory cap") && error.contains("33554432"),
        "{error}"
    );
    assert_recorded_and_intact(&home, &out, Outcome::MemoryLimit);
}

#[test]
fn handler_errors_keep_their_writes_but_traps_discard_them() {
    let home = lab();
    let out = home.run(&["run", "lab", "fail"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError));
    assert!(stderr(&out).contains("asked to fail"), "{}", stderr(&out));
    assert_eq!(
        stdout(&home.run(&["run", "lab", "get", "attempt"])),
        "failed"
    );
    let out = home.run(&["run", "lab", "reject"]);
    assert_eq!(code(&out), exit_of(Outcome::Rejected));
    assert_eq!(
        stdout(&home.run(&["run", "lab", "get", "attempt"])),
        "rejected"
    );
    // put-then-loop writes, then is stopped at the deadline: the write is discarded.
    let out = home.run(&["run", "lab", "put-then-loop", "doomed", "x"]);
    assert_eq!(code(&out), exit_of(Outcome::Timeout));
    assert_eq!(
        stdout(&home.run(&["run", "lab", "get", "doomed"])),
        "(none)"
    );
}

#[test]
fn agent_exec_killed_mid_run_leaves_the_store_intact_with_no_partial_write() {
    let home = TestHome::new();
    home.install_testing("lab", "[limits]\ntimeout_ms = 60000\n");
    let mut child = start_agent_exec(&home, "lab", "put-then-loop half written", "info");
    let stderr_pipe = child.stderr.take().expect("stderr");
    assert!(
        wait_for_line(stderr_pipe, "wrote, now looping"),
        "the agent reached its loop"
    );
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    child.wait().expect("reap");

    let store = home.store();
    assert_eq!(store.integrity_check().expect("check"), "ok");
    let kv = count(&store, "SELECT count(*) FROM kv WHERE key = 'half'");
    let events = count(&store, "SELECT count(*) FROM events WHERE kind = 'partial'");
    assert_eq!((kv, events), (0, 0), "no partial write is visible");
    let ok = count(&store, "SELECT count(*) FROM runs WHERE status = 'ok'");
    assert_eq!(ok, 0, "nothing recorded as success");
}

#[test]
fn runs_without_memory_are_recorded_once_wherever_agent_exec_is_killed() {
    // echo reads and writes no memory: its record goes to the run log, not through SQLite.
    // Kill its agent-exec at spread-out points of its run (before, during and after the
    // append); whatever survives, every run has one record, and it says what the spawner
    // answered.
    let home = TestHome::new();
    home.install_example("echo");
    home.precompile("echo");
    let mut answered = Vec::new();
    for i in 0..40u64 {
        let mut spawner = home
            .spawner(&["run", "--json", "echo", &format!("run {i}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Its agent-exec, once started; none when the run was over before it was seen (a
        // run whose spawner has exited has no child left to find: looking on would only
        // spin).
        let child = loop {
            if let Some(pid) = children_of(spawner.id()).first().copied() {
                break Some(pid);
            }
            if spawner.try_wait().expect("try_wait").is_some() {
                break None;
            }
        };
        if let Some(pid) = child {
            let at = Instant::now() + Duration::from_micros(i * 60);
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let out = spawner.wait_with_output().expect("wait");
        // Killed after it wrote its report and before it exited, agent-exec leaves its
        // report and the spawner's after it: the spawner's, last, is the answer.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        let r: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\n{}", stderr(&out)));
        answered.push((
            r["run_id"].as_str().expect("run id").to_owned(),
            r["status"].as_str().expect("status").to_owned(),
        ));
    }
    let store = home.store();
    assert_eq!(store.integrity_check().expect("check"), "ok");
    assert_eq!(count(&store, "SELECT count(*) FROM runs"), 40);
    for (run_id, status) in &answered {
        let record = store.run(run_id).expect("query").expect("recorded");
        assert_eq!(record.status.as_str(), status, "run {run_id}");
    }
    let log = home.path().join("memory.db-runs");
    assert_eq!(
        std::fs::metadata(&log).map_or(0, |m| m.len()),
        0,
        "imported"
    );
    // Where the kills fell depends on the machine's speed; what each run ended as does not
    // matter, only that it is told and recorded alike.
    assert!(
        answered.iter().all(|(_, s)| s == "ok" || s == "killed"),
        "{answered:?}"
    );
}

#[test]
fn spawner_reports_an_agent_exec_killed_from_outside() {
    let home = TestHome::new();
    home.install_testing("lab", "[limits]\ntimeout_ms = 60000\n");
    // Compiled ahead: the first child is then the run's own agent-exec.
    home.precompile("lab");
    let mut spawner = home
        .spawner(&[
            "run",
            "--json",
            "--log-level",
            "info",
            "lab",
            "put-then-loop",
            "half",
            "x",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let agent_exec = (0..500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            children_of(spawner.id()).first().copied()
        })
        .expect("spawner started agent-exec");
    let stderr_pipe = spawner.stderr.take().expect("stderr");
    assert!(
        wait_for_line(stderr_pipe, "wrote, now looping"),
        "the agent reached its loop"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_exec as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let out = spawner.wait_with_output().expect("wait");
    assert_eq!(code(&out), exit_of(Outcome::Killed));
    let r = report(&out);
    assert_eq!(r["status"], "killed");
    let store = home.store();
    let record = store
        .run(r["run_id"].as_str().expect("id"))
        .expect("query")
        .expect("spawner recorded the run");
    assert_eq!(record.status, Outcome::Killed);
    assert_eq!(store.integrity_check().expect("check"), "ok");
    assert_eq!(count(&store, "SELECT count(*) FROM kv"), 0);
}

#[test]
fn a_corrupt_compiled_cache_entry_is_detected_and_rebuilt() {
    let home = TestHome::new();
    home.install_example("echo");
    assert_eq!(
        report(&home.run(&["run", "--json", "echo", "a"]))["cache_hit"],
        false
    );
    let cache = home.path().join("cache/components");
    let entry = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a cache entry");

    // Flip bytes in the middle of the entry: its seal (mtime) is broken by the write.
    let mut bytes = std::fs::read(&entry).expect("read");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&entry, &bytes).expect("write");
    let out = home.run(&["run", "--json", "echo", "still works"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(r["output"], "still works");
    assert_eq!(r["cache_hit"], false, "the corrupt entry was not trusted");
    assert!(
        stderr(&out).contains("modified since the cache wrote it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        report(&home.run(&["run", "--json", "echo", "b"]))["cache_hit"],
        true
    );

    // A truncated entry, too.
    let len = std::fs::metadata(&entry).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&entry)
        .expect("open")
        .set_len(len / 3)
        .expect("truncate");
    let r = report(&home.run(&["run", "--json", "echo", "c"]));
    assert_eq!(
        (r["output"].as_str(), r["cache_hit"].as_bool()),
        (Some("c"), Some(false))
    );
}

#[test]
fn the_compiled_cache_follows_the_component_files_contents() {
    let home = TestHome::new();
    home.install_example("echo");
    let component = home.agent_dir("echo").join("echo.wasm");
    // Whether the run was a cache hit, and what it answered.
    let run = |input: &str| {
        let out = home.run(&["run", "--json", "echo", input]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let r = report(&out);
        assert!(
            r["output"].as_str().expect("output").starts_with(input),
            "{r}"
        );
        (
            r["cache_hit"].as_bool().expect("cache_hit"),
            r["output"].clone(),
        )
    };
    assert!(!run("a").0, "the first run compiles");
    assert_eq!(run("b"), (true, "b".into()));
    // Installed again with the same bytes (a new file: another inode, new times): the
    // component is hashed once, found unchanged, and not compiled again.
    std::fs::remove_file(&component).expect("remove");
    std::fs::copy(crate::harness::wasm("echo"), &component).expect("copy");
    assert_eq!(
        run("c"),
        (true, "c".into()),
        "the same bytes are not compiled again"
    );
    // Overwritten in place (the same inode) by another component that does echo's job.
    std::fs::write(
        &component,
        std::fs::read(crate::harness::wasm("bulky")).expect("bulky"),
    )
    .expect("overwrite");
    // bulky answers its input followed by a byte of its table.
    let (hit, output) = run("d");
    assert!(!hit, "a changed component is compiled afresh");
    assert_ne!(output, "d", "the new component ran");
    assert!(run("e").0);
}

#[test]
fn an_agent_exec_failing_with_a_foreign_exit_code_is_recorded_as_internal() {
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new();
    home.install_example("echo");
    // Stands in for an agent-exec that panicked (Rust exits with 101 then).
    let fake = home.path().join("fake-agent-exec");
    std::fs::write(&fake, "#!/bin/sh\nexit 101\n").expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Another test thread may fork while the script is still open for writing; exec then
    // fails with ETXTBSY for a moment. That is the test's race, not the spawner's.
    let out = (0..20)
        .map(|_| {
            home.spawner(&["run", "--json", "echo", "hi"])
                .env("SPAWNER_AGENT_EXEC", &fake)
                .output()
                .expect("run")
        })
        .find(|o| !stderr(o).contains("Text file busy"))
        .expect("the fake agent-exec ran");
    assert_eq!(code(&out), exit_of(Outcome::Internal), "{}", stderr(&out));
    let r = report(&out);
    assert!(
        r["error"]
            .as_str()
            .expect("error")
            .contains("unexpected code 101")
    );
    let record = home
        .store()
        .run(r["run_id"].as_str().expect("id"))
        .expect("query")
        .expect("spawner recorded the run");
    assert_eq!(record.status, Outcome::Internal);
}

#[test]
fn another_components_valid_cache_entry_under_an_agents_name_is_not_trusted() {
    let home = TestHome::new();
    home.install_example("echo");
    home.install_testing("lab", "");
    let cache = home.path().join("cache/components");
    let entries = || -> Vec<_> {
        std::fs::read_dir(&cache)
            .expect("cache dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect()
    };
    assert_eq!(code(&home.run(&["run", "echo", "a"])), 0);
    let echo_entry = entries();
    assert_eq!(echo_entry.len(), 1, "{echo_entry:?}");
    assert_eq!(code(&home.run(&["run", "lab", "hello"])), 0);
    let lab_entry: Vec<_> = entries()
        .into_iter()
        .filter(|p| *p != echo_entry[0])
        .collect();
    assert_eq!(lab_entry.len(), 1, "{lab_entry:?}");
    // The testing agent's valid entry, put in place of echo's, seal and all (`cp -p`):
    // it is whole and sealed, but compiled from another component.
    let copied = std::process::Command::new("cp")
        .arg("-p")
        .arg(&lab_entry[0])
        .arg(&echo_entry[0])
        .status()
        .expect("cp");
    assert!(copied.success());
    let out = home.run(&["run", "--json", "echo", "who runs?"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(
        r["output"], "who runs?",
        "echo ran, not the other component"
    );
    assert_eq!(r["cache_hit"], false);
    assert!(
        stderr(&out).contains("compiled from another component"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_run_killed_after_its_commit_exits_as_its_record_says() {
    let home = TestHome::new();
    home.install_testing("lab", "[limits]\ntimeout_ms = 60000\n");
    home.precompile("lab");
    // The answer (1 MiB) does not fit in the pipe nobody reads, so agent-exec blocks
    // writing it, after it committed the run and its write.
    let spawner = home
        .spawner(&["run", "lab", "put-bytes", "once", "1048576"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let store = home.store();
    let committed = (0..3000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        count(
            &store,
            "SELECT count(*) FROM runs WHERE agent = 'lab' AND status = 'ok'",
        ) == 1
    });
    assert!(committed, "the run committed");
    let agent_exec = *children_of(spawner.id())
        .first()
        .expect("agent-exec is still there, writing its answer");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_exec as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let out = spawner.wait_with_output().expect("wait");
    // A caller that retries on `killed` would write twice: the exit code is the record's.
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning") && stderr(&out).contains("answer was lost"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM kv WHERE key = 'once'"),
        1
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM runs WHERE agent = 'lab'"),
        1,
        "one record, agent-exec's"
    );
}
