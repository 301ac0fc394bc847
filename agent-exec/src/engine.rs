//! The wasmtime engine configuration: the same settings for compiling and for loading,
//! since a compiled component only loads into an engine configured like the one that
//! compiled it.
//!
//! A request's engine has no compiler ([`build`]), and agent-exec is built without one:
//! Cranelift's code, its relocations and its setup are paid at every process start, and a
//! request only ever loads a component compiled earlier. The compile step
//! (`agent-compile`, [`crate::compile`]) is the one place that compiles, outside any
//! request's deadline, with [`build_compiler`].

use wasmtime::{Config, Engine};

/// Bumped when [`config`] changes, so that entries of another configuration get other
/// names instead of being rejected (and rebuilt) by each in turn.
const CONFIG_VERSION: u32 = 2;

fn config(fuel: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // The wall-clock deadline: a SIGALRM handler bumps the epoch, the store traps at 1.
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    // No native unwind information (`.eh_frame`) in compiled code: wasmtime takes its own
    // backtraces and traps without it, and host panics do not unwind through guest frames;
    // only outside tools (a debugger, perf's call graphs) would use it. Registering it is
    // paid at every load: with musl's unwinder one registration per function (3.6% of a
    // Python agent's agent-exec samples in a musl build, benches/ab.md).
    config.native_unwind_info(false);
    config
}

/// The engine a request runs in: loads compiled components, compiles none. Fuel metering
/// changes the generated code, so it is part of the configuration (and so of the cache key).
pub fn build(fuel: bool) -> Result<Engine, wasmtime::Error> {
    #[allow(unused_mut)]
    let mut config = config(fuel);
    // Built with a compiler (the `compiler` feature, or cargo's feature unification in a
    // workspace build): the request's engine still does not set it up.
    #[cfg(feature = "compiler")]
    config.enable_compiler(false);
    Engine::new(&config)
}

/// The engine that compiles for [`build`]'s: the same configuration, with Cranelift.
#[cfg(feature = "compiler")]
pub fn build_compiler(fuel: bool) -> Result<Engine, wasmtime::Error> {
    Engine::new(&config(fuel))
}

/// A short, stable text naming a request engine's configuration, for cache keys: the
/// configuration's version, whether it meters fuel, and the host's architecture. It only
/// keeps entries of different configurations apart; it does not vouch for an entry.
/// wasmtime itself checks, when it loads an entry, that it was compiled by this very
/// version of wasmtime, with this configuration's settings, for CPU features this host
/// has; an entry it refuses (after an upgrade, say) is rebuilt (see [`crate::cache`]).
pub fn fingerprint(fuel: bool) -> String {
    format!(
        "c{CONFIG_VERSION}{}-{}",
        if fuel { "-fuel" } else { "" },
        std::env::consts::ARCH
    )
}
