//! Remote language-model providers through the real binaries, against a real
//! OpenAI-compatible server: llama.cpp's (`llama-cpp-python[server]`, built once per
//! machine by `cargo xtask test`) serving the same GGUF file over TLS from a test CA, with
//! an API key, on a remote host: the other side of a [`Network`] each test makes, whose
//! machine side runs the test's spawner (and so its agent-exec and broker). Covered: no
//! consent -> refused with no byte sent (the link's counters do not move, and the server's
//! log shows no request); consent -> served, with evidence, its bytes sent within what
//! crossed the link; revoked -> refused again; server down, too slow, a wrong key, a
//! wrong URL -> clear errors and no fallback; the API key in no log, record or answer.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{TestHome, code, stderr, stdout, target, wait_until};
use crate::network::{MACHINE_IP, Network, REMOTE_IP};

const KEY: &str = "sk-test-7f3a9c1e5b2d4f60";
/// The server's port on the remote host (a host of its own: no other test uses it).
const PORT: u16 = 8443;

fn server_tools() -> PathBuf {
    let dir = std::fs::read_dir(target().join("tools"))
        .expect("target/tools")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("llama-cpp-python-") && !n.ends_with(".partial"))
        });
    dir.expect("llama-cpp-python is not installed: run `cargo xtask test` (it builds it once)")
}

/// A CA and a certificate for the remote host's address signed by it, made with openssl.
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=spawner test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &format!("/CN={REMOTE_IP}"),
    ]);
    std::fs::write(
        dir.join("san.ext"),
        format!("subjectAltName=IP:{REMOTE_IP}\n"),
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// The running server, on the remote host of `net`; its log is read back for what
/// reached it.
struct Server<'n> {
    child: Child,
    log: PathBuf,
    net: &'n Network,
}

