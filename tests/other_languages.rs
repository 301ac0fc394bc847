//! shout-py and shout-js, the same agent written in Python (componentize-py) and in
//! JavaScript (componentize-js): 18 MB and 12 MB components that carry their language's
//! runtime, built from wit/agent.wit alone.

use agent_contract::Outcome;

use crate::harness::{TestHome, code, exit_of, report, stderr, stdout};

#[test]
fn a_python_agent_is_compiled_outside_its_deadline_and_keeps_its_memory() {
    runs_compiled_outside_its_deadline_and_keeps_its_memory("shout-py");
}

#[test]
fn a_javascript_agent_is_compiled_outside_its_deadline_and_keeps_its_memory() {
    runs_compiled_outside_its_deadline_and_keeps_its_memory("shout-js");
}

fn runs_compiled_outside_its_deadline_and_keeps_its_memory(agent: &str) {
    let home = TestHome::new();
    // A 2 s deadline: compiling the component takes several seconds on every core here,
    // past the deadline and the CPU limit a request gets (its deadline plus 3 s). Its
    // first run must still answer, and its later runs load the compiled entry.
    let manifest = std::fs::read_to_string(
        crate::harness::root()
            .join("agents")
            .join(agent)
            .join("agent.toml"),
    )
    .expect("manifest")
    .replace("timeout_ms = 10000", "timeout_ms = 2000");
    assert!(manifest.contains("timeout_ms = 2000\n"), "{manifest}");
    home.install(agent, agent, &manifest);

    let first = home.run(&["run", "--json", agent, "hello, wörld"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let r = report(&first);
    assert_eq!(r["output"], "HELLO, WÖRLD (run 1)");
    assert_eq!(r["cache_hit"], false, "the first run paid for a compile");
    let second = report(&home.run(&["run", "--json", agent, "again"]));
    assert_eq!(
        (second["output"].as_str(), second["cache_hit"].as_bool()),
        (Some("AGAIN (run 2)"), Some(true))
    );
    // The agent's own error (a Python exception, a thrown JavaScript variant) is an agent
    // error.
    let bad = home.run_with_stdin(&["run", "--input-file", "-", agent], &[0xff, 0xfe]);
    assert_eq!(code(&bad), exit_of(Outcome::AgentError), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains(&format!("{agent} takes UTF-8 text")),
        "{}",
        stderr(&bad)
    );
    let third = home.run(&["run", agent, "run"]);
    assert_eq!(stdout(&third), "RUN (run 3)", "a failed run wrote nothing");

    let store = home.store();
    let records = store
        .runs(&memory_store::RunFilter {
            agent: Some(agent.into()),
            limit: 10,
        })
        .expect("runs");
    let statuses: Vec<Outcome> = records.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Outcome::Ok, Outcome::AgentError, Outcome::Ok, Outcome::Ok],
        "one record a run, newest first, none for the compile"
    );
}

/// A compile step killed while it compiles (here by SIGKILL; by its own 600 s limit
/// alike) ends the run: the agent is not started, nor compiled again inside agent-exec
/// under the request's limits, and the run is recorded as killed, naming the compile. The
/// next run compiles anew and answers: the killed compile left no entry to trust.
#[test]
fn a_killed_compile_ends_the_run_and_the_next_run_compiles_anew() {
    let home = TestHome::new();
    home.install_example("shout-py");
    let child = home
        .spawner(&["run", "--json", "shout-py", "hi, wörld 🦀"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawner");
    let spawner = child.id();
    let mut compiler = None;
    crate::harness::wait_until("agent-compile runs", || {
        compiler = crate::harness::children_of(spawner)
            .into_iter()
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "agent-compile")
            });
        compiler.is_some()
    });
    let compiler = compiler.expect("agent-compile's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(compiler).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill agent-compile");
    let killed = child.wait_with_output().expect("spawner's output");
    assert_eq!(
        code(&killed),
        exit_of(Outcome::Killed),
        "{}",
        stderr(&killed)
    );
    let r = report(&killed);
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the compile step") && error.contains("killed by signal 9"),
        "{r}"
    );
    let store = home.store();
    let records = store
        .runs(&memory_store::RunFilter {
            agent: Some("shout-py".into()),
            limit: 10,
        })
        .expect("runs");
    assert_eq!(
        records.iter().map(|r| r.status).collect::<Vec<_>>(),
        [Outcome::Killed]
    );

    // Any script, an emoji and a combining mark (e and U+0301).
    let next = home.run(&["run", "--json", "shout-py", "again, мир 🦀 e\u{301}"]);
    assert_eq!(code(&next), 0, "{}", stderr(&next));
    let r = report(&next);
    assert_eq!(
        r["output"], "AGAIN, МИР 🦀 E\u{301} (run 1)",
        "the killed run wrote nothing"
    );
    assert_eq!(r["cache_hit"], false, "the killed compile cached nothing");
}

