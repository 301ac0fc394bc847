//! One module per subcommand, each with an `execute()`.

pub mod agents;
pub mod call;
pub mod consent;
pub mod doctor;
pub mod hook;
pub mod run;
pub mod runs;
pub mod serve;

use agent_contract::Home;

use crate::cli::{Cli, Command};

/// Run the subcommand `cli` names. `Ok` carries the exit code: the outcome's, from
/// [`agent_contract::Outcome::exit_code`], except for hooks, which exit as their caller's protocol says.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let home = Home::resolve(cli.home)?;
    let outcome = match cli.command {
        Command::Run(args) if args.daemon => {
            let input = run::read_input(&args)?;
            return call::run_through_daemon(&home, &args, input);
        }
        Command::Run(args) => run::execute(&home, args)?,
        Command::Agents(args) => agents::execute(&home, args)?,
        Command::Runs(args) => runs::execute(&home, args)?,
        Command::Doctor(args) => doctor::execute(&home, args)?,
        Command::Consent(args) => consent::execute(&home, args)?,
        Command::Hook(args) => return hook::execute(&home, args),
        Command::Serve(args) => return serve::execute(home, args),
        Command::Call(args) => return call::execute(&home, args),
    };
    Ok(outcome.exit_code())
}
