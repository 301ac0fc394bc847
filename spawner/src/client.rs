//! A JSON-RPC client of `spawner serve`, for `spawner call` and `spawner run --daemon`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::{Value, json};

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("{}", connect_message(socket, error))]
    Connect {
        /// The socket.
        socket: String,
        /// What the OS said (in the message, once).
        error: std::io::Error,
    },
    /// The connection broke or the answer was not JSON-RPC.
    #[error("the daemon's answer could not be read: {0}")]
    Protocol(String),
}

/// What a failed connection means, said once: no socket, or nobody listening on it, is a
/// daemon that is not running.
fn connect_message(socket: &str, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => format!(
            "the daemon is not running (nothing listens on {socket}); start it with \
             `spawner serve` (or the systemd units in contrib/systemd), or pass --socket"
        ),
        _ => format!("cannot connect to the daemon at {socket}: {error}"),
    }
}

/// The daemon's error object.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// Its code.
    pub code: i64,
    /// Its message.
    pub message: String,
    /// Its data.
    pub data: Option<Value>,
}

/// Call `method` with `params` on the daemon at `socket`; notifications that arrive
/// before the answer go to `on_notification`.
pub fn call(
    socket: &Path,
    method: &str,
    params: Value,
    mut on_notification: impl FnMut(&Value),
) -> Result<Result<Value, CallError>, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|error| ClientError::Connect {
        socket: socket.display().to_string(),
        error,
    })?;
    let mut line = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    // A daemon that refuses the connection (another user, too many connections) answers
    // and closes at once, maybe before the request is written: read its answer anyway.
    let written = stream.write_all(&line);
    let mut reader = BufReader::new(stream);
    loop {
        let mut answer = String::new();
        let n = match reader.read_line(&mut answer) {
            Ok(n) => n,
            Err(_) if written.is_err() => 0,
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        if n == 0 {
            return Err(ClientError::Protocol(match &written {
                Err(e) => format!("cannot send the request: {e}"),
                Ok(()) => "the daemon closed the connection without answering".into(),
            }));
        }
        let value: Value =
            serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if value.get("id").is_none() {
            on_notification(&value);
            continue;
        }
        if let Some(error) = value.get("error") {
            return Ok(Err(CallError {
                code: error["code"].as_i64().unwrap_or(0),
                message: error["message"].as_str().unwrap_or("").to_owned(),
                data: error.get("data").cloned(),
            }));
        }
        return Ok(Ok(value.get("result").cloned().unwrap_or(Value::Null)));
    }
}
