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
