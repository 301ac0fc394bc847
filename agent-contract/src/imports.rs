//! What an agent's component may import: the interfaces agent-exec's host links, and a check
//! of a component's imports against them, so that `spawner agents` can say an agent cannot
//! run before a run finds out. (componentize-js's default output, for one, imports
//! `wasi:http`, which the host does not provide: agents have no network.)

/// The WASI 0.2 interfaces the host links: wasmtime-wasi's `p2::add_to_linker_sync` (48.x).
pub const WASI_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stderr",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];

/// The interfaces of this package, `wit/agent.wit`.
pub const AGENT_INTERFACES: &[&str] = &[
    "spawner:agent/config",
    "spawner:agent/hooks",
    "spawner:agent/inference",
    "spawner:agent/llm",
    "spawner:agent/log",
    "spawner:agent/memory",
    "spawner:agent/runs",
    "spawner:agent/tools",
    "spawner:agent/types",
];

/// The version every provided interface has: a component's import of `x@0.2.z` links to
/// the host's `x@0.2.*` (wasmtime matches semver-compatible versions).
const PROVIDED_VERSION: &str = "0.2";

/// Why a component's imports could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportsError {
    /// The bytes are not a WebAssembly component.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
}

/// The imports of `component` (its own, not those of the modules inside it) that the host
/// does not provide, by name as the component spells them (`wasi:http/types@0.2.0`).
pub fn unprovided_imports(component: &[u8]) -> Result<Vec<String>, ImportsError> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut depth = 0usize;
    let mut missing = Vec::new();
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| ImportsError::NotAComponent(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return Err(ImportsError::NotAComponent(
                        "a core module (make a component of it, e.g. with `wasm-tools component new`, or build for wasm32-wasip2)"
                            .into(),
                    ));
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| ImportsError::NotAComponent(e.to_string()))?;
                    // A type equal to one of another import (the world's `use` of
                    // `request`, `response`...) needs nothing of the host.
                    let alias = matches!(
                        import.ty,
                        wasmparser::ComponentTypeRef::Type(wasmparser::TypeBounds::Eq(_))
                    );
                    if !alias && !provided(import.name.name) {
                        missing.push(import.name.name.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(missing)
}

/// Whether the host links the interface `name` (`package/interface@version`).
fn provided(name: &str) -> bool {
    let Some((interface, version)) = name.split_once('@') else {
        return false;
    };
    let compatible = version
        .strip_prefix(PROVIDED_VERSION)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
    compatible && (WASI_INTERFACES.contains(&interface) || AGENT_INTERFACES.contains(&interface))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_provided_by_name_and_compatible_version() {
        assert!(provided("wasi:io/streams@0.2.0"));
        assert!(provided("wasi:cli/environment@0.2.12"));
        assert!(provided("spawner:agent/memory@0.2.0"));
        assert!(!provided("wasi:http/types@0.2.0"));
        assert!(!provided("wasi:io/streams@0.3.0"));
        assert!(!provided("wasi:io/streams@0.20.0"));
        assert!(!provided("wasi:io/streams"));
        assert!(provided("spawner:agent/llm@0.2.2"));
        assert!(provided("spawner:agent/tools@0.2.3"));
        assert!(!provided("spawner:agent/network@0.2.3"));
    }

    #[test]
    fn a_core_module_and_garbage_are_not_components() {
        // The empty core module: magic and version 1.
        let module = b"\0asm\x01\0\0\0";
        assert!(unprovided_imports(module).is_err());
        assert!(unprovided_imports(b"not wasm").is_err());
    }
}
