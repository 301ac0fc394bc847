//! Tool calls on the wire: what a client asks the broker for (list or call tools of the
//! MCP servers of `tools.toml`), and what it answers. Both travel as JSON inside `Tools`
//! and `Json` frames. Arguments, schemas and structured results stay JSON text end to end:
//! the broker parses them, the agent gets them as the server wrote them.

use serde::{Deserialize, Serialize};

/// The `_meta` key a tool call's idempotency key is sent under (a prefixed name, as MCP
/// asks of keys that are not its own).
pub const IDEMPOTENCY_KEY: &str = "spawner/idempotency-key";

/// A request to the broker's tool servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToolRequest {
    /// The tools of these servers (each started if it is not running).
    List {
        /// Servers of `tools.toml`, by name.
        servers: Vec<String>,
        /// Give up after this many milliseconds (the caller's own deadline).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Call one tool.
    Call {
        /// The server, by name.
        server: String,
        /// The tool's name there.
        tool: String,
        /// Its arguments: a JSON object, as text.
        arguments: String,
        /// The same for every attempt at this one effect (a durable run's `<run id>:<step>`),
        /// so that a server that takes one can tell a call made again after a crash: sent
        /// to it as `_meta."spawner/idempotency-key"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Give up after this many milliseconds (the caller's own deadline); the server's
        /// own `timeout_s` applies as well, whichever is shorter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

/// One tool a server offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The server that offers it.
    pub server: String,
    /// The tool's name there.
    pub name: String,
    /// What it does, in the server's words (may be empty).
    pub description: String,
    /// The JSON Schema of its arguments, as text.
    pub input_schema: String,
}

/// The answer to [`ToolRequest::List`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolList {
    /// In the order of the servers asked for, then of each server's list.
    pub tools: Vec<ToolInfo>,
}

/// The answer to [`ToolRequest::Call`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// The text parts of the result, in order, joined by newlines; other parts (images,
    /// resources) are described in a line of their own.
    pub text: String,
    /// The server's structured result, as JSON text, where it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<String>,
    /// Size of the server's whole result, as JSON, in bytes.
    pub bytes_out: u64,
    /// Milliseconds spent starting the server for this call (0 when it was running).
    #[serde(default)]
    pub start_ms: f64,
}
