//! The runtime layout a request needs besides its home: where the home's inference broker
//! listens, which program starts it, and which ONNX Runtime library it loads. The front
//! (the spawner, or its daemon) resolves it once from its own environment and hands it to
//! agent-exec in the request's header, since agent-exec runs with a cleared environment:
//! `spawner doctor`, the request and the broker it starts then agree on every path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Home;

/// Names the executable that serves inference, instead of `gpu-broker` beside agent-exec.
pub const GPU_BROKER_ENV: &str = "SPAWNER_GPU_BROKER";
/// Names the ONNX Runtime library the broker loads (as ort reads it).
pub const ORT_LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// Where a home's inference broker is, and how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerLayout {
    /// The broker's socket ([`Home::broker_socket_path`]).
    pub socket: PathBuf,
    /// The program to start when none answers there.
    pub program: PathBuf,
    /// The ONNX Runtime library to give it (`--ort-lib`), when the front was told one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_library: Option<PathBuf>,
}

impl BrokerLayout {
    /// Resolve it from this process's environment: `$SPAWNER_GPU_BROKER`, else `gpu-broker`
    /// in `programs` (the directory agent-exec is in); `$ORT_DYLIB_PATH` when set. Paths
    /// are made absolute.
    pub fn resolve(home: &Home, programs: &Path) -> BrokerLayout {
        let from_env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        BrokerLayout {
            socket: absolute(home.broker_socket_path()),
            program: absolute(
                from_env(GPU_BROKER_ENV).unwrap_or_else(|| programs.join("gpu-broker")),
            ),
            ort_library: from_env(ORT_LIBRARY_ENV).map(absolute),
        }
    }

    /// [`BrokerLayout::resolve`] with the programs beside the agent-exec executable at
    /// `agent_exec`: where the spawner, its doctor and agent-exec itself look.
    pub fn beside(home: &Home, agent_exec: &Path) -> BrokerLayout {
        BrokerLayout::resolve(home, agent_exec.parent().unwrap_or(Path::new(".")))
    }
}
