//! bulky: echo's job in a component of a few MB, for the benchmark of how cold start grows
//! with component size. It carries a 4 MiB table in its data segment, as an agent with a
//! vocabulary or a rules table would, and answers with its input followed by one byte of the
//! table, so the table cannot be optimized away. Not installed by setup.

use agent_sdk::{Agent, AgentError, Request, Response};

static TABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/table.bin"));

struct Bulky;

impl Agent for Bulky {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let table = core::hint::black_box(TABLE);
        let mut out = request.input;
        let pick = table[out.len() % table.len()];
        out.extend_from_slice(format!(" {pick:02x}").as_bytes());
        Ok(Response::bytes(out))
    }
}

agent_sdk::export!(Bulky);
