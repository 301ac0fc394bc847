use agent_contract::Outcome;

use crate::harness::{TestHome, code, exit_of, start_agent_exec, stderr};

fn runs_recorded(home: &TestHome) -> Vec<memory_store::RunRecord> {
    if !memory_store::Store::exists(&home.path().join("memory.db")) {
        return Vec::new();
    }
    home.store()
        .runs(&memory_store::RunFilter::default())
        .expect("runs")
}

#[test]
fn an_unknown_agent_is_named_with_the_path_looked_for() {
    let home = TestHome::new();
    let out = home.run(&["run", "nobody", "hi"]);
    assert_eq!(code(&out), exit_of(Outcome::NotFound));
    let err = stderr(&out);
    assert!(err.contains("no agent named \"nobody\""), "{err}");
    assert!(err.contains("agents/nobody/agent.toml"), "{err}");
    assert!(runs_recorded(&home).is_empty());
}

#[test]
fn path_traversal_in_an_agent_name_is_refused_by_spawner_and_agent_exec() {
    let home = TestHome::new();
    home.install_example("echo");
    // A manifest outside the agents directory that traversal would reach.
    std::fs::write(home.path().join("agent.toml"), "name = \"x\"").expect("write");
    for name in ["../x", "..", "echo/../echo", "/etc"] {
        let out = home.run(&["run", name, "hi"]);
        assert_eq!(
            code(&out),
            exit_of(Outcome::Usage),
            "{name}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("invalid agent name"),
            "{}",
            stderr(&out)
        );
    }
    let out = start_agent_exec(&home, "../agents/echo", "hi", "warn")
        .wait_with_output()
        .expect("wait");
    assert_eq!(code(&out), exit_of(Outcome::Usage));
    assert!(
        stderr(&out).contains("invalid agent name"),
        "{}",
        stderr(&out)
    );
    assert!(runs_recorded(&home).iter().all(|r| r.status != Outcome::Ok));
}

#[test]
fn a_missing_component_is_a_component_error_and_recorded_as_such() {
    let home = TestHome::new();
    home.install_example("echo");
    std::fs::remove_file(home.agent_dir("echo").join("echo.wasm")).expect("rm");
    let out = home.run(&["run", "echo", "hi"]);
    assert_eq!(code(&out), exit_of(Outcome::Component));
    assert!(stderr(&out).contains("echo.wasm"), "{}", stderr(&out));
    let runs = runs_recorded(&home);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, Outcome::Component);
}

#[test]
fn a_sha256_pin_mismatch_refuses_to_run() {
    let home = TestHome::new();
    home.install(
        "echo",
        "echo",
        &format!(
            "name = \"echo\"\nversion = \"1\"\ncomponent = \"echo.wasm\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    );
    let out = home.run(&["run", "echo", "hi"]);
    assert_eq!(code(&out), exit_of(Outcome::Component));
    let err = stderr(&out);
    assert!(err.contains("pins 0000"), "{err}");
    assert!(err.contains("has sha256"), "{err}");
    assert_eq!(runs_recorded(&home)[0].status, Outcome::Component);
}

#[test]
fn invalid_manifests_are_reported_with_file_line_and_column() {
    let home = TestHome::new();
    home.install_example("echo");
    let head = "name = \"echo\"\nversion = \"1\"\ncomponent = \"echo.wasm\"\n";
    let cases = [
        // (manifest, expected location, expected words)
        (
            format!("{head}[limits\n"),
            "agent.toml:4:8:",
            "unclosed table",
        ),
        (
            format!("{head}[limits]\ncolour = 3\n"),
            "agent.toml:5:1:",
            "colour",
        ),
        (
            format!("{head}[limits]\ntimeout_ms = \"soon\"\n"),
            "agent.toml:5:14:",
            "invalid type",
        ),
        (
            format!("{head}[limits]\nmemory_mb = 0\n"),
            "agent.toml:5:13:",
            "out of range",
        ),
        ("version = \"1\"\n".to_owned(), "agent.toml:1:1:", "name"),
    ];
    for (manifest, location, words) in cases {
        home.write_manifest("echo", &manifest);
        let out = home.run(&["run", "echo", "hi"]);
        let err = stderr(&out);
        assert_eq!(code(&out), exit_of(Outcome::Config), "{manifest}\n{err}");
        assert!(err.contains(location), "expected {location} in: {err}");
        assert!(
            err.to_lowercase().contains(words),
            "expected {words:?} in: {err}"
        );
    }
    // agent-exec checks the manifest too (it can be run without spawner) and records it.
    let out = start_agent_exec(&home, "echo", "hi", "warn")
        .wait_with_output()
        .expect("wait");
    assert_eq!(code(&out), exit_of(Outcome::Config));
    assert!(stderr(&out).contains("agent.toml:1:1"), "{}", stderr(&out));
    assert_eq!(runs_recorded(&home)[0].status, Outcome::Config);
}

#[test]
fn a_bad_envelope_is_a_usage_error() {
    use std::io::Write;
    let mut child = std::process::Command::new(crate::harness::bin("agent-exec"))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"{\"v\": 1}\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(code(&out), exit_of(Outcome::Usage));
    assert!(
        stderr(&out).contains("request envelope"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_component_that_is_a_fifo_or_a_device_is_refused_without_blocking() {
    let home = TestHome::new();
    home.install_example("echo");
    let component = home.agent_dir("echo").join("echo.wasm");
    for make in ["fifo", "/dev/zero"] {
        std::fs::remove_file(&component).expect("rm");
        if make == "fifo" {
            nix::unistd::mkfifo(&component, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        } else {
            std::os::unix::fs::symlink(make, &component).expect("symlink");
        }
        // Each would block (a FIFO with no writer) or never end (/dev/zero) if read.
        let listed = home.run(&["agents"]);
        assert_eq!(code(&listed), 0, "{}", stderr(&listed));
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains("not a regular file"),
            "{make}: {}",
            String::from_utf8_lossy(&listed.stdout)
        );
        let out = home.run(&["run", "echo", "hi"]);
        assert_eq!(
            code(&out),
            exit_of(Outcome::Component),
            "{make}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("not a regular file"),
            "{}",
            stderr(&out)
        );
    }
}
