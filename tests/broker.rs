//! gpu-broker through the real binaries: agents calling models from their WebAssembly
//! handlers, the broker's answers compared to Python onnxruntime's (models/*/expected.json),
//! bad input and faults, batching, determinism, start-on-demand and idleness. ONNX Runtime
//! is the real library from PyPI that `cargo xtask test` puts beside the binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_contract::Outcome;
use broker_client::{Client, ClientError, Dtype, ErrorCode, Launch, Tensor};

use crate::harness::{TestHome, bin, code, exit_of, root, stderr, stdout};

/// Copy the test models `names` from models/ into the home's repository.
fn install_models(home: &TestHome, names: &[&str]) {
    for name in names {
        let to = home.path().join("models").join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for entry in std::fs::read_dir(root().join("models").join(name)).expect("models dir") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        }
    }
}

fn socket(home: &TestHome) -> PathBuf {
    home.path().join("run/broker.sock")
}

fn launch(home: &TestHome) -> Launch {
    let mut launch = Launch::new(bin("gpu-broker"), home.path(), &socket(home));
    launch.ready_timeout = Duration::from_secs(30);
    launch
}

/// A client of the home's broker, starting it when needed.
fn client(home: &TestHome) -> Client {
    std::fs::create_dir_all(home.path().join("run")).expect("mkdir");
    Client::connect_or_start(&socket(home), &launch(home)).expect("the broker starts")
}

fn broker_pid(home: &TestHome) -> i32 {
    client(home).status().expect("status")["pid"]
        .as_i64()
        .expect("pid") as i32
}

/// A tensor from an expected.json entry.
fn tensor(name: &str, v: &serde_json::Value) -> Tensor {
    let shape: Vec<u64> = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim"))
        .collect();
    let values = v["data"].as_array().expect("data");
    let (dtype, data) = match v["dtype"].as_str().expect("dtype") {
        "float32" => (
            Dtype::Float32,
            values
                .iter()
                .flat_map(|x| (x.as_f64().expect("number") as f32).to_le_bytes())
                .collect(),
        ),
        "int64" => (
            Dtype::Int64,
            values
                .iter()
                .flat_map(|x| x.as_i64().expect("integer").to_le_bytes())
                .collect(),
        ),
        other => panic!("dtype {other} not used by the test models"),
    };
    Tensor {
        name: name.into(),
        dtype,
        shape,
        data,
    }
}

fn expected(model: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(root().join("models").join(model).join("expected.json"))
            .expect("expected.json"),
    )
    .expect("json")
}

#[test]
fn answers_match_python_onnxruntime_bit_for_bit() {
    let home = TestHome::new();
    install_models(&home, &["scorer", "sentiment", "counter"]);
    let mut client = client(&home);
    for model in ["scorer", "sentiment", "counter"] {
        let expected = expected(model);
        let inputs = expected["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(n, v)| tensor(n, v))
            .collect();
        let outputs = client.infer(model, inputs).expect("inference");
        let want: Vec<Tensor> = expected["outputs"]
            .as_object()
            .expect("outputs")
            .iter()
            .map(|(n, v)| tensor(n, v))
            .collect();
        assert_eq!(
            outputs, want,
            "{model}: the broker's outputs differ from Python onnxruntime's"
        );
    }
    let status = client.status().expect("status");
    assert_eq!(status["models"]["scorer"]["provider"], "cpu", "{status}");
    assert_eq!(status["served"], 3, "{status}");
    let listed = client.list_models().expect("list");
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["counter", "scorer", "sentiment"]);
}

