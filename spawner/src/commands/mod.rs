//! One module per subcommand, each with an `execute()`.

pub mod agents;
pub mod run;
pub mod runs;

use agent_contract::{Home, Outcome};

use crate::cli::{Cli, Command};

/// Run the subcommand `cli` names. `Ok` carries the outcome to exit with.
pub fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let home = Home::resolve(cli.home)?;
    match cli.command {
        Command::Run(args) => run::execute(&home, args),
        Command::Agents(args) => agents::execute(&home, args),
        Command::Runs(args) => runs::execute(&home, args),
    }
}
