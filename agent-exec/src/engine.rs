//! The wasmtime engine configuration: the same settings for compiling and for loading,
//! since a compiled component only loads into an engine configured like the one that
//! compiled it.
//!
//! A request's engine has no compiler ([`build`]): creating Cranelift (its settings, the
//! host's CPU features) is half of an engine's creation, and a request only ever loads a
//! component compiled earlier. The compile step ([`build_compiler`]) is the one place that
//! compiles, outside any request's deadline.

use wasmtime::{Config, Engine};

fn config(fuel: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // The wall-clock deadline: a SIGALRM handler bumps the epoch, the store traps at 1.
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    config
}

/// The engine a request runs in: loads compiled components, compiles none. Fuel metering
/// changes the generated code, so it is part of the configuration (and so of the cache key).
pub fn build(fuel: bool) -> Result<Engine, wasmtime::Error> {
    let mut config = config(fuel);
    config.enable_compiler(false);
    Engine::new(&config)
}

/// The engine that compiles for [`build`]'s: the same configuration, with Cranelift.
pub fn build_compiler(fuel: bool) -> Result<Engine, wasmtime::Error> {
    Engine::new(&config(fuel))
}

/// A short, stable text naming a request engine's configuration, for cache keys. Taken from
/// the engine without a compiler: wasmtime's compatibility hash includes the compiler's
/// flags when there is one, and the loading engine has none. What the compiler chose
/// (target CPU features) is checked by wasmtime itself when an entry is loaded.
pub fn fingerprint(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