#[test]
fn the_sentiment_agent_reads_text_through_the_broker() {
    let home = TestHome::new();
    install_models(&home, &["sentiment"]);
    home.install_example("sentiment");
    let out = home.run(&[
        "run",
        "sentiment",
        "the new release is great, thanks for the fix",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("positive 0.") && stdout(&out).contains("(great, thanks)"),
        "{}",
        stdout(&out)
    );
    let out = home.run(&[
        "run",
        "sentiment",
        "The build is BROKEN again and the tests are slow",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("negative 0.") && stdout(&out).contains("(broken, slow)"),
        "{}",
        stdout(&out)
    );
    let out = home.run(&["run", "sentiment", "the meeting is on tuesday"]);
    assert_eq!(stdout(&out), "neutral (no word it knows)\n");
    // One broker served both runs, and it warmed the model up at start.
    let status = client(&home).status().expect("status");
    assert_eq!(status["models"]["sentiment"]["served"], 2, "{status}");
    // Its socket is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(socket(&home))
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn bad_requests_get_clear_errors_and_the_broker_keeps_serving() {
    let home = TestHome::new();
    install_models(&home, &["scorer", "counter"]);
    home.install_testing(
        "lab",
        "[limits]\nmemory_mb = 256\n[models]\nallowed = [\"scorer\", \"missing\"]\n",
    );
    let run = |args: &[&str]| {
        let mut all = vec!["run", "lab"];
        all.extend_from_slice(args);
        home.run(&all)
    };
    let good = ["infer", "scorer", "features", "float32", "1,64", "0.5"];
    let out = run(&good);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("scores ") && stdout(&out).contains(" 1,4 "),
        "{}",
        stdout(&out)
    );
    let good_answer = stdout(&out);
    let cases: &[(&[&str], &str)] = &[
        (
            &["infer", "missing", "features", "float32", "1,64", "0"],
            "UnknownModel(\"no model named \\\"missing\\\"",
        ),
        (
            &["infer", "counter", "values", "int64", "1,3", "1"],
            "NotAllowed",
        ),
        (
            &["infer", "scorer", "features", "int64", "1,64", "1"],
            "input \\\"features\\\" of model \\\"scorer\\\" must be float32, got int64",
        ),
        (
            &["infer", "scorer", "features", "float32", "64", "1"],
            "must have shape [-1, 64]",
        ),
        (
            &["infer", "scorer", "features", "float32", "2,63", "1"],
            "got [2, 63]",
        ),
        (
            &["infer", "scorer", "other", "float32", "1,64", "1"],
            "has no input \\\"other\\\"",
        ),
        (
            &["infer", "scorer"],
            "input \\\"features\\\" of model \\\"scorer\\\" is missing",
        ),
        (
            &["infer-bytes", "scorer", "features", "65"],
            "over the broker's frame limit",
        ),
    ];
    for (args, wanted) in cases {
        let out = run(args);
        assert_eq!(
            code(&out),
            exit_of(Outcome::AgentError),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(wanted), "{args:?}: {}", stderr(&out));
        // The broker is still there and right.
        assert_eq!(stdout(&run(&good)), good_answer, "after {args:?}");
    }
}

#[test]
fn a_broken_model_fails_to_load_and_the_others_keep_working() {
    let home = TestHome::new();
    install_models(&home, &["scorer", "counter", "sentiment"]);
    // Garbage where the model should be.
    std::fs::write(
        home.path().join("models/counter/counter.onnx"),
        b"not an onnx model",
    )
    .expect("write");
    // A manifest that does not match its model's real input.
    let manifest = home.path().join("models/sentiment/model.toml");
    let text = std::fs::read_to_string(&manifest)
        .expect("read")
        .replace("name = \"counts\"", "name = \"words\"");
    std::fs::write(&manifest, text).expect("write");
    let mut client = client(&home);
    let err = client
        .infer(
            "counter",
            vec![tensor(
                "values",
                &serde_json::json!({"dtype": "int64", "shape": [1, 3], "data": [1, 2, 3]}),
            )],
        )
        .expect_err("corrupt model");
    assert!(
        matches!(&err, ClientError::Broker { code: ErrorCode::LoadFailed, message } if message.contains("model \"counter\" could not be loaded")),
        "{err}"
    );
    let err = client
        .infer(
            "sentiment",
            vec![Tensor::from_f32("words", vec![1, 60], &[0.0; 60])],
        )
        .expect_err("mismatched manifest");
    assert!(
        matches!(&err, ClientError::Broker { code: ErrorCode::LoadFailed, message }
            if message.contains("the manifest's input \"words\"") && message.contains("the model's \"counts\"")),
        "{err}"
    );
    let expected = expected("scorer");
    let inputs = expected["inputs"]
        .as_object()
        .expect("inputs")
        .iter()
        .map(|(n, v)| tensor(n, v))
        .collect();
    client.infer("scorer", inputs).expect("scorer still works");
    let status = client.status().expect("status");
    assert!(
        status["models"]["counter"]["load_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not be loaded")),
        "{status}"
    );
}

#[test]
fn a_model_that_requires_a_gpu_fails_without_one() {
    let home = TestHome::new();
    install_models(&home, &["scorer"]);
    let manifest = home.path().join("models/scorer/model.toml");
    let text = std::fs::read_to_string(&manifest).expect("read").replace(
        "providers = [\"cuda\", \"cpu\"]",
        "providers = [\"cuda\"]\nrequire_gpu = true",
    );
    std::fs::write(&manifest, text).expect("write");
    let err = client(&home)
        .infer(
            "scorer",
            vec![Tensor::from_f32("features", vec![1, 64], &[0.0; 64])],
        )
        .expect_err("no GPU here");
    // On a machine with a GPU and the CUDA library this test would need another library.
    assert!(
        matches!(&err, ClientError::Broker { code: ErrorCode::GpuRequired, message } if message.contains("requires a GPU and none can be used")),
        "{err}"
    );
}

#[test]
fn without_batching_answers_are_bit_identical_run_to_run() {
    let home = TestHome::new();
    install_models(&home, &["scorer"]);
    let mut client = client(&home);
    let values: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
    let first = client
        .infer(
            "scorer",
            vec![Tensor::from_f32("features", vec![2, 64], &values)],
        )
        .expect("infer");
    for _ in 0..50 {
        let again = client
            .infer(
                "scorer",
                vec![Tensor::from_f32("features", vec![2, 64], &values)],
            )
            .expect("infer");
        assert_eq!(again, first);
    }
}

/// Scores of row `i` computed alone (no batching): the reference for the batched answers.
fn batching_home() -> TestHome {
    let home = TestHome::new();
    install_models(&home, &["scorer"]);
    let dir = home.path().join("models");
    let batched = dir.join("scorer-batched");
    std::fs::create_dir_all(&batched).expect("mkdir");
    std::fs::copy(dir.join("scorer/scorer.onnx"), batched.join("scorer.onnx")).expect("copy");
    let text = std::fs::read_to_string(dir.join("scorer/model.toml"))
        .expect("read")
        .replace("name = \"scorer\"", "name = \"scorer-batched\"")
        + "\n[batching]\nmax_batch = 16\nmax_delay_us = 20000\n";
    std::fs::write(batched.join("model.toml"), text).expect("write");
    home
}

#[test]
fn thirty_two_clients_at_once_each_get_their_own_answer() {
    let home = batching_home();
    let row = |k: usize| -> Vec<f32> {
        (0..64)
            .map(|j| ((k * 64 + j) as f32 * 0.013).cos())
            .collect()
    };
    // The reference: each input alone, batching off.
    let mut alone = client(&home);
    let reference: Vec<Tensor> = (0..32)
        .map(|k| {
            alone
                .infer(
                    "scorer",
                    vec![Tensor::from_f32("features", vec![1, 64], &row(k))],
                )
                .expect("infer")
                .remove(0)
        })
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
    let workers: Vec<_> = (0..32)
        .map(|k| {
            let (socket, launch, barrier) = (socket(&home), launch(&home), barrier.clone());
            let input = row(k);
            std::thread::spawn(move || {
                let mut c = Client::connect_or_start(&socket, &launch).expect("connect");
                barrier.wait();
                c.infer(
                    "scorer-batched",
                    vec![Tensor::from_f32("features", vec![1, 64], &input)],
                )
                .expect("infer")
                .remove(0)
            })
        })
        .collect();
    for (k, w) in workers.into_iter().enumerate() {
        let got = w.join().expect("worker");
        let want = &reference[k];
        let (g, w) = (got.to_f32().expect("f32"), want.to_f32().expect("f32"));
        assert_eq!(got.shape, vec![1, 4]);
        let diff = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "client {k} got {g:?}, alone it is {w:?}");
    }
    let status = client(&home).status().expect("status");
    let largest = status["models"]["scorer-batched"]["largest_batch"]
        .as_u64()
        .expect("largest");
    assert!(largest > 1, "no batch was formed: {status}");
    assert_eq!(status["models"]["scorer-batched"]["served"], 32);
}

