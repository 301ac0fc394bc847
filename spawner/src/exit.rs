//! How an error chain becomes an exit code. The table itself is
//! [`agent_contract::outcome`]; this maps the spawner's errors onto it.

use agent_contract::Outcome;
use agent_contract::home::{AgentLookupError, NoHome};
use agent_contract::manifest::ManifestError;
use memory_store::StoreError;
use nix::sys::signal::Signal;

/// A problem with the command line that clap cannot see (an unreadable input file...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The spawner was told to stop while a run was in flight; the run was killed.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {0}; the run was killed")]
pub struct Interrupted(pub Signal);

/// The exit code for `err`: the first cause in its chain that has a place in the table,
/// 128 + signal for an interruption (as shells expect), else `internal_error`.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(Interrupted(sig)) = cause.downcast_ref::<Interrupted>() {
            return 128u8.saturating_add(*sig as u8);
        }
    }
    outcome(err).exit_code()
}

/// The outcome `err` stands for: the first cause in its chain that has a place in the
/// table, else `internal_error`.
pub fn outcome(err: &anyhow::Error) -> Outcome {
    err.chain()
        .find_map(outcome_of)
        .unwrap_or(Outcome::Internal)
}

fn outcome_of(cause: &(dyn std::error::Error + 'static)) -> Option<Outcome> {
    if let Some(e) = cause.downcast_ref::<AgentLookupError>() {
        return Some(match e {
            AgentLookupError::InvalidName { .. } => Outcome::Usage,
            AgentLookupError::NotFound { .. } => Outcome::NotFound,
        });
    }
    if cause.is::<ManifestError>() {
        return Some(Outcome::Config);
    }
    if cause.is::<StoreError>() {
        return Some(Outcome::Store);
    }
    if let Some(agent_contract::envelope::EnvelopeError::TooLarge { .. }) = cause.downcast_ref() {
        return Some(Outcome::Usage);
    }
    if cause.is::<UsageError>() || cause.is::<NoHome>() {
        return Some(Outcome::Usage);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_anywhere_in_the_chain_are_found() {
        let lookup = anyhow::Error::new(AgentLookupError::InvalidName {
            name: "../x".into(),
        })
        .context("while running");
        assert_eq!(exit_code(&lookup), Outcome::Usage.exit_code());
        let missing = anyhow::Error::new(AgentLookupError::NotFound {
            name: "x".into(),
            manifest: "/h/agents/x/agent.toml".into(),
        });
        assert_eq!(exit_code(&missing), Outcome::NotFound.exit_code());
        assert_eq!(
            exit_code(&anyhow::anyhow!("boom")),
            Outcome::Internal.exit_code()
        );
        assert_eq!(exit_code(&Interrupted(Signal::SIGINT).into()), 130);
    }
}
