//! The benchmark's two outputs, kept in step: BENCHMARKS.md (tables a person reads) and
//! results.json (the same figures, every run's time included, for tools and the plot).
//! Budget checks are collected as they are made and listed again at the top.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::measure::Stats;

/// A target a figure is checked against.
pub enum Target {
    /// The figure must be below this.
    Below(f64),
    /// The figure must be at least this.
    AtLeast(f64),
    /// The figure must be this or below.
    AtMost(f64),
}

/// Markdown and JSON being written side by side.
pub struct Report {
    /// Replaces the project root in commands, so tables read the same on every machine.
    root: String,
    /// The machine, stated under every table.
    machine: String,
    /// The command that produced the report, stated under every table.
    command: String,
    body: String,
    sections: Vec<Value>,
    values: Vec<Value>,
    checks: Vec<(bool, String)>,
    not_measured: Vec<Value>,
}

impl Report {
    pub fn new(root: &Path, machine: String, command: String) -> Report {
        Report {
            root: root.display().to_string(),
            machine,
            command,
            body: String::new(),
            sections: Vec::new(),
            values: Vec::new(),
            checks: Vec::new(),
            not_measured: Vec::new(),
        }
    }

    /// Shorten paths under the project root to `./...`.
    pub fn shown(&self, command: &str) -> String {
        command.replace(&self.root, ".")
    }

    /// A heading and the text under it.
    pub fn heading(&mut self, title: &str, text: &str) {
        let _ = writeln!(self.body, "\n## {title}\n\n{text}\n");
    }

    /// A paragraph.
    pub fn text(&mut self, text: &str) {
        let _ = writeln!(self.body, "{text}\n");
    }

    /// Who measured this and how, under a table.
    pub fn provenance(&mut self, how: &str) {
        let _ = writeln!(
            self.body,
            "\n_{}; `{}`, {how}._\n",
            self.machine, self.command
        );
    }

    /// A table of `rows` measured side by side in one run (`how` says with what), with
    /// each median's ratio to the first row's; recorded as section `id`.
    pub fn table(&mut self, id: &str, rows: &[Stats], how: &str) {
        let floor = rows.first().map_or(f64::NAN, Stats::median);
        let _ = writeln!(
            self.body,
            "| command | median | p95 | mean ± σ | min | max | runs | ÷ first row |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in rows {
            let _ = writeln!(
                self.body,
                "| `{}` | {:.2} ms | {:.2} ms | {:.2} ± {:.2} ms | {:.2} ms | {:.2} ms | {} | {:.1}× |",
                self.shown(&s.command),
                s.median(),
                s.percentile(95.0),
                s.mean(),
                s.stddev(),
                s.min(),
                s.max(),
                s.times_ms.len(),
                s.median() / floor
            );
        }
        self.body.push('\n');
        self.provenance(how);
        self.section_rows(id, rows, how);
    }

    /// Record `rows` as section `id` of the results file only (for figures whose table the
    /// caller writes itself).
    pub fn section_rows(&mut self, id: &str, rows: &[Stats], how: &str) {
        let rows: Vec<Value> = rows
            .iter()
            .map(|s| {
                let mut v = s.to_json();
                v["command"] = json!(self.shown(&s.command));
                v
            })
            .collect();
        self.sections
            .push(json!({"id": id, "how": how, "rows": rows}));
    }

    /// A single figure for the results file (the markdown shows it where it belongs).
    pub fn value(&mut self, id: &str, value: f64, unit: &str) {
        self.values
            .push(json!({"id": id, "value": value, "unit": unit}));
    }

    /// The figures recorded so far whose id starts with `prefix`.
    pub fn values_with_prefix(&self, prefix: &str) -> Vec<(String, f64)> {
        self.values
            .iter()
            .filter_map(|v| {
                let id = v["id"].as_str()?;
                id.starts_with(prefix)
                    .then(|| (id.to_owned(), v["value"].as_f64().unwrap_or(f64::NAN)))
            })
            .collect()
    }

    /// Check `value` against `target`; a PASS/FAIL line here and in the summary. A report,
    /// never an assertion: timings on shared machines are noisy.
    pub fn check(&mut self, what: &str, value: f64, unit: &str, target: Target) -> bool {
        let (pass, relation, limit) = match target {
            Target::Below(limit) => (value < limit, "under", limit),
            Target::AtLeast(limit) => (value >= limit, "at least", limit),
            Target::AtMost(limit) => (value <= limit, "at most", limit),
        };
        let line = format!(
            "{}: {what}: {value:.2} {unit} (target: {relation} {limit} {unit})",
            if pass { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(self.body, "- {line}");
        self.checks.push((pass, line));
        pass
    }

    /// Something this run could not measure, and why: stated, never guessed.
    pub fn not_measured(&mut self, what: &str, why: &str) {
        let _ = writeln!(self.body, "- **Not measured**: {what}: {why}\n");
        self.not_measured.push(json!({"what": what, "why": why}));
    }

    /// BENCHMARKS.md: the header, the checks, then the sections.
    pub fn markdown(&self, intro: &str) -> String {
        let mut md = format!("# Benchmarks\n\n{intro}\n\n## Budget checks\n\n");
        for (_, line) in &self.checks {
            let _ = writeln!(md, "- {line}");
        }
        md.push('\n');
        md.push_str(&self.body);
        md
    }

    /// results.json.
    pub fn json(&self, mode: &str) -> Value {
        json!({
            "command": self.command,
            "mode": mode,
            "machine": self.machine,
            "sections": self.sections,
            "values": self.values,
            "checks": self.checks.iter().map(|(pass, line)| json!({"pass": pass, "line": line})).collect::<Vec<_>>(),
            "not_measured": self.not_measured,
        })
    }
}
