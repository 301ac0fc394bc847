//! echo: answers with its input, unchanged. The cold-start reference: everything it costs
//! is the runtime's cost.

use agent_sdk::{Agent, AgentError, Request, Response};

struct Echo;

impl Agent for Echo {
    fn handle(request: Request) -> Result<Response, AgentError> {
        Ok(Response::bytes(request.input))
    }
}

agent_sdk::export!(Echo);
