//! `spawner hook`: real git in temporary repositories, Claude Code payloads, bad input,
//! failing agents and the fail-open/closed policy, `hook install`/`uninstall`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agent_contract::Outcome;
use serde_json::{Value, json};

use crate::harness::{TestHome, code, exit_of, stderr, stdout};

/// A git repository in a temp dir, with git's user configuration kept out.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        repo.git_ok(&["init", "-q", "-b", "main"]);
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> Output {
        Command::new("git")
            .current_dir(self.path())
            .args(args)
            .env("HOME", self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git runs")
    }

    fn git_ok(&self, args: &[&str]) -> String {
        let out = self.git(args);
        assert_eq!(code(&out), 0, "git {args:?}: {}", stderr(&out));
        stdout(&out)
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn commit_count(&self) -> usize {
        let out = self.git(&["rev-list", "--count", "HEAD"]);
        stdout(&out).trim().parse().unwrap_or(0)
    }

    fn hook_path(&self, name: &str) -> PathBuf {
        self.path().join(".git/hooks").join(name)
    }
}

/// `spawner --home H hook install <agent> --git <hook> --repo <repo>`.
fn install(home: &TestHome, repo: &Repo, agent: &str, hook: &str) {
    let repo_dir = repo.path().to_str().expect("utf-8 path");
    let out = home.run(&["hook", "install", agent, "--git", hook, "--repo", repo_dir]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn private_key() -> String {
    // Built at run time so this source file does not trip secret scanners itself.
    format!(
        "-----BEGIN {} PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n",
        "RSA"
    )
}

fn github_token() -> String {
    format!(
        "ghp_{}",
        "aB3dE5fG7h".repeat(4).get(..36).expect("36 chars")
    )
}

#[test]
fn a_commit_adding_a_private_key_is_aborted_naming_file_and_line() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let repo = Repo::new();
    install(&home, &repo, "secret-guard", "pre-commit");

    repo.write("README.md", "hello\n");
    repo.git_ok(&["add", "README.md"]);
    repo.git_ok(&["commit", "-q", "-m", "clean commit"]);
    assert_eq!(repo.commit_count(), 1);

    repo.write("deploy/id_rsa", &format!("# deploy key\n{}", private_key()));
    repo.git_ok(&["add", "deploy/id_rsa"]);
    let out = repo.git(&["commit", "-q", "-m", "add key"]);
    assert_ne!(code(&out), 0, "the commit must be aborted");
    assert!(
        stderr(&out).contains("deploy/id_rsa:2: private key block\n"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.commit_count(), 1, "nothing was committed");

    // The allowlist marker lets a documented fixture through.
    repo.git_ok(&["rm", "-q", "--cached", "deploy/id_rsa"]);
    repo.write(
        "docs/example.md",
        &format!(
            "aws_key = {}  # secret-guard: allow\n",
            "AKIAZ7VQ3KQ2LMNOPQRS"
        ),
    );
    repo.git_ok(&["add", "docs/example.md"]);
    repo.git_ok(&["commit", "-q", "-m", "docs"]);
    assert_eq!(repo.commit_count(), 2);
}

#[test]
fn a_secret_in_a_commit_message_is_redacted_by_the_commit_msg_hook() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let repo = Repo::new();
    install(&home, &repo, "secret-guard", "commit-msg");
    let token = github_token();
    let out = repo.git(&[
        "commit",
        "--allow-empty",
        "-q",
        "-m",
        &format!("rotate credentials\n\nold token was {token}"),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("redacted 1 secret"),
        "{}",
        stderr(&out)
    );
    let message = repo.git_ok(&["log", "-1", "--format=%B"]);
    assert!(message.contains("old token was [redacted]"), "{message}");
    assert!(!message.contains(&token), "{message}");
}

#[test]
fn pre_push_receives_the_remote_and_the_ref_lines_and_can_block() {
    let home = TestHome::new();
    home.install_testing("push-check", "[config]\nhook_decision = \"pass\"\n");
    let remote = tempfile::tempdir().expect("tempdir");
    let remote_dir = remote.path().to_str().expect("utf-8");
    Command::new("git")
        .args(["init", "-q", "--bare", remote_dir])
        .status()
        .expect("git init --bare");
    let repo = Repo::new();
    repo.git_ok(&["remote", "add", "origin", remote_dir]);
    repo.git_ok(&["commit", "--allow-empty", "-q", "-m", "one"]);
    let head = repo.git_ok(&["rev-parse", "HEAD"]).trim().to_owned();
    install(&home, &repo, "push-check", "pre-push");

    let out = repo.git(&["push", "-q", "origin", "main"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("pre-push remote=origin url={remote_dir}")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "ref refs/heads/main {head} refs/heads/main {}",
            "0".repeat(40)
        )),
        "{err}"
    );

    // Denied: the remote does not move.
    home.write_manifest(
        "push-check",
        "name = \"push-check\"\nversion = \"0.1.0\"\ncomponent = \"push-check.wasm\"\n\
         [config]\nhook_decision = \"deny\"\nhook_reason = \"no pushes on Fridays\"\n",
    );
    repo.git_ok(&["commit", "--allow-empty", "-q", "-m", "two"]);
    let out = repo.git(&["push", "-q", "origin", "main"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("no pushes on Fridays"),
        "{}",
        stderr(&out)
    );
    let remote_head = Command::new("git")
        .args(["--git-dir", remote_dir, "rev-parse", "main"])
        .output()
        .expect("rev-parse");
    assert_eq!(stdout(&remote_head).trim(), head);
}

/// A Claude Code hook event.
fn claude_event(name: &str, extra: Value) -> Vec<u8> {
    let mut event = json!({
        "session_id": "sess-1",
        "transcript_path": "/tmp/transcript.jsonl",
        "cwd": "/tmp",
        "hook_event_name": name,
    });
    if let (Some(e), Some(x)) = (event.as_object_mut(), extra.as_object()) {
        e.extend(x.clone());
    }
    event.to_string().into_bytes()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

#[test]
fn claude_code_pre_tool_use_writing_a_secret_is_denied_and_harmless_calls_pass() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let write = claude_event(
        "PreToolUse",
        json!({"tool_name": "Write", "tool_input": {
            "file_path": "/tmp/settings.py",
            "content": format!("DEBUG = True\nGITHUB_TOKEN = \"{}\"\n", github_token()),
        }}),
    );
    let out = home.run_with_stdin(&["hook", "secret-guard"], &write);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let answer = json_out(&out);
    let specific = &answer["hookSpecificOutput"];
    assert_eq!(specific["hookEventName"], "PreToolUse");
    assert_eq!(specific["permissionDecision"], "deny");
    let reason = specific["permissionDecisionReason"]
        .as_str()
        .expect("reason");
    assert!(
        reason.contains("settings.py:2: GitHub token (ghp_…)"),
        "{reason}"
    );
    assert!(
        !reason.contains(&github_token()),
        "the secret itself is not repeated"
    );

    let bash = claude_event(
        "PreToolUse",
        json!({"tool_name": "Bash", "tool_input": {"command": "cargo test --release"}}),
    );
    let out = home.run_with_stdin(
        &["hook", "secret-guard", "--protocol", "claude-code"],
        &bash,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "no objection, no decision: {}",
        stdout(&out)
    );

    for unhandled in [
        claude_event(
            "Notification",
            json!({"message": "Claude needs your permission"}),
        ),
        claude_event("SomeFutureEvent", json!({"novel_field": {"x": [1, 2]}})),
    ] {
        let out = home.run_with_stdin(&["hook", "secret-guard"], &unhandled);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
    }
}

#[test]
fn claude_code_events_arrive_normalized_with_edit_line_numbers() {
    let home = TestHome::new();
    home.install_testing(
        "describe",
        "[config]\nhook_decision = \"ask\"\nhook_reason = \"check this\"\nhook_message = \"describe\"\n",
    );
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join("lib.rs"),
        "fn a() {}\nfn b() {}\nfn c() {}\n",
    )
    .expect("write");
    let cwd = work.path().to_str().expect("utf-8");
    let edit = claude_event(
        "PreToolUse",
        json!({"cwd": cwd, "tool_name": "Edit", "tool_input": {
            "file_path": format!("{cwd}/lib.rs"), "old_string": "fn c() {}",
            "new_string": "fn c() { todo() }\nfn d() {}",
        }}),
    );
    let out = home.run_with_stdin(&["hook", "describe"], &edit);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let answer = json_out(&out);
    assert_eq!(answer["hookSpecificOutput"]["permissionDecision"], "ask");
    assert_eq!(
        answer["hookSpecificOutput"]["permissionDecisionReason"],
        "check this"
    );
    // What the agent saw: the event's fields, and the edit's new lines numbered from
    // where its old text sits in the file.
    let seen = answer["systemMessage"].as_str().expect("description");
    assert!(
        seen.contains(&format!(
            "assistant event=PreToolUse session=sess-1 cwd={cwd} tool=Edit"
        )),
        "{seen}"
    );
    assert!(seen.contains("write lib.rs:3:fn c() { todo() }"), "{seen}");
    assert!(seen.contains("write lib.rs:4:fn d() {}"), "{seen}");

    let prompt = claude_event("UserPromptSubmit", json!({"prompt": "hello there"}));
    let answer = json_out(&home.run_with_stdin(&["hook", "describe"], &prompt));
    assert!(
        answer["systemMessage"]
            .as_str()
            .expect("description")
            .contains("prompt hello there")
    );
    // `ask` has no meaning outside PreToolUse: it blocks.
    assert_eq!(answer["decision"], "block");
    assert_eq!(answer["reason"], "check this");

    // The plain protocol shows the output, and ask blocks there too.
    let out = home.run_with_stdin(&["hook", "describe", "--protocol", "plain"], b"x");
    assert_eq!(stdout(&out), "plain\n");
    assert_eq!(code(&out), exit_of(Outcome::Rejected));
}

#[test]
fn bad_claude_code_input_fails_open_by_default_and_closed_when_asked() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let huge = vec![b' '; (agent_contract::envelope::MAX_INPUT_BYTES + 10) as usize];
    for (input, needle) in [
        (&b""[..], "no hook event"),
        (
            &b"{\"hook_event_name\": "[..],
            "not a Claude Code hook event",
        ),
        (&b"[1, 2, 3]"[..], "not a Claude Code hook event"),
        (&huge[..], "over the limit"),
    ] {
        let out = home.run_with_stdin(
            &["hook", "secret-guard", "--protocol", "claude-code"],
            input,
        );
        assert_eq!(code(&out), 0, "fail-open: {}", stderr(&out));
        let message = json_out(&out)["systemMessage"].as_str().map(str::to_owned);
        let message = message.expect("the user is told");
        assert!(
            message.contains("fail-open") && message.contains(needle),
            "{message}"
        );

        let out = home.run_with_stdin(
            &[
                "hook",
                "secret-guard",
                "--protocol",
                "claude-code",
                "--fail",
                "closed",
            ],
            input,
        );
        assert_eq!(code(&out), 2, "fail-closed blocks with exit 2");
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_crashing_or_hanging_hook_agent_gets_the_configured_result() {
    let home = TestHome::new();
    home.install_testing("crashy", "[config]\nhook_fault = \"panic\"\n");
    home.install_testing(
        "slow",
        "[limits]\ntimeout_ms = 300\n[config]\nhook_fault = \"loop\"\n",
    );
    let event = claude_event(
        "PreToolUse",
        json!({"tool_name": "Bash", "tool_input": {"command": "ls"}}),
    );
    let out = home.run_with_stdin(&["hook", "crashy"], &event);
    assert_eq!(code(&out), 0);
    let message = json_out(&out)["systemMessage"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("crashy failed") && message.contains("trap"),
        "{message}"
    );
    let out = home.run_with_stdin(&["hook", "slow", "--fail", "closed"], &event);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("timeout"), "{}", stderr(&out));

    // git hooks fail closed by default: the commit stops, and says how to bypass.
    let repo = Repo::new();
    install(&home, &repo, "crashy", "pre-commit");
    repo.write("a.txt", "a\n");
    repo.git_ok(&["add", "a.txt"]);
    let out = repo.git(&["commit", "-q", "-m", "a"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("fail-closed") && stderr(&out).contains("--no-verify"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.commit_count(), 0);
    // ... unless the hook says open.
    let script = repo.hook_path("pre-commit");
    let text = std::fs::read_to_string(&script).expect("hook script");
    std::fs::write(
        &script,
        text.replace("--protocol pre-commit", "--protocol pre-commit --fail open"),
    )
    .expect("edit hook");
    let out = repo.git(&["commit", "-q", "-m", "a"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("fail-open"), "{}", stderr(&out));
    assert_eq!(repo.commit_count(), 1);
}

#[test]
fn hook_agents_see_only_their_declared_work_dir_preopens_read_only() {
    let home = TestHome::new();
    home.install_testing(
        "reader",
        "[[preopens]]\nhost = \".\"\nguest = \"/repo\"\nrelative_to = \"work_dir\"\n\
         [config]\nhook_read = \"/repo/notes.txt\"\n",
    );
    let repo = Repo::new();
    repo.write("notes.txt", "visible to the hook\n");
    install(&home, &repo, "reader", "pre-commit");
    repo.git_ok(&["add", "notes.txt"]);
    let out = repo.git(&["commit", "-q", "-m", "n"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("read /repo/notes.txt: visible to the hook"),
        "{err}"
    );
    assert!(err.contains("add notes.txt:1:visible to the hook"), "{err}");

    // Nothing outside the preopen is visible.
    let reader = |config: &str| {
        format!(
            "name = \"reader\"\nversion = \"0.1.0\"\ncomponent = \"reader.wasm\"\n\
             [[preopens]]\nhost = \".\"\nguest = \"/repo\"\nrelative_to = \"work_dir\"\n\
             [config]\n{config}\n"
        )
    };
    home.write_manifest("reader", &reader("hook_read = \"/etc/passwd\""));
    let out = repo.git(&["commit", "--allow-empty", "-q", "-m", "m"]);
    assert!(
        stderr(&out).contains("cannot read /etc/passwd"),
        "{}",
        stderr(&out)
    );

    // And the preopen is read-only.
    home.write_manifest("reader", &reader("hook_write = \"/repo/planted.txt\""));
    let out = repo.git(&["commit", "--allow-empty", "-q", "-m", "w"]);
    assert!(
        stderr(&out).contains("cannot write /repo/planted.txt"),
        "{}",
        stderr(&out)
    );
    assert!(!repo.path().join("planted.txt").exists());
}

#[test]
fn install_respects_hooks_path_and_existing_hooks_and_uninstall_restores_them() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let repo = Repo::new();
    repo.git_ok(&["config", "core.hooksPath", "githooks"]);
    let hooks = repo.path().join("githooks");
    std::fs::create_dir_all(&hooks).expect("mkdir");
    const MINE: &str = "#!/bin/sh\necho mine\n";
    std::fs::write(hooks.join("pre-commit"), MINE).expect("write");
    let pre_commit = || std::fs::read_to_string(hooks.join("pre-commit")).expect("read");
    let repo_dir = repo.path().to_str().expect("utf-8");

    let out = home.run(&[
        "hook",
        "install",
        "secret-guard",
        "--git",
        "pre-commit",
        "--repo",
        repo_dir,
    ]);
    assert_eq!(code(&out), exit_of(Outcome::Usage));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(pre_commit(), MINE, "an existing hook is not overwritten");

    let out = home.run(&[
        "hook",
        "install",
        "secret-guard",
        "--git",
        "pre-commit",
        "--repo",
        repo_dir,
        "--force",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let installed = pre_commit();
    assert!(
        installed.contains("hook 'secret-guard' --protocol pre-commit"),
        "{installed}"
    );
    assert!(
        !repo.hook_path("pre-commit").exists(),
        ".git/hooks is not used with core.hooksPath"
    );

    // The installed hook works through core.hooksPath.
    repo.write("k", &private_key());
    repo.git_ok(&["add", "k"]);
    assert_ne!(code(&repo.git(&["commit", "-q", "-m", "k"])), 0);

    let out = home.run(&[
        "hook",
        "uninstall",
        "--git",
        "pre-commit",
        "--repo",
        repo_dir,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(pre_commit(), MINE, "the previous hook is back");
    // A hook spawner did not install is left alone.
    let out = home.run(&[
        "hook",
        "uninstall",
        "--git",
        "pre-commit",
        "--repo",
        repo_dir,
    ]);
    assert_eq!(code(&out), exit_of(Outcome::Usage));
    assert!(hooks.join("pre-commit").exists());
}

#[test]
fn install_refuses_an_unknown_agent_and_prints_claude_code_settings() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let repo = Repo::new();
    let repo_dir = repo.path().to_str().expect("utf-8");
    let out = home.run(&[
        "hook",
        "install",
        "nosuch",
        "--git",
        "pre-commit",
        "--repo",
        repo_dir,
    ]);
    assert_eq!(code(&out), exit_of(Outcome::NotFound));
    assert!(!repo.hook_path("pre-commit").exists());

    let out = home.run(&["hook", "install", "secret-guard", "--claude-code"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let settings = json_out(&out);
    let entry = &settings["hooks"]["PreToolUse"][0];
    assert!(
        entry["matcher"]
            .as_str()
            .expect("matcher")
            .contains("Write")
    );
    let command = entry["hooks"][0]["command"].as_str().expect("command");
    assert!(
        command.contains("hook 'secret-guard' --protocol claude-code"),
        "{command}"
    );

    // The printed command really works as a hook (run through a shell, as Claude Code does).
    let event = claude_event(
        "PreToolUse",
        json!({"tool_name": "Write", "tool_input": {"file_path": "/tmp/k", "content": private_key()}}),
    );
    let mut child = Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &event).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        json_out(&out)["hookSpecificOutput"]["permissionDecision"],
        "deny"
    );
}

#[test]
fn plain_hooks_answer_on_stdout_with_the_verdict_as_exit_code() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let out = home.run_with_stdin(&["hook", "secret-guard"], b"just text\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "no secrets found\n");
    let out = home.run_with_stdin(
        &["hook", "secret-guard", "--protocol", "plain"],
        format!("line one\nexport TOKEN={}\n", github_token()).as_bytes(),
    );
    assert_eq!(code(&out), exit_of(Outcome::Rejected));
    assert!(
        stderr(&out).contains("(input):2: GitHub token"),
        "{}",
        stderr(&out)
    );
}

/// A Claude Code PreToolUse answer that denies, with a reason containing `needle`.
fn assert_pre_tool_use_denied(out: &Output, needle: &str) {
    assert_eq!(code(out), 0, "{}", stderr(out));
    let answer = json_out(out);
    let specific = &answer["hookSpecificOutput"];
    assert_eq!(specific["permissionDecision"], "deny", "{answer}");
    assert!(
        specific["permissionDecisionReason"]
            .as_str()
            .is_some_and(|r| r.contains(needle)),
        "{answer}"
    );
}

/// Text in several scripts, emoji (a joined family, a flag sequence) and combining marks.
const ANY_SCRIPT: &str =
    "naïve café · 日本語のテキスト · Привет · مرحبا · 👩‍👩‍👧‍👦 🏳️‍🌈 · e\u{301}n\u{303}";

#[test]
fn secret_guard_scans_text_of_any_script_in_claude_code_and_git() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    // Claude Code: an AWS key beside non-ASCII text is found (the hook used to trap and
    // fail open, allowing the write).
    let write = claude_event(
        "PreToolUse",
        json!({"tool_name": "Write", "tool_input": {
            "file_path": "/tmp/notes.md",
            "content": format!("{ANY_SCRIPT}\n{ANY_SCRIPT} {} {ANY_SCRIPT}\n", "AKIAZ7VQ3KQ2LMNOPQRS"),
        }}),
    );
    let out = home.run_with_stdin(&["hook", "secret-guard"], &write);
    assert_pre_tool_use_denied(&out, "notes.md:2: AWS access key id");
    // git: a clean commit of such text, with such a message, goes through (it used to
    // fail closed), and a key among it is still stopped.
    let repo = Repo::new();
    install(&home, &repo, "secret-guard", "pre-commit");
    install(&home, &repo, "secret-guard", "commit-msg");
    repo.write("README.md", &format!("{ANY_SCRIPT}\n"));
    repo.git_ok(&["add", "README.md"]);
    repo.git_ok(&["commit", "-q", "-m", &format!("naïve café: {ANY_SCRIPT}")]);
    assert_eq!(repo.commit_count(), 1);
    assert!(
        repo.git_ok(&["log", "-1", "--format=%s"])
            .contains(ANY_SCRIPT)
    );
    repo.write(
        "keys.txt",
        &format!("{ANY_SCRIPT}{}\n", "AKIAZ7VQ3KQ2LMNOPQRS"),
    );
    repo.git_ok(&["add", "keys.txt"]);
    let out = repo.git(&["commit", "-q", "-m", "key"]);
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("keys.txt:1: AWS access key id"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_large_write_of_short_lines_is_scanned_whole_below_the_input_limit() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    // 3.5 MB of 4-byte lines (875,000 of them, ASCII and two-byte letters by turns), the
    // secret on the line after them.
    let mut content = "abc\naé\n".repeat(437_500);
    content.push_str(&format!("key = {}\n", "AKIAZ7VQ3KQ2LMNOPQRS"));
    let write = claude_event(
        "PreToolUse",
        json!({"tool_name": "Write", "tool_input": {"file_path": "/tmp/big.txt", "content": content}}),
    );
    assert!(write.len() > 3_500_000);
    let out = home.run_with_stdin(&["hook", "secret-guard"], &write);
    assert_pre_tool_use_denied(&out, "big.txt:875001: AWS access key id");
}

#[test]
fn git_hooks_scan_binary_files_odd_paths_merges_and_only_what_renames_add() {
    let home = TestHome::new();
    home.install_example("secret-guard");
    let manifest =
        std::fs::read_to_string(crate::harness::root().join("agents/secret-guard/agent.toml"))
            .expect("manifest")
            .replace("*.lock\n", "*.lock\nfixtures/my keys/*\n");
    home.write_manifest("secret-guard", &manifest);
    let repo = Repo::new();
    install(&home, &repo, "secret-guard", "pre-commit");
    install(&home, &repo, "secret-guard", "pre-merge-commit");
    repo.write("README.md", "hello\n");
    repo.git_ok(&["add", "README.md"]);
    repo.git_ok(&["commit", "-q", "-m", "first"]);

    // A key block inside a binary file (git shows none of it in a plain diff).
    let mut blob = b"\0\x01\x02PK\x03\x04".to_vec();
    blob.extend_from_slice(private_key().as_bytes());
    blob.extend_from_slice(b"\0\xff\xfe");
    std::fs::write(repo.path().join("bundle.bin"), &blob).expect("write");
    repo.git_ok(&["add", "bundle.bin"]);
    let out = repo.git(&["commit", "-q", "-m", "binary"]);
    assert_ne!(code(&out), 0, "a key in a binary file is found");
    assert!(
        stderr(&out).contains("bundle.bin:") && stderr(&out).contains("private key block"),
        "{}",
        stderr(&out)
    );
    repo.git_ok(&["rm", "-q", "--cached", "bundle.bin"]);
    std::fs::remove_file(repo.path().join("bundle.bin")).expect("rm");

    // A path with a space (git writes a tab after it in a diff) matches allow_paths.
    repo.write("fixtures/my keys/test.pem", &private_key());
    repo.git_ok(&["add", "fixtures"]);
    repo.git_ok(&["commit", "-q", "-m", "an allowed fixture"]);
    assert_eq!(repo.commit_count(), 2);

    // Moving it out adds nothing to history: allowed. A move with a new secret in it is
    // stopped at the added line alone.
    repo.git_ok(&["mv", "fixtures/my keys/test.pem", "fixtures/test.pem"]);
    repo.git_ok(&["commit", "-q", "-m", "a pure rename"]);
    assert_eq!(repo.commit_count(), 3);
    repo.git_ok(&["mv", "fixtures/test.pem", "fixtures/moved.pem"]);
    let mut moved = private_key();
    moved.push_str(&format!("token = {}\n", github_token()));
    repo.write("fixtures/moved.pem", &moved);
    repo.git_ok(&["add", "fixtures"]);
    let out = repo.git(&["commit", "-q", "-m", "a rename with an edit"]);
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(err.contains("fixtures/moved.pem:4:"), "{err}");
    assert!(
        !err.contains("private key block"),
        "only the edit is scanned: {err}"
    );
    repo.git_ok(&["reset", "-q", "--hard"]);

    // A merge git makes by itself runs pre-merge-commit, which sees what it brings in.
    repo.git_ok(&["checkout", "-q", "-b", "feature"]);
    repo.write("feature.txt", &format!("token = {}\n", github_token()));
    repo.git_ok(&["add", "feature.txt"]);
    repo.git_ok(&["commit", "-q", "--no-verify", "-m", "unchecked"]);
    repo.git_ok(&["checkout", "-q", "main"]);
    repo.write("other.txt", "other\n");
    repo.git_ok(&["add", "other.txt"]);
    repo.git_ok(&["commit", "-q", "-m", "diverge"]);
    let before = repo.commit_count();
    let out = repo.git(&["merge", "--no-edit", "feature"]);
    assert_ne!(code(&out), 0, "the merge is stopped: {}", stdout(&out));
    assert!(stderr(&out).contains("feature.txt:1:"), "{}", stderr(&out));
    repo.git_ok(&["merge", "--abort"]);
    assert_eq!(repo.commit_count(), before, "no merge commit was made");
}

#[test]
fn claude_code_permission_requests_stop_loops_and_matchers_follow_the_documented_contract() {
    let home = TestHome::new();
    home.install_testing(
        "gate",
        "[config]\nhook_decision = \"deny\"\nhook_reason = \"not this one\"\n",
    );
    let hook = |event: Vec<u8>| {
        let out = home.run_with_stdin(&["hook", "gate", "--protocol", "claude-code"], &event);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        json_out(&out)
    };
    // PermissionRequest: the dialog's decision, not "cannot be blocked".
    let v = hook(claude_event(
        "PermissionRequest",
        json!({"tool_name": "Bash", "tool_input": {"command": "rm -rf build"}}),
    ));
    assert_eq!(
        v["hookSpecificOutput"],
        json!({"hookEventName": "PermissionRequest",
               "decision": {"behavior": "deny", "message": "not this one"}})
    );
    // Stop: blocked once; not again while a Stop hook already keeps Claude going.
    let v = hook(claude_event("Stop", json!({"stop_hook_active": false})));
    assert_eq!(
        (v["decision"].as_str(), v["reason"].as_str()),
        (Some("block"), Some("not this one"))
    );
    let v = hook(claude_event("Stop", json!({"stop_hook_active": true})));
    assert!(v.get("decision").is_none(), "no second block: {v}");
    assert!(
        v["systemMessage"]
            .as_str()
            .unwrap_or("")
            .contains("not this one"),
        "the objection is still shown: {v}"
    );

    // Settings: a tool matcher only for the events that match on tools.
    for (event, has_matcher) in [
        ("PreToolUse", true),
        ("PermissionRequest", true),
        ("UserPromptSubmit", false),
        ("Stop", false),
    ] {
        let out = home.run(&["hook", "install", "gate", "--claude-code", "--event", event]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let entry = &json_out(&out)["hooks"][event][0];
        assert_eq!(
            entry.get("matcher").is_some(),
            has_matcher,
            "{event}: {entry}"
        );
    }
}

#[test]
fn claude_code_hooks_can_add_context_rewrite_tool_input_and_stop_the_assistant() {
    let home = TestHome::new();
    home.install_testing(
        "advisor",
        "[config]\nhook_decision = \"allow\"\nhook_context = \"the tests live in tests/\"\n\
         hook_updated_input = '{\"command\": \"cargo test --offline\"}'\nhook_suppress_output = \"yes\"\n",
    );
    let hook = |agent: &str, event: Vec<u8>| {
        let out = home.run_with_stdin(&["hook", agent, "--protocol", "claude-code"], &event);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        json_out(&out)
    };
    let v = hook(
        "advisor",
        claude_event(
            "PreToolUse",
            json!({"tool_name": "Bash", "tool_input": {"command": "cargo test"}}),
        ),
    );
    assert_eq!(v["hookSpecificOutput"]["permissionDecision"], "allow");
    assert_eq!(
        v["hookSpecificOutput"]["updatedInput"],
        json!({"command": "cargo test --offline"})
    );
    assert_eq!(
        v["hookSpecificOutput"]["additionalContext"],
        "the tests live in tests/"
    );
    assert_eq!(v["suppressOutput"], true);
    let v = hook(
        "advisor",
        claude_event("UserPromptSubmit", json!({"prompt": "run the tests"})),
    );
    assert_eq!(
        v["hookSpecificOutput"],
        json!({"hookEventName": "UserPromptSubmit", "additionalContext": "the tests live in tests/"})
    );

    home.install_testing(
        "stopper",
        "[config]\nhook_stop = \"the build is broken; fix it first\"\n",
    );
    let v = hook(
        "stopper",
        claude_event("PostToolUse", json!({"tool_name": "Bash"})),
    );
    assert_eq!(
        (v["continue"].as_bool(), v["stopReason"].as_str()),
        (Some(false), Some("the build is broken; fix it first"))
    );
}

#[test]
fn a_component_built_against_wit_0_2_0_still_runs_as_a_hook() {
    let home = TestHome::new();
    let dir = home.agent_dir("old");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(
        crate::harness::root().join("tests/fixtures/testing-wit-0.2.0.wasm"),
        dir.join("old.wasm"),
    )
    .expect("copy the fixture");
    home.write_manifest(
        "old",
        "name = \"old\"\nversion = \"0.1.0\"\ncomponent = \"old.wasm\"\n\
         [config]\nhook_decision = \"deny\"\nhook_reason = \"old but sound\"\n",
    );
    let listed = stdout(&home.run(&["agents"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("old") && l.contains(" ok ")),
        "{listed}"
    );
    let out = home.run_with_stdin(
        &["hook", "old", "--protocol", "claude-code"],
        &claude_event(
            "PreToolUse",
            json!({"tool_name": "Bash", "tool_input": {"command": "ls"}}),
        ),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json_out(&out);
    assert_eq!(v["hookSpecificOutput"]["permissionDecision"], "deny");
    assert_eq!(
        v["hookSpecificOutput"]["permissionDecisionReason"],
        "old but sound"
    );
}

#[test]
fn claude_code_events_give_agents_their_other_documented_fields() {
    let home = TestHome::new();
    home.install_testing("describe", "[config]\nhook_message = \"describe\"\n");
    let seen = |event: Vec<u8>| -> String {
        let out = home.run_with_stdin(&["hook", "describe"], &event);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        json_out(&out)["systemMessage"]
            .as_str()
            .expect("description")
            .to_owned()
    };
    let post = seen(claude_event(
        "PostToolUse",
        json!({"permission_mode": "plan", "tool_name": "Bash", "tool_use_id": "toolu_01",
               "tool_input": {"command": "ls"},
               "tool_response": {"stdout": "a.txt\n", "exit_code": 0}}),
    ));
    for line in [
        "detail permission_mode=plan",
        "detail transcript_path=/tmp/transcript.jsonl",
        "detail tool_use_id=toolu_01",
        "detail tool_response={\"exit_code\":0,\"stdout\":\"a.txt\\n\"}",
    ] {
        assert!(post.contains(line), "{line}: {post}");
    }
    let compact = seen(claude_event(
        "PreCompact",
        json!({"trigger": "manual", "custom_instructions": "keep the plan"}),
    ));
    assert!(compact.contains("detail trigger=manual"), "{compact}");
    assert!(
        compact.contains("detail custom_instructions=keep the plan"),
        "{compact}"
    );
    let start = seen(claude_event("SessionStart", json!({"source": "resume"})));
    assert!(start.contains("detail source=resume"), "{start}");
    let end = seen(claude_event("SessionEnd", json!({"reason": "logout"})));
    assert!(end.contains("detail reason=logout"), "{end}");
    let note = seen(claude_event(
        "Notification",
        json!({"message": "Claude needs your permission"}),
    ));
    assert!(
        note.contains("detail message=Claude needs your permission"),
        "{note}"
    );
    let stop = seen(claude_event("Stop", json!({"stop_hook_active": true})));
    assert!(stop.contains("detail stop_hook_active"), "{stop}");
}
