use agent_contract::Outcome;

use crate::harness::{TestHome, code, exit_of, stderr, stdout};

#[test]
fn agents_lists_each_agent_with_its_validation_status() {
    let home = TestHome::new();
    assert!(stdout(&home.run(&["agents"])).contains("no agents in"));
    home.install_example("echo");
    home.install_example("notes");
    home.write_manifest("notes", "name = \"notes\"\nversion = 1\n");
    home.install_testing("lab", "");
    std::fs::remove_file(home.agent_dir("lab").join("lab.wasm")).expect("rm");

    let out = home.run(&["agents"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .to_owned()
    };
    assert!(line("echo").contains(" ok "), "{text}");
    assert!(
        line("notes").contains("invalid") && line("notes").contains("agent.toml:2:11"),
        "{text}"
    );
    assert!(
        line("lab").contains("invalid") && line("lab").contains("lab.wasm"),
        "{text}"
    );

    let json: Vec<serde_json::Value> = stdout(&home.run(&["agents", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let names: Vec<&str> = json
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["echo", "lab", "notes"]);
    assert_eq!(json[0]["status"], "ok");
    assert_eq!(json[2]["status"], "invalid");
}

#[test]
fn runs_lists_recent_runs_newest_first_with_filters() {
    let home = TestHome::new();
    assert!(stdout(&home.run(&["runs"])).contains("no runs yet"));
    home.install_example("echo");
    home.install_example("notes");
    home.run(&["run", "echo", "one"]);
    home.run(&["run", "notes", ""]);
    home.run(&["run", "echo", "two"]);

    let text = stdout(&home.run(&["runs"]));
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(
        rows[1].contains("notes") && rows[1].contains("agent_error"),
        "{text}"
    );

    let json: Vec<serde_json::Value> = stdout(&home.run(&["runs", "--agent", "echo", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(json.len(), 2);
    assert!(
        json.iter()
            .all(|r| r["agent"] == "echo" && r["status"] == "ok")
    );
    assert!(json[0]["started_at_ms"].as_u64() >= json[1]["started_at_ms"].as_u64());
    assert_eq!(
        stdout(&home.run(&["runs", "--limit", "1", "--json"]))
            .lines()
            .count(),
        1
    );
}

#[test]
fn a_closed_standard_error_is_no_panic_and_call_says_the_daemon_is_not_running() {
    let home = TestHome::new();
    // stderr a pipe whose reader is gone: the exit code is the outcome's, not a panic's.
    let mut child = home
        .spawner(&["run", "nosuch"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(exit_of(Outcome::NotFound)));
    // stderr closed altogether (descriptor 2 not open at all).
    let mut cmd = home.spawner(&["run", "nosuch"]);
    // SAFETY: close(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let _ = nix::unistd::close(2);
            Ok(())
        });
    }
    let status = cmd.status().expect("run");
    assert_eq!(status.code(), Some(exit_of(Outcome::NotFound)));

    let out = home.run(&["call", "health"]);
    assert_ne!(code(&out), 0);
    let text = stderr(&out);
    assert!(
        text.contains("the daemon is not running") && text.contains("spawner serve"),
        "{text}"
    );
    assert_eq!(
        text.matches("No such file or directory").count(),
        0,
        "said once, in words: {text}"
    );
}

#[test]
fn agents_checks_each_components_imports_against_what_the_host_provides() {
    let home = TestHome::new();
    let examples = [
        "echo",
        "notes",
        "command-guard",
        "secret-guard",
        "sentiment",
        "shout-py",
        "shout-js",
    ];
    for name in examples {
        home.install_example(name);
    }
    home.install_testing("lab", "");
    // An agent built against wasi:http (as componentize-js's default output is).
    home.install(
        "wants-http",
        "wants-http",
        "name = \"wants-http\"\nversion = \"0.1.0\"\ncomponent = \"wants-http.wasm\"\n",
    );
    // A core module is not a component.
    home.install_testing("core", "");
    std::fs::write(home.agent_dir("core").join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");

    let json: Vec<serde_json::Value> = stdout(&home.run(&["agents", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let of = |name: &str| {
        json.iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {json:?}"))
    };
    for name in examples.iter().chain(&["lab"]) {
        assert_eq!(of(name)["status"], "ok", "{}", of(name));
    }
    let http = of("wants-http");
    assert_eq!(http["status"], "invalid");
    let error = http["error"].as_str().expect("error");
    assert!(
        error.contains("wasi:http/outgoing-handler@") && error.contains("does not provide"),
        "{error}"
    );
    assert!(
        !error.contains("wasi:io"),
        "provided imports are not listed: {error}"
    );
    assert_eq!(of("core")["status"], "invalid");
    assert!(
        of("core")["error"]
            .as_str()
            .unwrap_or("")
            .contains("core module"),
        "{}",
        of("core")
    );
    // What the listing says is what a run finds.
    let run = home.run(&["run", "wants-http", "example.com"]);
    assert_eq!(code(&run), exit_of(Outcome::Component), "{}", stderr(&run));
    assert!(stderr(&run).contains("wasi:http"), "{}", stderr(&run));
}

#[test]
fn doctor_names_the_programs_a_request_runs_and_a_missing_one() {
    let home = TestHome::new();
    let json = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).expect("doctor JSON")
    };
    let report = json(&home.run(&["doctor", "--json"]));
    for program in ["agent-exec", "agent-compile", "gpu-broker"] {
        assert_eq!(report["programs"][program]["found"], true, "{report}");
    }
    // agent-exec alone in a directory: the compile step and the broker are not beside it.
    let scratch = tempfile::tempdir().expect("tempdir");
    let lone = scratch.path().join("программы-🦀-e\u{301}");
    std::fs::create_dir(&lone).expect("mkdir");
    let exec = lone.join("agent-exec");
    std::fs::copy(crate::harness::bin("agent-exec"), &exec).expect("copy agent-exec");
    let out = home
        .spawner(&["doctor"])
        .env("SPAWNER_AGENT_EXEC", &exec)
        .output()
        .expect("doctor");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("program  agent-exec: {}", exec.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "program  agent-compile: {} missing: a component not compiled yet cannot run",
            lone.join("agent-compile").display()
        )),
        "{text}"
    );
    let report = json(
        &home
            .spawner(&["doctor", "--json"])
            .env("SPAWNER_AGENT_EXEC", &exec)
            .output()
            .expect("doctor"),
    );
    assert_eq!(report["programs"]["gpu-broker"]["found"], false, "{report}");
}

#[test]
fn a_log_level_that_is_not_one_is_refused_or_said_and_the_levels_are_named() {
    let home = TestHome::new();
    home.install_example("echo");
    let out = home.run(&["run", "--log-level", "loud", "echo", "hi"]);
    assert_eq!(code(&out), exit_of(Outcome::Usage), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("trace, debug, info, warn, error"),
        "{}",
        stderr(&out)
    );
    // Any case of a level is that level.
    let out = home.run(&["run", "--log-level", "DEBUG", "echo", "hi"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // From the environment: said, and the run goes on at the default level.
    let out = home
        .spawner(&["run", "echo", "hi"])
        .env("SPAWNER_LOG", "très-bavard")
        .output()
        .expect("spawner runs");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi");
    assert!(
        stderr(&out).contains("$SPAWNER_LOG: log level \"très-bavard\" is not one of"),
        "{}",
        stderr(&out)
    );
}
