//! `spawner consent grant|revoke|list`: the user's consent, recorded in the memory store,
//! to an agent's use of a remote language-model provider (providers.toml) or tool server
//! (tools.toml). agent-exec checks it before any byte of a chat or tool call leaves the
//! machine, and names it in the call's evidence. A name in both files is one consent.

use std::io::Write;

use agent_contract::providers::{PROVIDERS_FILE, Providers};
use agent_contract::report::utc;
use agent_contract::tools::{TOOLS_FILE, ToolServers};
use agent_contract::{Home, Outcome};
use memory_store::{Store, now_ms};

use crate::cli::{ConsentArgs, ConsentCommand};

/// Run the subcommand.
pub fn execute(home: &Home, args: ConsentArgs) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    match args.command {
        ConsentCommand::Grant {
            agent,
            provider,
            expires,
        } => {
            agent_contract::home::validate_agent_name(&agent)?;
            let providers = Providers::load(home.root())?;
            let servers = ToolServers::load(home.root())?;
            let (what, endpoint, remote) = match (providers.get(&provider), servers.get(&provider))
            {
                (Some(p), _) => ("its chats' messages", p.host().to_owned(), p.is_remote()),
                (None, Some(s)) => ("its tool calls' arguments", s.endpoint(), s.is_remote()),
                (None, None) => {
                    let names: Vec<&str> = providers
                        .list
                        .iter()
                        .map(|p| p.name.as_str())
                        .chain(servers.list.iter().map(|s| s.name.as_str()))
                        .collect();
                    anyhow::bail!(
                        "no provider or tool server {provider:?} in {} or {} (configured: {})",
                        home.root().join(PROVIDERS_FILE).display(),
                        home.root().join(TOOLS_FILE).display(),
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    );
                }
            };
            let now = now_ms();
            let until = expires.map(|d| now.saturating_add(d.as_millis() as u64));
            let consent =
                Store::open(&home.store_path())?.grant_consent(&agent, &provider, now, until)?;
            writeln!(
                out,
                "consent {}: agent {agent} may send {what} to {provider} ({endpoint}, {}){}",
                consent.id,
                if remote {
                    "remote"
                } else {
                    "on this machine: no consent is needed for it"
                },
                until
                    .map(|u| format!(" until {} UTC", utc(u)))
                    .unwrap_or_else(|| " until revoked".into())
            )?;
        }
        ConsentCommand::Revoke { agent, provider } => {
            let n = Store::open(&home.store_path())?.revoke_consent(&agent, &provider, now_ms())?;
            if n == 0 {
                writeln!(out, "agent {agent} had no consent for {provider}")?;
            } else {
                writeln!(
                    out,
                    "revoked {n} consent(s) of agent {agent} for {provider}"
                )?;
            }
        }
        ConsentCommand::List { json } => {
            let path = home.store_path();
            let consents = if path.exists() {
                Store::open(&path)?.consents()?
            } else {
                Vec::new()
            };
            let now = now_ms();
            for c in &consents {
                if json {
                    serde_json::to_writer(&mut out, c)?;
                    out.write_all(b"\n")?;
                    continue;
                }
                writeln!(
                    out,
                    "{:>4}  {:16}  {:16}  granted {} UTC  {}",
                    c.id,
                    c.agent,
                    c.provider,
                    utc(c.granted_at_ms),
                    match (c.revoked_at_ms, c.expires_at_ms) {
                        (Some(r), _) => format!("revoked {} UTC", utc(r)),
                        (None, Some(e)) if now >= e => format!("expired {} UTC", utc(e)),
                        (None, Some(e)) => format!("live until {} UTC", utc(e)),
                        (None, None) => "live until revoked".to_owned(),
                    }
                )?;
            }
            if consents.is_empty() && !json {
                writeln!(out, "no consents recorded")?;
            }
        }
    }
    Ok(Outcome::Ok)
}