impl<'n> Server<'n> {
    fn start(dir: &Path, net: &'n Network) -> Server<'n> {
        let (_, cert, key) = test_ca(dir);
        let log = dir.join("server.log");
        let mut child = net
            .on_remote("python3")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(target().join("llm/model.gguf"))
            .args(["--model_alias", "smollm2", "--host", REMOTE_IP, "--port"])
            .arg(PORT.to_string())
            .args(["--api_key", KEY, "--n_ctx", "2048", "--n_threads", "1"])
            .arg("--ssl_certfile")
            .arg(&cert)
            .arg("--ssl_keyfile")
            .arg(&key)
            .env("PYTHONPATH", server_tools())
            .stdout(std::fs::File::create(dir.join("server.out")).expect("out"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        // Ready when uvicorn says it listens; every line also goes to the log file.
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&log_path).expect("log");
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if line.contains("Uvicorn running on") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the llama.cpp server did not start within two minutes");
        Server { child, log, net }
    }

    /// Requests for chat completions the server has logged (uvicorn's access log, on
    /// either of its streams), each line naming the client's address.
    fn chat_request_lines(&self) -> Vec<String> {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text += &std::fs::read_to_string(self.log.with_file_name("server.out")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("/v1/chat/completions"))
            .map(str::to_owned)
            .collect()
    }

    /// How many requests for chat completions the server has logged.
    fn chat_requests(&self) -> usize {
        self.chat_request_lines().len()
    }

    /// `run` (a run of `agent`, made while the machine holds no connection to the server)
    /// is refused for want of the user's consent to provider `lab`, with the command that
    /// gives it; no byte leaves the machine for the remote host, and this server has had
    /// no request.
    fn assert_refused_for_consent(&self, run: impl FnOnce() -> std::process::Output, agent: &str) {
        let before = self.net.bytes_to_remote();
        let out = &run();
        assert_eq!(
            self.net.bytes_to_remote(),
            before,
            "bytes left the machine for the remote host"
        );
        assert_eq!(code(out), 6, "{}", stderr(out));
        assert!(stderr(out).contains("ConsentRequired"), "{}", stderr(out));
        assert!(
            stderr(out).contains(&format!("spawner consent grant {agent} lab")),
            "{}",
            stderr(out)
        );
        assert_eq!(self.chat_requests(), 0, "a request reached the server");
    }

    /// `out` is a run that succeeded with an answer from this server, its `n`th request.
    fn assert_served(&self, out: &std::process::Output, n: usize) {
        assert_eq!(code(out), 0, "{}", stderr(out));
        assert!(
            stdout(out).contains("provider lab model"),
            "{}",
            stdout(out)
        );
        wait_until("the server logs the request", || self.chat_requests() == n);
        // Each came from the machine, over the link.
        let from_machine = format!("{MACHINE_IP}:");
        let lines = self.chat_request_lines();
        assert!(lines.iter().all(|l| l.contains(&from_machine)), "{lines:?}");
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// providers.toml naming the remote host's server as `lab`.
fn providers_toml(url_path: &str, key_file: &str, timeout_s: u64) -> String {
    format!(
        "[[provider]]\nname = \"lab\"\nurl = \"https://{REMOTE_IP}:{PORT}{url_path}\"\n\
         models = [\"smollm2\"]\nremote = true\napi_key_file = \"{key_file}\"\n\
         ca_file = \"lab-ca.pem\"\ntimeout_s = {timeout_s}\n"
    )
}

#[test]
fn a_remote_provider_serves_only_with_consent_and_its_failures_are_clear() {
    let net = Network::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &net);
    let home = TestHome::new();
    home.run_on(net.machine());
    std::fs::copy(dir.path().join("ca.pem"), home.path().join("lab-ca.pem")).expect("ca");
    let key_file = home.path().join("lab.key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let write_providers = |text: &str| {
        std::fs::write(home.path().join("providers.toml"), text).expect("providers");
    };
    write_providers(&providers_toml("/v1", "lab.key", 60));
    home.install_testing(
        "talker",
        "[limits]\ntimeout_ms = 60000\n[llm]\nmodels = [\"smollm2\", \"lab/smollm2\"]\nescalate = [\"lab\"]\n",
    );
    home.precompile("talker");
    let ask = |model: &str| {
        home.run(&[
            "run",
            "talker",
            &format!("chat\nmodel {model}\nmax_tokens 8\nmsg user What is the capital of France?"),
        ])
    };

    // No consent: refused before anything is sent, with the command that allows it.
    server.assert_refused_for_consent(|| ask("smollm2"), "talker");

    // Consent: served by the server, with evidence.
    let granted = home.run(&["consent", "grant", "talker", "lab", "--expires", "1d"]);
    assert_eq!(code(&granted), 0, "{}", stderr(&granted));
    assert!(stdout(&granted).contains("remote"), "{}", stdout(&granted));
    let before = net.bytes_to_remote();
    let out = ask("smollm2");
    server.assert_served(&out, 1);
    // A fresh connection each time: opening the store imports the runs logged since.
    let newest = || {
        let store = home.store();
        let runs = store
            .runs(&memory_store::RunFilter::default())
            .expect("runs");
        store.run(&runs[0].run_id).expect("run").expect("record")
    };
    let record = newest();
    let call = &record.llm_calls[0];
    assert_eq!(
        (call.provider.as_str(), call.remote),
        ("lab", true),
        "{call:?}"
    );
    // What the evidence says was sent went over the link, with TLS's and HTTP's own bytes.
    let crossed = net.bytes_to_remote() - before;
    assert!(
        call.bytes_sent > 50 && call.bytes_sent < crossed,
        "{call:?}, {crossed} bytes over the link"
    );
    assert_eq!(
        call.escalation.as_deref(),
        Some("the model is not served locally")
    );
    assert!(
        call.consent
            .as_deref()
            .is_some_and(|c| c.starts_with("consent 1 granted")),
        "{call:?}"
    );
    assert!(call.completion_tokens.unwrap_or(0) > 0, "{call:?}");
    let shown = home.run(&["runs", "show", &record.run_id]);
    assert!(
        stdout(&shown).contains("lab (remote)"),
        "{}",
        stdout(&shown)
    );
    // Streamed (`--stream`): the server is asked to stream, and the answer reaches
    // standard error as it comes, then stands whole on standard output.
    let out = home.run(&[
        "run",
        "--stream",
        "talker",
        "chat\nmodel smollm2\nmax_tokens 12\nmsg user Say hello in French: héllo, 世界 🦀",
    ]);
    server.assert_served(&out, 2);
    let text = stdout(&out).split_once('\n').expect("header").1.to_owned();
    assert!(!text.is_empty());
    assert!(
        stderr(&out).contains(&format!("{text}\n")),
        "{}",
        stderr(&out)
    );
    // The server gives no token counts in a stream: the evidence does not guess them.
    let call = newest().llm_calls[0].clone();
    assert_eq!(
        (
            call.provider.as_str(),
            call.prompt_tokens,
            call.completion_tokens
        ),
        ("lab", None, None),
        "{call:?}"
    );
    // Through the daemon, each piece is a notification of its own, as it comes.
    let daemon = crate::serve::Daemon::start(&home, &[]);
    let (pieces, output) = crate::serve::streamed_run(
        &daemon,
        "talker",
        "chat\nmodel smollm2\nmax_tokens 12\nmsg user Count from one to ten in words.",
    );
    assert!(output.contains("provider lab"), "{output}");
    assert!(pieces.len() > 1, "{pieces:?}");
    assert_eq!(&pieces.concat(), output.split_once('\n').expect("header").1);
    drop(daemon);
    wait_until("the server logs the request", || {
        server.chat_requests() == 3
    });
    // The explicit form, provider/model, goes to the same place.
    let out = ask("lab/smollm2");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        newest().llm_calls[0].escalation.as_deref(),
        Some("the agent asked for this provider")
    );

    // Revoked: refused again, and nothing more reaches the server.
    let sent = server.chat_requests();
    assert_eq!(code(&home.run(&["consent", "revoke", "talker", "lab"])), 0);
    let out = ask("smollm2");
    assert!(stderr(&out).contains("ConsentRequired"), "{}", stderr(&out));
    assert_eq!(server.chat_requests(), sent);
    let list = stdout(&home.run(&["consent", "list"]));
    assert!(list.contains("revoked"), "{list}");
    assert_eq!(code(&home.run(&["consent", "grant", "talker", "lab"])), 0);

    // A wrong key: the server's 401, named.
    std::fs::write(&key_file, "sk-wrong\n").expect("key");
    let out = ask("smollm2");
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    // A key file others can read is refused.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = ask("smollm2");
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A URL that is not the API's base: a 404, named, and no answer from anywhere else.
    write_providers(&providers_toml("/nothing", "lab.key", 60));
    let out = ask("smollm2");
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    // Too slow for its timeout: a long answer with timeout_s = 1.
    write_providers(&providers_toml("/v1", "lab.key", 1));
    let out = home.run(&[
        "run",
        "talker",
        "chat\nmodel smollm2\nmax_tokens 1500\nstop ZZZZ-never\nmsg user Write a very long story.",
    ]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("Timeout"), "{}", stderr(&out));
    assert_eq!(newest().llm_calls[0].outcome, "timeout");

    assert_the_key_is_nowhere(&home);

    // Down: unreachable, and the run does not fall back to anything else.
    write_providers(&providers_toml("/v1", "lab.key", 60));
    drop(server);
    let out = ask("smollm2");
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be reached"),
        "{}",
        stderr(&out)
    );
    let call = newest().llm_calls[0].clone();
    assert_eq!(
        (call.provider.as_str(), call.outcome.as_str()),
        ("lab", "unavailable")
    );
    // The broker started for this home goes with it.
    crate::harness::stop_broker_at(&home.path().join("run/broker.sock"));
}

/// The API key is in no log, record or answer of `home`.
fn assert_the_key_is_nowhere(home: &TestHome) {
    let broker_log =
        std::fs::read_to_string(home.path().join("run/broker.log")).unwrap_or_default();
    assert!(!broker_log.contains(KEY), "the key is in the broker's log");
    let runs = home.run(&["runs", "--json", "--limit", "100"]);
    assert!(!stdout(&runs).contains(KEY));
    for line in stdout(&runs).lines() {
        let id = serde_json::from_str::<serde_json::Value>(line).expect("json")["run_id"]
            .as_str()
            .expect("id")
            .to_owned();
        let shown = home.run(&["runs", "show", &id, "--json"]);
        assert!(!stdout(&shown).contains(KEY), "the key is in run {id}");
    }
    let db = std::fs::read(home.path().join("memory.db")).expect("db");
    assert!(
        !db.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
        "the key is in the store"
    );
}

#[test]
fn a_key_from_spawners_environment_reaches_the_broker_a_run_starts_but_no_agent() {
    // `api_key_env`: the broker is started on demand by an agent-exec, whose environment
    // the spawner clears but for the providers' keys.
    const VAR: &str = "SPAWNER_TEST_LAB_KEY";
    let net = Network::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &net);
    let home = TestHome::new();
    home.run_on(net.machine());
    std::fs::copy(dir.path().join("ca.pem"), home.path().join("lab-ca.pem")).expect("ca");
    std::fs::write(
        home.path().join("providers.toml"),
        providers_toml("/v1", "unused", 60).replace(
            "api_key_file = \"unused\"",
            &format!("api_key_env = \"{VAR}\""),
        ),
    )
    .expect("providers");
    home.install_testing(
        "talker",
        "[limits]\ntimeout_ms = 60000\n[llm]\nmodels = [\"smollm2\"]\nescalate = [\"lab\"]\n",
    );
    home.precompile("talker");
    assert_eq!(code(&home.run(&["consent", "grant", "talker", "lab"])), 0);
    let socket = home.path().join("run/broker.sock");
    let run = |key: Option<&str>, input: &str| {
        let mut cmd = home.spawner(&["run", "talker", input]);
        match key {
            Some(key) => cmd.env(VAR, key),
            None => cmd.env_remove(VAR),
        };
        cmd.output().expect("spawner runs")
    };
    let ask = "chat\nmodel smollm2\nmax_tokens 8\nmsg user What is the capital of France?";

