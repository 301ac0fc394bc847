//! How a request's cost grows with the memory store: `spawner run testing get <key>` (open
//! the store, one indexed read, write the run record) against stores holding 10, 10k and
//! 1M rows in the agent's namespace, side by side in one hyperfine run.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::measure::{self, Runs};
use super::report::Report;

/// A home with `testing` installed and `rows` key/value rows in its namespace; returns the
/// home and the key to read (the middle one).
fn filled_home(root: &Path, out: &Path, rows: u64) -> anyhow::Result<(PathBuf, String)> {
    let home = out.join(format!("store-{rows}"));
    let _ = std::fs::remove_dir_all(&home);
    crate::install_agent(root, &home, "testing")?;
    let store = memory_store::Store::open(&home.join("memory.db"))?;
    // One statement in one transaction: the fixture writes straight to the kv table (the
    // schema is memory-store's own, made by its migrations on open).
    store.connection().execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {rows})
         INSERT INTO kv (namespace, key, value, updated_at_ms)
             SELECT 'testing', printf('key-%08d', i), randomblob(100), 0 FROM n;
         COMMIT;"
    ))?;
    drop(store);
    Ok((home, format!("key-{:08}", rows / 2)))
}

pub fn measure(
    report: &mut Report,
    root: &Path,
    spawner: &Path,
    out: &Path,
    sizes: &[u64],
    runs: Runs,
) -> anyhow::Result<()> {
    let mut commands = Vec::new();
    let mut files = Vec::new();
    for &rows in sizes {
        let (home, key) = filled_home(root, out, rows)?;
        let command = format!(
            "{} --home {} run testing get {key}",
            spawner.display(),
            home.display()
        );
        // Compile the component into this home's cache before the clock starts.
        crate::run(
            Command::new("sh")
                .arg("-c")
                .arg(&command)
                .stdout(std::process::Stdio::null()),
        )?;
        files.push(std::fs::metadata(home.join("memory.db"))?.len());
        commands.push(command);
    }
    let stats = measure::hyperfine(&out.join("store.json"), runs, &commands)?;
    report.heading(
        "Scaling with the memory store",
        "`testing get <key>` opens the store, reads one key through the primary-key index \
         and records the run. Each row's store holds that many 100-byte values in the \
         agent's namespace (filled by the benchmark in one transaction).",
    );
    report.table(
        "store_scaling",
        &stats,
        &format!("hyperfine `{}`", runs.hyperfine_options()),
    );
    let mut sizes_line = String::from("Store files: ");
    for (i, (&rows, bytes)) in sizes.iter().zip(&files).enumerate() {
        if i > 0 {
            sizes_line.push_str(", ");
        }
        sizes_line.push_str(&format!("{rows} rows {:.0} KB", *bytes as f64 / 1e3));
        report.value(&format!("store_bytes.rows_{rows}"), *bytes as f64, "bytes");
    }
    if let (Some(first), Some(last)) = (stats.first(), stats.last()) {
        sizes_line.push_str(&format!(
            ". From {} to {} rows the median changes by a factor of {:.2} ({:+.2} ms).",
            sizes[0],
            sizes[sizes.len() - 1],
            last.median() / first.median(),
            last.median() - first.median()
        ));
    }
    report.text(&sizes_line);
    Ok(())
}
