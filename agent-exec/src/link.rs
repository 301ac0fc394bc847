//! The linker an agent is instantiated with: WASI (no network, no environment, only
//! declared preopens) and the host interfaces of `wit/agent.wit`, one entry per interface
//! in [`INTERFACES`], so that a request links only what its component imports.
//!
//! Linking is per request and not free: the whole WASI world and the eight host
//! interfaces are some hundred functions, each a hashed name in the linker's maps, built
//! and dropped on every run. An agent like `echo` imports none of them; a Python agent
//! imports most. [`for_component`] links the interfaces the component names (at any
//! version: the linker matches semver-compatible versions itself), and an import that is
//! not in the table is left out, so that instantiation names it as missing, exactly as it
//! did with the whole world linked. [`all`] links every interface, for a daemon's spare,
//! which builds its linker before it knows the component.

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::WasiCli;
use wasmtime_wasi::clocks::WasiClocks;
use wasmtime_wasi::filesystem::WasiFilesystem;
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random, sockets, sync};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::WasiSockets;

use crate::ExecError;
use crate::host::AgentHost;
use crate::host::bindings::spawner::agent as host;

type Add = fn(&mut Linker<AgentHost>) -> wasmtime::Result<()>;

/// The resource table, for `wasi:io` (what `wasmtime_wasi` does for its own linker).
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

fn table(h: &mut AgentHost) -> &mut ResourceTable {
    h.ctx().table
}

fn own(h: &mut AgentHost) -> &mut AgentHost {
    h
}

/// Every interface the runtime provides, by its name without a version, with what adds
/// it to a linker: the synchronous WASI 0.2 world (as
/// `wasmtime_wasi::p2::add_to_linker_sync` links it) and the host interfaces of
/// `wit/agent.wit`.
pub const INTERFACES: &[(&str, Add)] = &[
    ("wasi:io/error", |l| {
        io::error::add_to_linker::<_, HasIo>(l, table)
    }),
    ("wasi:io/poll", |l| {
        sync::io::poll::add_to_linker::<_, HasIo>(l, table)
    }),
    ("wasi:io/streams", |l| {
        sync::io::streams::add_to_linker::<_, HasIo>(l, table)
    }),
    ("wasi:clocks/wall-clock", |l| {
        clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, clocks_view)
    }),
    ("wasi:clocks/monotonic-clock", |l| {
        clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, clocks_view)
    }),
    ("wasi:filesystem/types", |l| {
        sync::filesystem::types::add_to_linker::<_, WasiFilesystem>(l, filesystem_view)
    }),
    ("wasi:filesystem/preopens", |l| {
        filesystem::preopens::add_to_linker::<_, WasiFilesystem>(l, filesystem_view)
    }),
    ("wasi:random/random", |l| {
        random::random::add_to_linker::<_, WasiRandom>(l, |h| h.wasi.random())
    }),
    ("wasi:random/insecure", |l| {
        random::insecure::add_to_linker::<_, WasiRandom>(l, |h| h.wasi.random())
    }),
    ("wasi:random/insecure-seed", |l| {
        random::insecure_seed::add_to_linker::<_, WasiRandom>(l, |h| h.wasi.random())
    }),
    ("wasi:cli/exit", |l| {
        cli::exit::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/environment", |l| {
        cli::environment::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/stdin", |l| {
        cli::stdin::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/stdout", |l| {
        cli::stdout::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/stderr", |l| {
        cli::stderr::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/terminal-input", |l| {
        cli::terminal_input::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/terminal-output", |l| {
        cli::terminal_output::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/terminal-stdin", |l| {
        cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/terminal-stdout", |l| {
        cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    ("wasi:cli/terminal-stderr", |l| {
        cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, cli_view)
    }),
    // Sockets are linked so that a component built for the whole WASI world instantiates;
    // the context grants no network, so every call is denied.
    ("wasi:sockets/tcp-create-socket", |l| {
        sockets::tcp_create_socket::add_to_linker::<_, WasiSockets>(l, sockets_view)
    }),
    ("wasi:sockets/instance-network", |l| {
        sockets::instance_network::add_to_linker::<_, WasiSockets>(l, sockets_view)
    }),
    ("wasi:sockets/network", |l| {
        let options = sockets::network::LinkOptions::default();
        sockets::network::add_to_linker::<_, WasiSockets>(l, &options, sockets_view)
    }),
    ("wasi:sockets/ip-name-lookup", |l| {
        sockets::ip_name_lookup::add_to_linker::<_, WasiSockets>(l, sockets_view)
    }),
    ("wasi:sockets/tcp", |l| {
        sync::sockets::tcp::add_to_linker::<_, WasiSockets>(l, sockets_view)
    }),
    ("wasi:sockets/udp", |l| {
        sync::sockets::udp::add_to_linker::<_, WasiSockets>(l, sockets_view)
    }),
    ("wasi:sockets/udp-create-socket", |l| {
        sync::sockets::udp_create_socket::add_to_linker::<_, WasiSockets>(l, sockets_view)
    }),
    ("spawner:agent/types", |l| {
        host::types::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/memory", |l| {
        host::memory::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/hooks", |l| {
        host::hooks::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/log", |l| {
        host::log::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/config", |l| {
        host::config::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/inference", |l| {
        host::inference::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/llm", |l| {
        host::llm::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/tools", |l| {
        host::tools::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
    ("spawner:agent/runs", |l| {
        host::runs::add_to_linker::<_, HasSelf<_>>(l, own)
    }),
];

fn cli_view(h: &mut AgentHost) -> wasmtime_wasi::cli::WasiCliCtxView<'_> {
    wasmtime_wasi::cli::WasiCliView::cli(h)
}

fn clocks_view(h: &mut AgentHost) -> wasmtime_wasi::clocks::WasiClocksCtxView<'_> {
    wasmtime_wasi::clocks::WasiClocksView::clocks(h)
}

