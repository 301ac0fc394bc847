//! JSON-RPC 2.0 on a byte stream, one JSON object per line (as LSP and MCP frame it, minus
//! the headers): requests, responses, notifications, error codes, and a line reader that
//! never holds more than its limit.

use std::io::{BufRead, ErrorKind};

use serde::Serialize;
use serde_json::{Value, json};

/// Largest request line accepted, newline included.
pub const MAX_LINE_BYTES: usize = 24 * 1024 * 1024;

/// Standard: the line is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Standard: JSON, but not a JSON-RPC 2.0 request.
pub const INVALID_REQUEST: i64 = -32600;
/// Standard: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Standard: the params do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;
/// Standard: a fault in the daemon.
pub const INTERNAL_ERROR: i64 = -32603;
/// The run could not start (no such agent, invalid agent.toml, ...); `data` has the
/// status and exit code from the outcome table.
pub const RUN_FAILED: i64 = -32000;
/// Admission control: too many runs in flight and waiting; retry later.
pub const BUSY: i64 = -32001;
/// The request line is over [`MAX_LINE_BYTES`].
pub const TOO_LARGE: i64 = -32002;
/// The daemon is shutting down and takes no new runs.
pub const SHUTTING_DOWN: i64 = -32003;
/// The peer runs as another user.
pub const FORBIDDEN: i64 = -32004;
/// No such run (cancel, get).
pub const NOT_FOUND: i64 = -32005;

/// An error object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpcError {
    /// One of the codes above.
    pub code: i64,
    /// What went wrong and what to do.
    pub message: String,
    /// Details (for run errors: `status` and `exit_code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with no data.
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Invalid params, saying which and why.
    pub fn params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }
}

/// A parsed request (or notification, when `id` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The id to answer with; `None` for a notification.
    pub id: Option<Value>,
    /// The method.
    pub method: String,
    /// The params (`{}` when absent).
    pub params: Value,
}

/// What one line holds: a single message, or a batch (a JSON array of them).
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// One request or notification (not yet checked).
    Single(Value),
    /// A batch: each element is answered in the one array of answers.
    Batch(Vec<Value>),
}

/// Parse one line as JSON; a parse error is answered with id `null`.
pub fn parse_line(line: &[u8]) -> Result<Incoming, RpcError> {
    match serde_json::from_slice(line) {
        Ok(Value::Array(items)) => Ok(Incoming::Batch(items)),
        Ok(value) => Ok(Incoming::Single(value)),
        Err(e) => Err(RpcError::new(PARSE_ERROR, format!("not JSON: {e}"))),
    }
}

/// Check one message of a line (or of a batch) as a JSON-RPC 2.0 request. The error
/// carries the id to answer with: the request's own when it is a valid id (a string, a
/// number or null), else `null`, as the specification says.
pub fn request(value: Value) -> Result<Request, (Value, RpcError)> {
    let Value::Object(mut object) = value else {
        return Err((
            Value::Null,
            RpcError::new(INVALID_REQUEST, "a request must be a JSON object"),
        ));
    };
    let id = object.remove("id");
    if let Some(id) = &id
        && !(id.is_string() || id.is_number() || id.is_null())
    {
        return Err((
            Value::Null,
            RpcError::new(INVALID_REQUEST, "\"id\" must be a string, a number or null"),
        ));
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    let invalid = |message: &str| (reply_id.clone(), RpcError::new(INVALID_REQUEST, message));
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("missing \"jsonrpc\": \"2.0\""));
    }
    let Some(Value::String(method)) = object.remove("method") else {
        return Err(invalid("missing \"method\" (a string)"));
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p,
        Some(Value::Array(_)) => {
            return Err((
                reply_id,
                RpcError::params(format!(
                    "{method} takes its params by name (an object), not by position (an array)"
                )),
            ));
        }
        Some(_) => return Err(invalid("\"params\" must be an object (by-name params)")),
    };
    Ok(Request { id, method, params })
}

/// The response object for `id`.
pub fn response_value(id: &Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
    }
}

/// The line answering a batch: the array of its answers (a batch of notifications only
/// gets none).
pub fn batch_response(answers: &[Value]) -> Option<Vec<u8>> {
    (!answers.is_empty()).then(|| line_of(&Value::Array(answers.to_vec())))
}

/// A response line for `id`.
pub fn response(id: &Value, result: Result<Value, RpcError>) -> Vec<u8> {
    line_of(&response_value(id, result))
}

/// A notification line.
pub fn notification(method: &str, params: Value) -> Vec<u8> {
    line_of(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
}

/// `value` as one line, newline included.
pub fn line_of(value: &Value) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// One line read from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its newline.
    Complete(Vec<u8>),
    /// A line over the limit; it was read and dropped up to its newline.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Closed,
    /// No complete line within the read timeout: a stalled client.
    Stalled,
}

/// Read one line of at most `max` bytes from `reader`, discarding the rest of a longer one.
pub fn read_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Line::Stalled);
            }
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(Line::Closed);
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete(line)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request of a line, as the daemon reads it: the line's message, or the first
    /// message of a batch.
    fn parse(line: &[u8]) -> Result<Request, (Value, RpcError)> {
        match parse_line(line).map_err(|e| (Value::Null, e))? {
            Incoming::Single(value) => request(value),
            Incoming::Batch(mut items) => request(items.swap_remove(0)),
        }
    }

    #[test]
    fn requests_are_parsed_and_bad_ones_classified() {
        let r = parse(br#"{"jsonrpc":"2.0","id":7,"method":"health"}"#).expect("ok");
        assert_eq!(
            (r.id, r.method.as_str(), r.params),
            (Some(json!(7)), "health", json!({}))
        );
        let code = |line: &[u8]| parse(line).expect_err("bad").1.code;
        assert_eq!(code(b"{nope"), PARSE_ERROR);
        assert_eq!(code(b"[1]"), INVALID_REQUEST);
        assert_eq!(code(br#"{"id":1,"method":"x"}"#), INVALID_REQUEST);
        assert_eq!(code(br#"{"jsonrpc":"2.0","id":1}"#), INVALID_REQUEST);
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
            INVALID_PARAMS
        );
        for bad_id in [r#"{"a":1}"#, "[1]", "true"] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{bad_id},"method":"x"}}"#);
            let (id, e) = parse(line.as_bytes()).expect_err("bad id");
            assert_eq!((id, e.code), (Value::Null, INVALID_REQUEST), "{line}");
        }
        // The id is kept for the error when it could be read.
        let (id, _) = parse(br#"{"jsonrpc":"1.0","id":"a","method":"x"}"#).expect_err("bad");
        assert_eq!(id, json!("a"));
    }

    #[test]
    fn long_lines_are_dropped_whole_and_reading_goes_on() {
        let input = format!("{}\nshort\npartial", "x".repeat(100));
        let mut reader = std::io::BufReader::with_capacity(16, input.as_bytes());
        assert_eq!(read_line(&mut reader, 50).expect("read"), Line::TooLong);
        assert_eq!(
            read_line(&mut reader, 50).expect("read"),
            Line::Complete(b"short".to_vec())
        );
        assert_eq!(read_line(&mut reader, 50).expect("read"), Line::Closed);
    }
}
