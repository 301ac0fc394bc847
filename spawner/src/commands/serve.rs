//! `spawner serve`: start the daemon ([`crate::serve`]).

use agent_contract::Home;

use crate::cli::ServeArgs;

/// Run the daemon until SIGTERM or SIGINT; exit 0 after a clean shutdown.
pub fn execute(home: Home, args: ServeArgs) -> anyhow::Result<u8> {
    let max_running = args
        .max_running
        .map_or_else(crate::admission::default_max_running, |n| n as usize);
    let options = crate::serve::Options {
        socket: args.socket.unwrap_or_else(|| home.socket_path()),
        max_running,
        max_queued: args.max_queued.unwrap_or(64 * max_running),
        grace: args.grace,
        client_timeout: args.client_timeout,
        spares: usize::from(args.spares),
    };
    crate::serve::serve(home, options)?;
    Ok(0)
}
