use std::process::Stdio;

use crate::harness::{TestHome, code, count, stderr, stdout};

#[test]
fn notes_remember_across_fresh_processes() {
    let home = TestHome::new();
    home.install_example("notes");
    for note in ["buy milk", "call mom"] {
        let out = home.run(&["run", "notes", "add", note]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(stdout(&out), format!("noted: {note}\n"));
    }
    let out = home.run(&["run", "notes", "list"]);
    assert_eq!(stdout(&out), "1. buy milk\n2. call mom\n");
    assert_eq!(stdout(&home.run(&["run", "notes", "count"])), "2\n");
    // Empty input is a clear invalid-input error, not a crash.
    let out = home.run(&["run", "notes", " "]);
    assert_eq!(code(&out), 6);
    assert!(stderr(&out).contains("add <text>"), "{}", stderr(&out));
}

#[test]
fn sixteen_concurrent_writers_all_land_without_lock_errors() {
    let home = TestHome::new();
    home.install_example("notes");
    // Compile once so the 16 runs race on the store, not on the compiler.
    assert_eq!(code(&home.run(&["run", "notes", "count"])), 0);

    let children: Vec<_> = (0..16)
        .map(|i| {
            home.spawner(&["run", "notes", "add", &format!("note {i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        let err = stderr(&out);
        assert_eq!(code(&out), 0, "{err}");
        assert!(!err.contains("locked"), "{err}");
    }
    let listed = stdout(&home.run(&["run", "notes", "list"]));
    for i in 0..16 {
        assert!(
            listed.contains(&format!(". note {i}\n")),
            "note {i} missing:\n{listed}"
        );
    }
    assert_eq!(listed.lines().count(), 16);
    let store = home.store();
    assert_eq!(store.integrity_check().expect("check"), "ok");
    let ok_runs = count(
        &store,
        "SELECT count(*) FROM runs WHERE agent = 'notes' AND status = 'ok'",
    );
    assert_eq!(ok_runs, 18);
}