#[test]
fn concurrent_first_runs_of_a_component_compile_it_once() {
    use std::os::unix::fs::OpenOptionsExt;

    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use sha2::{Digest, Sha256};

    let home = TestHome::new();
    home.install_example("shout-py");
    // The entry's name is `<the first 8 bytes of the component path's SHA-256, in hex>-
    // <the engine's fingerprint>.cwasm`: the fingerprint is read off another agent's.
    home.install_example("echo");
    home.precompile("echo");
    let cache = home.path().join("cache").join("components");
    let echo_entry = std::fs::read_dir(&cache)
        .expect("the cache")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.ends_with(".cwasm"))
        .expect("echo's entry");
    // `<key>-<fingerprint>.cwasm`
    let (_, fingerprint) = echo_entry.split_once('-').expect("key-fingerprint");
    let component = home.path().join("agents/shout-py/shout-py.wasm");
    let key = Sha256::digest(component.as_os_str().as_encoded_bytes());
    let key: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
    let entry = format!("{key}-{fingerprint}");

    // Hold the entry's compile lock, so that every run reaches its compile step before
    // any compile can start, however fast this machine is.
    let lock = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(cache.join(format!("{entry}.lock")))
        .expect("the lock file");
    lock.lock().expect("hold the lock");
    let watch = Inotify::init(InitFlags::IN_NONBLOCK).expect("inotify");
    watch
        .add_watch(&cache, AddWatchFlags::IN_MOVED_TO)
        .expect("watch the cache");

    const RUNS: usize = 3;
    let runs: Vec<std::process::Child> = (0..RUNS)
        .map(|i| {
            home.spawner(&[
                "run",
                "--json",
                "shout-py",
                &format!("run {i}, ünïcode 🦀 e\u{301}"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawner starts")
        })
        .collect();
    let compiling = |run: &std::process::Child| {
        crate::harness::children_of(run.id())
            .into_iter()
            .any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == "agent-compile")
            })
    };
    crate::harness::wait_until("every run is at its compile step", || {
        runs.iter().all(compiling)
    });
    drop(lock);

    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().expect("spawner ends");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let answer = report(&out)["output"].as_str().unwrap_or("").to_owned();
        assert!(
            answer.starts_with(&format!("RUN {i}, ÜNÏCODE 🦀 E\u{301} (run ")),
            "{answer}"
        );
    }
    let written = watch
        .read_events()
        .expect("the cache's events")
        .iter()
        .filter(|e| {
            e.name
                .as_ref()
                .is_some_and(|n| *n == std::ffi::OsString::from(&entry))
        })
        .count();
    let listing: Vec<_> = std::fs::read_dir(&cache)
        .expect("the cache")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(
        written, 1,
        "{RUNS} first runs wrote the entry {entry} {written} times: {listing:?}"
    );
    assert!(
        cache.join(&entry).is_file(),
        "the lock held was the entry's own"
    );
}