    // doctor says where the key comes from, and whether this environment sets it.
    let doctor = home
        .spawner(&["doctor"])
        .env(VAR, KEY)
        .output()
        .expect("doctor");
    assert!(
        stdout(&doctor).contains(&format!("${VAR} of spawner's environment (set here)")),
        "{}",
        stdout(&doctor)
    );
    assert!(!stdout(&doctor).contains(KEY));

    // Not set where spawner runs: the broker this run starts has no key, and says which
    // variable, and how to replace it; nothing reaches the server.
    let out = run(None, ask);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("${VAR}")),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("kill "), "{}", stderr(&out));
    assert_eq!(server.chat_requests(), 0);
    crate::harness::stop_broker_and_wait(&socket);

    // Set: the broker the next run starts has it, and the server serves the chat.
    let out = run(Some(KEY), ask);
    server.assert_served(&out, 1);
    // The agent itself sees no environment, the key included.
    let out = run(Some(KEY), "env");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("vars=0 "), "{}", stdout(&out));
    assert_the_key_is_nowhere(&home);
    crate::harness::stop_broker_at(&socket);
}

/// A home whose local model `smollm2` is the embedded one with its context cut to
/// `context` tokens (its files linked, its manifest rewritten).
fn home_with_short_local_model(context: u32) -> TestHome {
    let home = TestHome::new();
    let from = target().join("llm").join("smollm2-135m");
    let to = home.path().join("models").join("smollm2");
    std::fs::create_dir_all(&to).expect("mkdir");
    for file in ["smollm2-135m.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(from.join(file), to.join(file)).expect("link");
    }
    let manifest = std::fs::read_to_string(from.join("model.toml"))
        .expect("model.toml")
        .replace("name = \"smollm2-135m\"", "name = \"smollm2\"")
        .replace("context = 8192", &format!("context = {context}"));
    assert!(manifest.contains(&format!("context = {context}")));
    std::fs::write(to.join("model.toml"), manifest).expect("write");
    home
}

