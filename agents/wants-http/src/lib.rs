//! wants-http: an agent that fetches a URL over `wasi:http`. The host does not provide
//! `wasi:http` (agents have no network), so this agent cannot run: it exists for the
//! tests of the import check (`spawner agents` lists it as invalid, naming the import).

use agent_sdk::{Agent, AgentError, Request, Response};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest};

struct WantsHttp;

impl Agent for WantsHttp {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let authority = request.text()?.to_owned();
        let outgoing = OutgoingRequest::new(Fields::new());
        outgoing
            .set_authority(Some(&authority))
            .map_err(|()| AgentError::InvalidInput("bad authority".into()))?;
        match outgoing_handler::handle(outgoing, None) {
            Ok(_) => Ok(Response::text("sent")),
            Err(e) => Err(AgentError::Failed(format!("{e:?}"))),
        }
    }
}

agent_sdk::export!(WantsHttp);
