//! What a long-lived process of a home (the `spawner serve` daemon, the inference broker)
//! sets up for itself at start, rather than keep what its starter had: a broker is often
//! started by a request's agent-exec, under that request's small limits.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raise the soft limit on `resource` to its hard limit; returns the soft limit now in
/// force (the old one when raising failed, with the error; 0 when it cannot even be read,
/// which getrlimit(2) does only for an invalid resource).
pub fn raise_soft_limit(resource: Resource) -> (u64, Option<nix::Error>) {
    match getrlimit(resource) {
        Ok((soft, hard)) if soft < hard => match setrlimit(resource, hard, hard) {
            Ok(()) => (hard, None),
            Err(e) => (soft, Some(e)),
        },
        Ok((soft, _)) => (soft, None),
        Err(e) => (0, Some(e)),
    }
}
