use agent_contract::{Outcome, PhaseTimings};

use crate::harness::{TestHome, code, exit_of, report, stderr, stdout};

#[test]
fn echo_prints_its_input_unchanged() {
    let home = TestHome::new();
    home.install_example("echo");
    let out = home.run(&["run", "echo", "hello", "world"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello world");
    // Inputs that look like flags are input too.
    let out = home.run(&["run", "echo", "-n", "--json"]);
    assert_eq!(stdout(&out), "-n --json");
}

#[test]
fn input_comes_from_stdin_or_a_file_byte_for_byte() {
    let home = TestHome::new();
    home.install_example("echo");
    let binary: Vec<u8> = (0..=255u8)
        .chain(b"\nsecond line\n".iter().copied())
        .collect();

    let out = home.run_with_stdin(&["run", "echo"], &binary);
    assert_eq!(code(&out), 0);
    assert_eq!(out.stdout, binary);

    let file = home.path().join("input.bin");
    std::fs::write(&file, &binary).expect("write");
    let out = home.run(&["run", "echo", "--input-file", file.to_str().expect("utf8")]);
    assert_eq!(out.stdout, binary);

    let out = home.run(&["run", "echo", "--input-file", "/nonexistent/input"]);
    assert_eq!(code(&out), exit_of(Outcome::Usage));
    assert!(
        stderr(&out).contains("/nonexistent/input"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn json_report_carries_status_output_and_phase_timings_and_matches_the_record() {
    let home = TestHome::new();
    home.install_example("echo");
    let out = home.run(&["run", "--json", "echo", "hi"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(r["status"], "ok");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["output"], "hi");
    assert_eq!(r["cache_hit"], false, "first run compiles");
    for phase in PhaseTimings::FIELDS {
        assert!(r["timings"][phase].is_u64(), "{phase} missing in {r}");
    }

    let run_id = r["run_id"].as_str().expect("run id");
    let record = home.store().run(run_id).expect("query").expect("recorded");
    assert_eq!(record.status, Outcome::Ok);
    assert_eq!(record.agent, "echo");
    assert!(record.timings.handler_us.is_some());
    assert_eq!(record.input, None, "inputs are not retained unless asked");

    let again = report(&home.run(&["run", "--json", "echo", "hi"]));
    assert_eq!(
        again["cache_hit"], true,
        "second run loads the compiled cache"
    );
    assert_ne!(again["run_id"], r["run_id"]);
}

#[test]
fn non_utf8_output_is_base64_in_reports() {
    let home = TestHome::new();
    home.install_example("echo");
    let r = report(&home.run_with_stdin(&["run", "--json", "echo"], &[0xff, 0xfe, 0x00]));
    assert_eq!(r["output_base64"], "//4A");
    assert!(r.get("output").is_none());
}

#[test]
fn inputs_are_retained_only_when_the_manifest_says_so() {
    let home = TestHome::new();
    home.install(
        "echo",
        "echo",
        "name = \"echo\"\nversion = \"1\"\ncomponent = \"echo.wasm\"\n[memory]\nretain_input = true\n",
    );
    let r = report(&home.run(&["run", "--json", "echo", "keep me"]));
    let record = home
        .store()
        .run(r["run_id"].as_str().expect("id"))
        .expect("query")
        .expect("recorded");
    assert_eq!(record.input.as_deref(), Some(&b"keep me"[..]));
}
