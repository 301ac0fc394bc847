//! testing: an agent that misbehaves on request, for the runtime's fault tests. Not
//! installed by setup. The input picks the behaviour:
//!
//! - `panic`, `unreachable`: trap
//! - `loop`: run forever (the deadline must stop it)
//! - `alloc`: allocate without bound (the memory cap must stop it)
//! - `put <key> <value>` then answer `ok`; `put-then-loop <key> <value>`: write, then hang
//! - `get <key>`: the stored value, or `(none)`
//! - `config <key>`: a `[config]` value, or `(none)`
//! - `env`: how many environment variables and arguments the agent can see
//! - `read <path>`: read a file through WASI (only preopens are visible)
//! - `write <path> <text>`: write a file through WASI
//! - `connect <addr>`: open a TCP connection (the sandbox has no network)
//! - `fail`, `reject`: return those errors after a `put` of key `attempt`
//! - `infer <model>`: call inference with an empty input
//! - anything else: echoed back

use agent_sdk::{Agent, AgentError, Request, Response, config, inference, memory};

struct Testing;

fn words(input: &str) -> (&str, Vec<&str>) {
    let mut it = input.split_whitespace();
    (it.next().unwrap_or(""), it.collect())
}

impl Agent for Testing {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let text = request.text()?.to_owned();
        let (command, args) = words(&text);
        match (command, args.as_slice()) {
            ("panic", _) => panic!("testing agent was asked to panic"),
            ("unreachable", _) => core::arch::wasm32::unreachable(),
            ("loop", _) => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ("alloc", _) => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            ("put", [key, value]) => {
                memory::put(key, value.as_bytes())?;
                Ok(Response::text("ok"))
            }
            ("put-then-loop", [key, value]) => {
                memory::put(key, value.as_bytes())?;
                memory::append_event("partial", value.as_bytes())?;
                // The readiness signal tests wait for before killing the process.
                agent_sdk::log::info("wrote, now looping");
                loop {
                    std::hint::black_box(());
                }
            }
            ("get", [key]) => Ok(Response::bytes(
                memory::get(key)?.unwrap_or_else(|| b"(none)".to_vec()),
            )),
            ("config", [key]) => Ok(Response::text(
                config::get(key).unwrap_or_else(|| "(none)".into()),
            )),
            ("env", _) => Ok(Response::text(format!(
                "vars={} args={}",
                std::env::vars().count(),
                std::env::args().count()
            ))),
            ("read", [path]) => match std::fs::read_to_string(path) {
                Ok(text) => Ok(Response::text(text)),
                Err(e) => Err(AgentError::Failed(format!("cannot read {path}: {e}"))),
            },
            ("write", [path, text]) => match std::fs::write(path, text) {
                Ok(()) => Ok(Response::text("written")),
                Err(e) => Err(AgentError::Failed(format!("cannot write {path}: {e}"))),
            },
            ("connect", [addr]) => match std::net::TcpStream::connect(addr) {
                Ok(_) => Ok(Response::text("connected")),
                Err(e) => Err(AgentError::Failed(format!("cannot connect to {addr}: {e}"))),
            },
            ("fail", _) => {
                memory::put("attempt", b"failed")?;
                Err(AgentError::Failed("asked to fail".into()))
            }
            ("reject", _) => {
                memory::put("attempt", b"rejected")?;
                Err(AgentError::Rejected("asked to reject".into()))
            }
            ("infer", [model]) => match inference::infer(model, &[]) {
                Ok(_) => Ok(Response::text("inferred")),
                Err(e) => Err(AgentError::Failed(format!("{e:?}"))),
            },
            _ => Ok(Response::text(text)),
        }
    }
}

agent_sdk::export!(Testing);
