//! JSON-RPC 2.0 on a byte stream, one JSON object per line (as LSP and MCP frame it, minus
//! the headers): requests, responses, notifications, error codes, and a line reader that
//! never holds more than its limit.

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
/// A request line was begun and not finished within the client timeout; the connection
/// is closed.
pub const CLIENT_TIMEOUT: i64 = -32006;

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
pub fn batch_response(answers: Vec<Value>) -> Option<Vec<u8>> {
    (!answers.is_empty()).then(|| line_of(&Value::Array(answers)))
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

/// Bytes that unfinished request lines of all connections may hold together: room for a
/// few lines at [`MAX_LINE_BYTES`] at once (a line's buffer grows by doubling, so one can
/// hold up to twice its length), and no more, whatever the number of connections.
pub const MAX_PENDING_BYTES: usize = 6 * MAX_LINE_BYTES;

/// The budget of bytes that unfinished lines hold, shared by every connection.
#[derive(Debug)]
pub struct LineBudget {
    used: AtomicUsize,
    max: usize,
}

impl LineBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> LineBudget {
        LineBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Take `n` bytes, or nothing when that would go over the budget.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one line holds of a [`LineBudget`]; given back when the line is done with.
struct Charge<'a> {
    budget: &'a LineBudget,
    bytes: usize,
}

/// Bytes of a line that are not charged to the budget, so that small requests (health, a
/// short run) are served even while large unfinished lines hold all of it. Bounded by the
/// number of connections: 1,024 x 64 KiB at most.
pub const UNCHARGED_LINE_BYTES: usize = 64 * 1024;

impl Charge<'_> {
    /// Cover a line buffer of `capacity` bytes; false when the budget has no room for it.
    fn cover(&mut self, capacity: usize) -> bool {
        let capacity = capacity.saturating_sub(UNCHARGED_LINE_BYTES);
        if capacity <= self.bytes {
            return true;
        }
        let more = capacity - self.bytes;
        if !self.budget.take(more) {
            return false;
        }
        self.bytes = capacity;
        true
    }
}

impl Charge<'_> {
    /// Give back everything charged so far.
    fn release(&mut self) {
        self.budget.give_back(self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// A reader whose blocking reads can be bounded in time (a socket), so that a line has a
/// deadline however its bytes trickle in.
pub trait TimedRead: Read {
    /// Make the next reads give up after `timeout` (`ErrorKind::WouldBlock`/`TimedOut`).
    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()>;
}

impl TimedRead for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, Some(timeout))
    }
}

impl TimedRead for &[u8] {
    fn set_read_timeout(&self, _: Duration) -> std::io::Result<()> {
        Ok(())
    }
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
    /// Nothing came within the timeout: an idle client.
    Idle,
    /// A line was begun but not finished within the timeout of its first byte: a stalled
    /// or trickling client.
    Stalled,
    /// The unfinished lines of all connections together hold the whole [`LineBudget`];
    /// this one was dropped.
    OverBudget,
}

/// Read one line of at most `max` bytes from `reader`, discarding the rest of a longer one.
/// The line must begin within `timeout` and end within `timeout` of its first byte; its
/// buffer is charged to `budget` while it is read.
pub fn read_line<R: TimedRead>(
    reader: &mut BufReader<R>,
    max: usize,
    timeout: Duration,
    budget: &LineBudget,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut charge = Charge { budget, bytes: 0 };
    let mut too_long = false;
    let mut deadline = Instant::now() + timeout;
    let mut begun = false;
    loop {
        if reader.buffer().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(if begun { Line::Stalled } else { Line::Idle });
            }
            reader.get_ref().set_read_timeout(left)?;
        }
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(if begun { Line::Stalled } else { Line::Idle });
            }
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(Line::Closed);
        }
        if !begun {
            begun = true;
            deadline = Instant::now() + timeout;
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
                // Nothing is held for the rest of it, which is read and dropped.
                charge.release();
            } else {
                let needed = line.len() + chunk.len();
                if needed > line.capacity() {
                    // Grow by doubling (up to the limit), charged before it is allocated.
                    let want = needed.max(line.capacity() * 2).min(max);
                    if !charge.cover(want) {
                        return Ok(Line::OverBudget);
                    }
                    line.reserve_exact(want - line.len());
                }
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
        let budget = LineBudget::new(1 << 20);
        let mut reader = BufReader::with_capacity(16, input.as_bytes());
        let mut read =
            || read_line(&mut reader, 50, Duration::from_secs(5), &budget).expect("read");
        assert_eq!(read(), Line::TooLong);
        assert_eq!(read(), Line::Complete(b"short".to_vec()));
        assert_eq!(read(), Line::Closed);
        assert_eq!(budget.used(), 0, "every line gave its bytes back");
    }

    #[test]
    fn a_line_past_the_shared_budget_is_dropped_and_its_bytes_given_back() {
        let budget = LineBudget::new(1 << 20);
        // Another connection's unfinished line holds most of the budget.
        assert!(budget.take((1 << 20) - 40));
        let input = format!("{}\n", "y".repeat(UNCHARGED_LINE_BYTES + 30));
        let mut reader = BufReader::with_capacity(8, input.as_bytes());
        assert_eq!(
            read_line(&mut reader, 1 << 20, Duration::from_secs(5), &budget).expect("read"),
            Line::OverBudget
        );
        // A short line needs nothing of the budget.
        let mut reader = BufReader::with_capacity(8, &b"short\n"[..]);
        assert_eq!(
            read_line(&mut reader, 1 << 20, Duration::from_secs(5), &budget).expect("read"),
            Line::Complete(b"short".to_vec())
        );
        assert_eq!(budget.used(), (1 << 20) - 40);
        budget.give_back((1 << 20) - 40);
        let mut reader = BufReader::with_capacity(8, input.as_bytes());
        assert!(matches!(
            read_line(&mut reader, 1 << 20, Duration::from_secs(5), &budget).expect("read"),
            Line::Complete(line) if line.len() == UNCHARGED_LINE_BYTES + 30
        ));
        assert_eq!(budget.used(), 0);
    }
}