#[test]
fn a_killed_broker_gives_broker_unavailable_and_the_next_run_starts_a_new_one() {
    let home = batching_home();
    // A long batching delay keeps the request inside the broker while it is killed.
    let manifest = home.path().join("models/scorer-batched/model.toml");
    let text = std::fs::read_to_string(&manifest)
        .expect("read")
        .replace("max_delay_us = 20000", "max_delay_us = 3000000");
    std::fs::write(&manifest, text).expect("write");
    home.install_testing(
        "lab",
        "[models]\nallowed = [\"scorer\", \"scorer-batched\"]\n",
    );
    let first = broker_pid(&home);
    let child = home
        .spawner(&[
            "run",
            "lab",
            "infer",
            "scorer-batched",
            "features",
            "float32",
            "1,64",
            "0.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the request is queued in the broker, then kill it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client(&home).status().expect("status");
        if status["models"]["scorer-batched"]["provider"] == "cpu"
            && status["connections"].as_u64() >= Some(2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the broker: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        code(&out),
        exit_of(Outcome::BrokerUnavailable),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("the inference broker is unavailable"),
        "{}",
        stderr(&out)
    );
    let out = home.run(&[
        "run", "lab", "infer", "scorer", "features", "float32", "1,64", "0.5",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_ne!(broker_pid(&home), first, "a new broker serves");
}

#[test]
fn many_starters_at_once_make_exactly_one_broker() {
    let home = TestHome::new();
    install_models(&home, &["scorer"]);
    std::fs::create_dir_all(home.path().join("run")).expect("mkdir");
    let workers: Vec<_> = (0..12)
        .map(|_| {
            let (socket, launch) = (socket(&home), launch(&home));
            std::thread::spawn(move || {
                let mut c = Client::connect_or_start(&socket, &launch).expect("connect");
                c.status().expect("status")["pid"].as_i64().expect("pid")
            })
        })
        .collect();
    let pids: std::collections::BTreeSet<i64> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // A second broker on the same socket refuses to start.
    let out = Command::new(bin("gpu-broker"))
        .args(&launch(&home).args)
        .output()
        .expect("gpu-broker");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("another gpu-broker is serving"),
        "{out:?}"
    );
}

/// Whether process `pid` exits within `limit`: gone, or a zombie of this test process (which
/// started it and never waits for it). Polls /proc: an exit has no other signal here.
fn exits_within(pid: i64, limit: Duration) -> bool {
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + limit;
    while !exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    exited()
}

#[test]
fn an_idle_broker_exits_and_removes_its_socket() {
    let home = TestHome::new();
    let dir = home.path().join("run");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut launch = launch(&home);
    launch.args.extend(["--idle-ttl".into(), "1".into()]);
    let mut c = Client::connect_or_start(&socket(&home), &launch).expect("start");
    let pid = c.status().expect("status")["pid"].as_i64().expect("pid");
    drop(c);
    assert!(exits_within(pid, Duration::from_secs(10)), "still running");
    assert!(!socket(&home).exists());
}

#[test]
fn a_missing_library_is_a_clear_error() {
    let home = TestHome::new();
    let out = Command::new(bin("gpu-broker"))
        .args(&launch(&home).args)
        .args(["--ort-lib", "/nonexistent/libonnxruntime.so"])
        .output()
        .expect("gpu-broker");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(
            "error: the ONNX Runtime library was not found (tried: /nonexistent/libonnxruntime.so)"
        ),
        "{said}"
    );
    assert!(said.contains("cargo xtask setup"), "{said}");
}

#[test]
fn no_telemetry_files_appear_in_the_users_cache() {
    let home = TestHome::new();
    install_models(&home, &["sentiment"]);
    home.install_example("sentiment");
    let user = tempfile::tempdir().expect("tempdir");
    let cache = user.path().join(".cache");
    std::fs::create_dir_all(&cache).expect("mkdir");
    let out = home
        .spawner(&["run", "sentiment", "great work"])
        .env("HOME", user.path())
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .expect("run");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let found: Vec<PathBuf> = walk(user.path());
    assert!(
        found.is_empty(),
        "files written under the user's home: {found:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

#[test]
fn doctor_shows_the_broker_and_its_models() {
    let home = TestHome::new();
    install_models(&home, &["sentiment", "scorer"]);
    home.install_example("sentiment");
    let out = home.run(&["doctor"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("broker   not running"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("models   2 in") && stdout(&out).contains(": scorer, sentiment"),
        "{}",
        stdout(&out)
    );
    let out = home.run(&["run", "sentiment", "great"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = home.run(&["doctor"]);
    let text = stdout(&out);
    assert!(
        text.contains("broker   running, pid ") && text.contains("CUDA in the library: no"),
        "{text}"
    );
    assert!(text.contains("model sentiment: on cpu, served 1"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&home.run(&["doctor", "--json"]).stdout).expect("json");
    assert_eq!(
        json["broker"]["broker"]["models"]["sentiment"]["provider"],
        "cpu"
    );
}

/// The soft and hard limits `/proc/<pid>/limits` shows for `what` ("Max open files").
fn proc_limits(pid: i32, what: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} in {text}"));
    let mut fields = line[what.len()..].split_whitespace();
    (
        fields.next().expect("soft").to_owned(),
        fields.next().expect("hard").to_owned(),
    )
}

#[test]
fn a_broker_started_by_a_request_takes_its_own_limits_not_the_requests() {
    let home = TestHome::new();
    install_models(&home, &["scorer"]);
    home.install_testing("lab", "[models]\nallowed = [\"scorer\"]\n");
    // The run's agent-exec (CPU-time backstop, 256 files) starts the broker.
    let out = home.run(&[
        "run", "lab", "infer", "scorer", "features", "float32", "1,64", "0.5",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pid = broker_pid(&home);
    let (soft, hard) = proc_limits(pid, "Max open files");
    assert_eq!(soft, hard, "open files: soft limit raised to the hard one");
    assert_ne!(soft, "256");
    let (soft, hard) = proc_limits(pid, "Max cpu time");
    assert_eq!(soft, hard, "no CPU-time backstop of a request");
    // Nor the request's working directory, nor the caller's environment.
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, Path::new("/"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("CARGO") && !environ.contains("PATH="),
        "{environ}"
    );
}

#[test]
fn a_broker_started_by_a_request_allows_huge_pages_whatever_its_starter_chose() {
    use std::os::unix::process::CommandExt;
    let home = TestHome::new();
    install_models(&home, &["scorer"]);
    home.install_testing("lab", "[models]\nallowed = [\"scorer\"]\n");
    // The musl builds of spawner and agent-exec turn transparent huge pages off for
    // themselves; the kernel passes that on to the broker a request starts. Here the
    // spawner starts with them off, whichever build it is.
    let mut spawner = home.spawner(&[
        "run", "lab", "infer", "scorer", "features", "float32", "1,64", "0.5",
    ]);
    // SAFETY: between fork and exec the closure only makes one system call.
    unsafe {
        spawner.pre_exec(|| nix::sys::prctl::set_thp_disable(true).map_err(Into::into));
    }
    let out = spawner.output().expect("spawner runs");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pid = broker_pid(&home);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in {status}"));
    assert_eq!(
        thp.trim(),
        "1",
        "the broker's own setting, not its starter's"
    );
}

/// A raw connection to the broker's socket that sends nothing.
fn raw_connection(home: &TestHome) -> std::os::unix::net::UnixStream {
    std::os::unix::net::UnixStream::connect(socket(home)).expect("connect")
}

/// The error code of the first frame `stream` gets (an error frame: kind 8, id, code).
fn first_error_code(stream: &mut std::os::unix::net::UnixStream) -> Option<u8> {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    (body.first() == Some(&8)).then(|| body[9])
}

#[test]
fn connections_past_the_bound_are_answered_busy_and_the_broker_keeps_serving() {
    let home = TestHome::new();
    let pid = broker_pid(&home);
    // Hold the broker's limit of connections (each waiting for a hello).
    let held: Vec<_> = (0..gpu_broker::MAX_CONNECTIONS)
        .map(|_| raw_connection(&home))
        .collect();
    // Wait until the broker counts them all, then one more is refused with `busy`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut extra = raw_connection(&home);
        match first_error_code(&mut extra) {
            Some(code) if code == ErrorCode::Busy as u8 => break,
            _ => assert!(Instant::now() < deadline, "no connection was refused"),
        }
    }
    drop(held);
    // Served again once they close; the same broker.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match Client::connect(&socket(&home)).and_then(|mut c| c.status()) {
            Ok(status) => break status,
            Err(e) => assert!(Instant::now() < deadline, "not served again: {e}"),
        }
    };
    assert_eq!(status["pid"].as_i64(), Some(i64::from(pid)));
}

#[test]
fn a_stalled_client_is_closed_and_cannot_hold_off_the_idle_ttl() {
    let home = TestHome::new();
    std::fs::create_dir_all(home.path().join("run")).expect("mkdir");
    let mut launch = launch(&home);
    launch.args.extend(
        ["--idle-ttl", "1", "--client-timeout", "1"]
            .iter()
            .map(|s| s.to_string()),
    );
    let pid = Client::connect_or_start(&socket(&home), &launch)
        .expect("start")
        .status()
        .expect("status")["pid"]
        .as_i64()
        .expect("pid");
    // Half a frame, then nothing: the broker closes this connection at its deadline.
    let mut stalled = raw_connection(&home);
    std::io::Write::write_all(&mut stalled, &[9, 0]).expect("write");
    let mut rest = Vec::new();
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let closed = std::io::Read::read_to_end(&mut stalled, &mut rest);
    assert!(closed.is_ok(), "the broker closed the stalled connection");
    // With the stalled client gone, the broker goes idle and exits.
    assert!(
        exits_within(pid, Duration::from_secs(60)),
        "the broker is still running"
    );
    drop(stalled);
}

#[test]
fn a_peer_running_as_another_user_gets_no_welcome() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new();
    broker_pid(&home);
    // A misconfigured home: the directory and the socket open to everyone.
    for (path, mode) in [
        (home.path().to_owned(), 0o755),
        (home.path().join("run"), 0o755),
        (socket(&home), 0o777),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    // Debian's python3 (reachable by any user) speaks the hello as uid 65534.
    let hello = "import socket,struct,sys\n\
        s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
        body=bytes([1])+b'SPBK'+struct.pack('<H',1)\n\
        try: s.sendall(struct.pack('<I',len(body))+body)\n\
        except OSError: pass  # refused at once, maybe before the hello is written\n\
        n=struct.unpack('<I',s.recv(4))[0]; b=s.recv(n)\n\
        print('kind', b[0], 'code', b[9] if b[0]==8 else '-', b[10:].decode(errors='replace'))\n";
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", hello])
        .arg(socket(&home))
        .output()
        .expect("setpriv");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("kind 8 code {}", ErrorCode::Forbidden as u8))
            && text.contains("uid 65534 is refused"),
        "{text}{}",
        stderr(&out)
    );
    // Its own user is still served.
    assert!(client(&home).status().is_ok());
}

#[test]
fn with_the_default_home_the_request_the_broker_and_doctor_agree_on_the_layout() {
    // The default home ($XDG_DATA_HOME/spawner) with $XDG_RUNTIME_DIR set: its broker
    // listens in the runtime directory. agent-exec runs with a cleared environment, so the
    // spawner resolves the layout (socket, broker program, ONNX Runtime library) for it.
    let base = tempfile::tempdir().expect("tempdir");
    let data = base.path().join("data");
    let runtime = base.path().join("runtime");
    std::fs::create_dir_all(&runtime).expect("mkdir");
    let home = TestHome::new();
    install_models(&home, &["sentiment"]);
    home.install_example("sentiment");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::rename(home.path(), data.join("spawner")).expect("move the home");
    // The library somewhere the broker would not look by itself.
    let library_dir = base.path().join("lib");
    std::fs::create_dir_all(&library_dir).expect("mkdir");
    let library = library_dir.join("libonnxruntime.so");
    let shipped = std::fs::read_dir(bin("gpu-broker").parent().expect("dir"))
        .expect("bin dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .expect("the library beside gpu-broker");
    std::fs::copy(shipped, &library).expect("copy the library");
    let spawner = |args: &[&str]| {
        Command::new(bin("spawner"))
            .args(args)
            .env_remove("SPAWNER_HOME")
            .env("XDG_DATA_HOME", &data)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("ORT_DYLIB_PATH", &library)
            .stdin(Stdio::null())
            .output()
            .expect("spawner runs")
    };
    let out = spawner(&["run", "sentiment", "great work"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let socket = runtime.join("spawner/broker.sock");
    assert!(socket.exists(), "the broker is not at {}", socket.display());
    let out = spawner(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    assert_eq!(report["broker"]["status"], "running", "{report}");
    assert_eq!(
        report["broker"]["broker"]["library"].as_str(),
        library.to_str(),
        "{report}"
    );
    // Stop it: the home is about to go.
    crate::harness::stop_broker_at(&socket);
}