/// A home for escalations to `server`: the local model `smollm2` with a context of
/// `context` tokens, and the provider `lab` (remote) serving a model of that name; its
/// runs are on the machine side of the server's network.
fn escalation_home(server: &Server, dir: &Path, context: u32) -> TestHome {
    let home = home_with_short_local_model(context);
    home.run_on(server.net.machine());
    std::fs::copy(dir.join("ca.pem"), home.path().join("lab-ca.pem")).expect("ca");
    let key_file = home.path().join("lab.key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(
        home.path().join("providers.toml"),
        providers_toml("/v1", "lab.key", 60),
    )
    .expect("providers");
    home
}

/// The first LLM call of the newest run's record.
fn newest_llm_call(home: &TestHome) -> memory_store::LlmCall {
    let store = home.store();
    let runs = store
        .runs(&memory_store::RunFilter::default())
        .expect("runs");
    store
        .run(&runs[0].run_id)
        .expect("run")
        .expect("record")
        .llm_calls[0]
        .clone()
}

#[test]
fn a_conversation_too_long_for_the_local_model_escalates_under_the_same_rules() {
    let net = Network::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &net);
    let home = escalation_home(&server, dir.path(), 256);
    let manifest = |escalate: &str| {
        format!(
            "[limits]\ntimeout_ms = 60000\n[llm]\nmodels = [\"smollm2\"]\nescalate = [{escalate}]\n"
        )
    };
    home.install_testing("talker", &manifest("\"lab\""));
    home.precompile("talker");
    home.install_testing("homebody", &manifest(""));
    home.precompile("homebody");
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let ask = |agent: &str, text: &str| {
        home.run(&[
            "run",
            agent,
            &format!("chat\nmodel smollm2\nmax_tokens 8\nmsg user {text} Say hello."),
        ])
    };
    let newest_call = || newest_llm_call(&home);

    // Short: the local model answers, nothing is sent.
    let out = ask("talker", "Hi.");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("provider local"), "{}", stdout(&out));
    assert_eq!(server.chat_requests(), 0);

    // Long, without consent: refused, and nothing is sent.
    server.assert_refused_for_consent(|| ask("talker", &long), "talker");

    // Long, with consent: served by the provider, and the evidence says why.
    assert_eq!(code(&home.run(&["consent", "grant", "talker", "lab"])), 0);
    let out = ask("talker", &long);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("provider lab"), "{}", stdout(&out));
    let call = newest_call();
    assert_eq!((call.provider.as_str(), call.remote), ("lab", true));
    assert!(
        call.escalation.as_deref().is_some_and(
            |e| e.starts_with("the conversation does not fit the local model's context")
        ),
        "{call:?}"
    );
    assert!(call.prompt_tokens.unwrap_or(0) > 256, "{call:?}");

    // An agent that may not escalate hears context-too-long, as before.
    let out = ask("homebody", &long);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("ContextTooLong"), "{}", stderr(&out));
    assert_eq!(newest_call().outcome, "context-too-long");
    crate::harness::stop_broker_at(&home.path().join("run/broker.sock"));
}