fn filesystem_view(h: &mut AgentHost) -> wasmtime_wasi::filesystem::WasiFilesystemCtxView<'_> {
    wasmtime_wasi::filesystem::WasiFilesystemView::filesystem(h)
}

fn sockets_view(h: &mut AgentHost) -> wasmtime_wasi::sockets::WasiSocketsCtxView<'_> {
    wasmtime_wasi::sockets::WasiSocketsView::sockets(h)
}

/// An import's interface name without its version: `wasi:cli/stdout@0.2.6` is
/// `wasi:cli/stdout`.
fn unversioned(import: &str) -> &str {
    import.split_once('@').map_or(import, |(name, _)| name)
}

fn linker_error(e: wasmtime::Error) -> ExecError {
    ExecError::Internal(format!("linker: {e:#}"))
}

/// A linker with every interface of [`INTERFACES`].
pub fn all(engine: &wasmtime::Engine) -> Result<Linker<AgentHost>, ExecError> {
    let mut linker = Linker::new(engine);
    for (_, add) in INTERFACES {
        add(&mut linker).map_err(linker_error)?;
    }
    Ok(linker)
}

/// A linker with the interfaces of [`INTERFACES`] that `component` imports, each once.
pub fn for_component(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Result<Linker<AgentHost>, ExecError> {
    let mut linker = Linker::new(engine);
    let mut linked: Vec<&str> = Vec::new();
    for (import, _) in component.component_type().imports(engine) {
        let name = unversioned(import);
        if linked.contains(&name) {
            continue;
        }
        if let Some((name, add)) = INTERFACES.iter().find(|(known, _)| *known == name) {
            add(&mut linker).map_err(linker_error)?;
            linked.push(name);
        }
    }
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dropped_and_only_versions() {
        assert_eq!(unversioned("wasi:cli/stdout@0.2.6"), "wasi:cli/stdout");
        assert_eq!(unversioned("spawner:agent/memory"), "spawner:agent/memory");
    }

    #[test]
    fn every_interface_of_the_whole_world_links_once() {
        let engine = wasmtime::Engine::default();
        // Each entry on a linker of its own, then all on one: no entry defines what
        // another does (a name defined twice is an error), and none fails on its own.
        for (name, add) in INTERFACES {
            add(&mut Linker::new(&engine)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        all(&engine).expect("every interface on one linker");
        let mut names: Vec<&str> = INTERFACES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            INTERFACES.len(),
            "an interface is listed twice"
        );
    }
}
