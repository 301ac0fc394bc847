//! The wasmtime engine configuration: the same settings for compiling and for loading,
//! since a compiled component only loads into an engine configured like the one that
//! compiled it.

use wasmtime::{Config, Engine};

/// Build the engine for an agent. Fuel metering changes the generated code, so it is part
/// of the configuration (and so of the cache key).
pub fn build(fuel: bool) -> Result<Engine, wasmtime::Error> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // The wall-clock deadline: a SIGALRM handler bumps the epoch, the store traps at 1.
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    Engine::new(&config)
}

/// A short, stable text naming the engine's configuration, for cache keys.
pub fn fingerprint(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
