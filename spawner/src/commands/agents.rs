//! `spawner agents`: the installed agents and whether each one can run.

use std::io::Write;

use agent_contract::home::validate_agent_name;
use agent_contract::{Home, Manifest, Outcome};
use serde::Serialize;

use crate::cli::AgentsArgs;

/// One installed agent as listed.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    /// The directory name.
    pub name: String,
    /// From the manifest, when it is valid.
    pub version: Option<String>,
    /// From the manifest, when it is valid.
    pub description: Option<String>,
    /// `ok`, or `invalid` with an error saying why.
    pub status: &'static str,
    /// What is wrong, when `status` is `invalid`.
    pub error: Option<String>,
    /// The broad filesystem grants of its manifest (writable preopens, preopens outside
    /// their base), so that none is ever quiet: e.g. `rw /srv/data -> /data (outside)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
}

/// Check the agent in directory `name`: manifest valid, component present, pin matching.
pub fn check(home: &Home, name: &str) -> AgentStatus {
    let mut status = AgentStatus {
        name: name.to_owned(),
        version: None,
        description: None,
        status: "invalid",
        error: None,
        grants: Vec::new(),
    };
    let manifest = match home
        .agent_manifest(name)
        .map_err(|e| e.to_string())
        .and_then(|path| Manifest::load(&path).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(e) => {
            status.error = Some(e);
            return status;
        }
    };
    status.version = Some(manifest.version.clone());
    status.description = manifest.description.clone();
    status.grants = manifest
        .preopens
        .iter()
        .filter(|p| p.is_broad())
        .map(|p| {
            format!(
                "{} {} -> {}{}",
                if p.writable { "rw" } else { "ro" },
                p.host.display(),
                p.guest,
                if p.allow_outside { " (outside)" } else { "" }
            )
        })
        .collect();
    status.error = match manifest.read_component() {
        Err(e) => Some(e.to_string()),
        Ok(wasm) => match agent_contract::imports::unprovided_imports(&wasm.bytes) {
            Err(e) => Some(format!("{}: {e}", manifest.component.display())),
            Ok(missing) if missing.is_empty() => None,
            Ok(missing) => Some(format!(
                "{} imports what the host does not provide: {} (the host provides WASI 0.2 cli, clocks, filesystem, io, random and sockets, and spawner:agent's interfaces; not wasi:http)",
                manifest.component.display(),
                missing.join(", ")
            )),
        },
    };
    if status.error.is_none() {
        status.status = "ok";
    }
    status
}

/// Every installed agent, checked, in name order.
pub fn list(home: &Home) -> anyhow::Result<Vec<AgentStatus>> {
    let dir = home.agents_dir();
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| validate_agent_name(name).is_ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => anyhow::bail!("cannot list {}: {e}", dir.display()),
    };
    names.sort();
    Ok(names.iter().map(|n| check(home, n)).collect())
}

/// List the agents.
pub fn execute(home: &Home, args: AgentsArgs) -> anyhow::Result<Outcome> {
    let statuses = list(home)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &statuses {
            serde_json::to_writer(&mut out, s)?;
            out.write_all(b"\n")?;
        }
        return Ok(Outcome::Ok);
    }
    if statuses.is_empty() {
        writeln!(
            out,
            "no agents in {} (install one with `cargo xtask setup`, or add a directory with an agent.toml)",
            home.agents_dir().display()
        )?;
        return Ok(Outcome::Ok);
    }
    let width = statuses
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:width$}  {:8}  {:7}  DESCRIPTION",
        "NAME", "VERSION", "STATUS"
    )?;
    for s in &statuses {
        let detail = match (&s.error, &s.description) {
            (Some(e), _) => e.as_str(),
            (None, Some(d)) => d.as_str(),
            (None, None) => "",
        };
        writeln!(
            out,
            "{:width$}  {:8}  {:7}  {detail}",
            s.name,
            s.version.as_deref().unwrap_or("-"),
            s.status
        )?;
        for grant in &s.grants {
            writeln!(out, "{:width$}  filesystem: {grant}", "")?;
        }
    }
    Ok(Outcome::Ok)
}