#[test]
fn an_agent_that_requires_a_gpu_escalates_where_the_local_model_runs_on_the_cpu() {
    // The tests' broker runs PyPI's CPU build of ONNX Runtime: the local model can only run
    // on the CPU, so an agent that requires a GPU is never served by it.
    let net = Network::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &net);
    let home = escalation_home(&server, dir.path(), 8192);
    let manifest = |escalate: &str, requires_gpu: bool| {
        format!(
            "[limits]\ntimeout_ms = 60000\n[llm]\nmodels = [\"smollm2\"]\nescalate = [{escalate}]\n\
             [placement]\nrequires_gpu = {requires_gpu}\n"
        )
    };
    home.install_testing("gpu-only", &manifest("\"lab\"", true));
    home.precompile("gpu-only");
    home.install_testing("gpu-only-here", &manifest("", true));
    home.precompile("gpu-only-here");
    home.install_testing("anywhere", &manifest("\"lab\"", false));
    home.precompile("anywhere");
    let ask = |agent: &str| {
        home.run(&[
            "run",
            agent,
            // Any script, an emoji and a combining mark, through either route.
            "chat\nmodel smollm2\nmax_tokens 8\nmsg user Say hello: héllo, 世界, Привет 🦀 cafe\u{301}.",
        ])
    };
    let newest_call = || newest_llm_call(&home);

    // An agent that does not require a GPU is served by the local model, on the CPU.
    let out = ask("anywhere");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("provider local"), "{}", stdout(&out));
    assert_eq!(newest_call().device.as_deref(), Some("cpu"));

    // One that does, without consent: refused, and nothing is sent.
    server.assert_refused_for_consent(|| ask("gpu-only"), "gpu-only");

    // With consent: served by the provider, and the evidence says why.
    assert_eq!(code(&home.run(&["consent", "grant", "gpu-only", "lab"])), 0);
    let out = ask("gpu-only");
    server.assert_served(&out, 1);
    let call = newest_call();
    assert_eq!((call.provider.as_str(), call.remote), ("lab", true));
    assert!(
        call.escalation
            .as_deref()
            .is_some_and(|e| e.starts_with("the agent requires a GPU")),
        "{call:?}"
    );
    assert!(call.consent.is_some(), "{call:?}");

    // One that may not escalate hears why it cannot be served, and what to do; nothing
    // runs on the CPU and nothing is sent.
    let out = ask("gpu-only-here");
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("Unavailable"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[placement] requires_gpu"),
        "{}",
        stderr(&out)
    );
    let call = newest_call();
    assert_eq!(
        (call.outcome.as_str(), call.completion_tokens),
        ("unavailable", None)
    );
    assert_eq!(server.chat_requests(), 1);
    crate::harness::stop_broker_at(&home.path().join("run/broker.sock"));
}
