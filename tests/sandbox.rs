use agent_contract::Outcome;

use crate::harness::{TestHome, code, exit_of, stderr, stdout};

#[test]
fn the_agent_sees_no_environment_and_only_its_own_name_as_argument() {
    let home = TestHome::new();
    home.install_testing("lab", "");
    let out = home
        .spawner(&["run", "lab", "env"])
        .env("SECRET_TOKEN", "do-not-leak")
        .output()
        .expect("run");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "vars=0 args=1");
}

#[test]
fn directories_the_runtime_creates_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new();
    home.install_example("echo");
    assert_eq!(code(&home.run(&["run", "echo", "hi"])), 0);
    for dir in ["cache", "cache/components"] {
        let mode = std::fs::metadata(home.path().join(dir))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{dir} is {:o}", mode & 0o777);
    }
}

#[test]
fn the_agent_has_no_network() {
    let home = TestHome::new();
    home.install_testing("lab", "");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let out = home.run(&["run", "lab", "connect", &addr]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError), "{}", stdout(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    assert!(listener.accept().is_err(), "the agent reached the listener");
}

#[test]
fn no_filesystem_is_visible_unless_declared_and_declared_preopens_are_read_only() {
    let home = TestHome::new();
    home.install_testing("lab", "");
    let out = home.run(&["run", "lab", "read", "/etc/hostname"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError));
    assert!(
        stderr(&out).contains("cannot read /etc/hostname"),
        "{}",
        stderr(&out)
    );

    home.install_testing("lab", "[[preopens]]\nhost = \"data\"\nguest = \"/data\"\n");
    std::fs::create_dir_all(home.agent_dir("lab").join("data")).expect("mkdir");
    std::fs::write(
        home.agent_dir("lab").join("data/hello.txt"),
        "from the host",
    )
    .expect("write");
    let out = home.run(&["run", "lab", "read", "/data/hello.txt"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "from the host");
    // Outside the preopen is still invisible.
    let out = home.run(&["run", "lab", "read", "/data/../agent.toml"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError));
    // Read-only unless declared writable.
    let out = home.run(&["run", "lab", "write", "/data/new.txt", "x"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError), "{}", stdout(&out));
    assert!(!home.agent_dir("lab").join("data/new.txt").exists());

    home.install_testing(
        "lab",
        "[[preopens]]\nhost = \"data\"\nguest = \"/data\"\nwritable = true\n",
    );
    let out = home.run(&["run", "lab", "write", "/data/new.txt", "written"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let written = std::fs::read_to_string(home.agent_dir("lab").join("data/new.txt"));
    assert_eq!(written.expect("the agent wrote the file"), "written");
}

#[test]
fn a_missing_preopen_directory_is_a_clear_error() {
    let home = TestHome::new();
    home.install_testing(
        "lab",
        "[[preopens]]\nhost = \"nowhere\"\nguest = \"/data\"\n",
    );
    let out = home.run(&["run", "lab", "hello"]);
    assert_eq!(code(&out), exit_of(Outcome::Component));
    assert!(stderr(&out).contains("cannot preopen"), "{}", stderr(&out));
}

#[test]
fn config_values_are_read_fresh_on_every_run() {
    let home = TestHome::new();
    home.install_testing("lab", "[config]\ngreeting = \"hello\"\nretries = 3\n");
    assert_eq!(
        stdout(&home.run(&["run", "lab", "config", "greeting"])),
        "hello"
    );
    assert_eq!(stdout(&home.run(&["run", "lab", "config", "retries"])), "3");
    assert_eq!(
        stdout(&home.run(&["run", "lab", "config", "absent"])),
        "(none)"
    );
    home.install_testing("lab", "[config]\ngreeting = \"bonjour\"\n");
    assert_eq!(
        stdout(&home.run(&["run", "lab", "config", "greeting"])),
        "bonjour"
    );
}

#[test]
fn inference_is_refused_for_unlisted_models_and_unknown_ones() {
    let home = TestHome::new();
    home.install_testing("lab", "[models]\nallowed = [\"sentiment\"]\n");
    let out = home.run(&["run", "lab", "infer", "other-model"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError));
    assert!(stderr(&out).contains("NotAllowed"), "{}", stderr(&out));
    // Allowed, but this home's repository has no such model: the broker says so.
    let out = home.run(&["run", "lab", "infer", "sentiment"]);
    assert_eq!(code(&out), exit_of(Outcome::AgentError));
    assert!(
        stderr(&out).contains("UnknownModel") && stderr(&out).contains("no model named"),
        "{}",
        stderr(&out)
    );
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_store_and_its_files_are_private_and_an_open_home_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new();
    // A home made with a plain `mkdir` (0755 under the usual umask).
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    home.install_example("notes");
    let out = home.run(&["run", "notes", "add", "a private note"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("made it private"),
        "the fix is said: {}",
        stderr(&out)
    );
    assert_eq!(mode_of(home.path()), 0o700);
    let db = home.path().join("memory.db");
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            assert_eq!(mode_of(&path), 0o600, "{}", path.display());
        }
    }
    assert_eq!(mode_of(&db), 0o600);
    for entry in std::fs::read_dir(home.path().join("cache/components")).expect("cache") {
        let path = entry.expect("entry").path();
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
    }
}

#[test]
fn preopens_outside_their_base_are_refused_unless_allowed_and_always_shown() {
    let home = TestHome::new();
    for (preopen, needle) in [
        (
            "host = \"/\"\nguest = \"/host\"\nwritable = true\n",
            "outside the agent's directory",
        ),
        (
            "host = \"../..\"\nguest = \"/up\"\n",
            "outside the agent's directory",
        ),
        (
            "host = \"data/../../x\"\nguest = \"/up\"\n",
            "outside the agent's directory",
        ),
        (
            "host = \"/etc\"\nguest = \"/etc\"\n",
            "outside the agent's directory",
        ),
        (
            "host = \"..\"\nguest = \"/up\"\nrelative_to = \"work_dir\"\n",
            "outside the work directory",
        ),
    ] {
        home.install_testing("lab", &format!("[[preopens]]\n{preopen}"));
        let out = home.run(&["run", "lab", "hello"]);
        assert_eq!(
            code(&out),
            exit_of(Outcome::Config),
            "{preopen}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle) && stderr(&out).contains("allow_outside = true"),
            "{preopen}: {}",
            stderr(&out)
        );
        assert!(
            stdout(&home.run(&["agents"])).contains("invalid"),
            "{preopen}"
        );
    }
    // A symlink inside the agent's directory that leads out of it is refused at run time.
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret.txt"), "not yours").expect("write");
    home.install_testing("lab", "[[preopens]]\nhost = \"data\"\nguest = \"/data\"\n");
    std::os::unix::fs::symlink(outside.path(), home.agent_dir("lab").join("data"))
        .expect("symlink");
    let out = home.run(&["run", "lab", "read", "/data/secret.txt"]);
    assert_eq!(code(&out), exit_of(Outcome::Component), "{}", stderr(&out));
    assert!(stderr(&out).contains("outside"), "{}", stderr(&out));
    // With `allow_outside = true`, the grant is made, and `spawner agents` shows it.
    home.install_testing(
        "lab",
        &format!(
            "[[preopens]]\nhost = \"{}\"\nguest = \"/out\"\nwritable = true\nallow_outside = true\n",
            outside.path().display()
        ),
    );
    let out = home.run(&["run", "lab", "read", "/out/secret.txt"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "not yours");
    let listed = stdout(&home.run(&["agents"]));
    assert!(
        listed.contains(&format!(
            "filesystem: rw {} -> /out (outside)",
            outside.path().display()
        )),
        "{listed}"
    );
}
