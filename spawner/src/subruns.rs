//! Sub-runs, the spawner's side: a parent run's agent-exec asks for runs of other agents
//! (`runs.start`, `runs.join` in `wit/agent.wit`), and the spawner that runs the parent
//! runs each child as it runs any request ([`crate::request::execute`]: a fresh
//! agent-exec under the spawn policy, its own record, its retries), linked to its parent.
//!
//! # The channel
//!
//! One abstract Unix socket per parent attempt, named in its envelope
//! ([`agent_contract::subruns`] has the wire). The name carries random bits, and a peer
//! is accepted only when it runs as this user and is this process's own child (an
//! agent-exec this spawner started); the first such peer is the parent, and no other is
//! accepted after it.
//!
//! # Admission, and why parents cannot deadlock their children
//!
//! A child waits, unstarted, for a slot of its parent's own gate (`[runs] parallel`), then
//! for one of the shared gate the parent itself passed (the daemon's `--max-running`, or
//! the command line's, one per `spawner run` process, `--max-running` there): no more
//! agent-execs run than the gates allow, however many children are asked for. A parent
//! that waits in `join` lends its shared slot to the children for as long as it waits
//! ([`crate::admission::Admission::lend`]), and takes one back before it goes on. So a
//! run holding a slot is never waiting on another run: every slot is held by a run that
//! makes progress, its deadline bounds it, and each waiting child is admitted when one
//! ends. Parents waiting on children, however deeply nested, hold no slot.
//!
//! The shared gates are backed by the home's slot files
//! ([`crate::admission::HomeSlots`]), so they bound the runs of every process of the home
//! together. The argument holds across processes: a run waiting for another process's
//! slot holds none of its own gate's home slots while it waits (it is counted, not
//! locked), and every home slot is held by a run that makes progress or by a parent that
//! lends it when it joins.
//!
//! # Determinism
//!
//! Children are numbered in the order the parent starts them, and admitted as slots
//! free (not necessarily in that order); each join answers for the child it names,
//! whichever ended first. A child's run id is derived from its parent's
//! ([`child_run_id`]), so a resumed parent that starts its children again is handed the
//! record (and kept answer) of each one that ended, and a child that failed in a way that
//! may pass is resumed, not started afresh.
//!
//! # Ends
//!
//! When the parent's agent-exec ends (or is killed, or its run cancelled), children still
//! running are cancelled (their process groups killed, their runs recorded as such), and
//! children still waiting for a slot never start. The parent's attempt returns once every
//! child has ended.

use std::io::BufReader;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use agent_contract::envelope::{JournalMode, MAX_INPUT_BYTES};
use agent_contract::subruns::{
    Answer, Call, Refusal, SubRunChannel, child_run_id, read_message, write_message,
};
use agent_contract::{Home, Manifest, Outcome, OutputFormat, PhaseTimings, RunReport};
use memory_store::Store;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::admission::Admission;
use crate::cancel::{CancelToken, Stop, StopReason};
use crate::executor::Local;
use crate::request::Request;

/// A parent attempt's channel, open for its children.
pub struct Server {
    listener: UnixListener,
    socket: String,
    /// Cancelled when the parent has ended: stop serving, and cancel the children.
    ended: CancelToken,
    /// Each started child's own token (which `runs.cancel` of the child cancels too),
    /// cancelled when the parent has ended.
    running: Mutex<Vec<Arc<CancelToken>>>,
}

/// The parent a server runs children for.
pub struct Parent<'a> {
    /// The home.
    pub home: &'a Home,
    /// The parent's request.
    pub request: &'a Request,
    /// The parent's manifest (its `[runs]`).
    pub manifest: &'a Manifest,
    /// What the parent's caller provides: the gate whose slot the parent holds, where
    /// log lines go, where runs in flight are listed. The children run with the same, on
    /// a fresh agent-exec each.
    pub runner: crate::request::Runner<'a>,
}

/// One child, as its parent's server keeps it.
struct Child {
    /// How it ended, once it has.
    report: Option<RunReport>,
}

/// The children of one parent, shared by the server and the children's threads.
struct Children {
    list: Mutex<Vec<Child>>,
    changed: Condvar,
}

impl Server {
    /// Open a channel for the sub-runs of run `run_id`.
    pub fn open(run_id: &str) -> std::io::Result<Server> {
        let mut random = [0u8; 12];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        // Abstract names are at most 107 bytes: a deep run id keeps its tail.
        let tail = run_id
            .get(run_id.len().saturating_sub(60)..)
            .unwrap_or(run_id);
        let socket = format!(
            "spawner-runs/{}/{}/{tail}",
            nix::unistd::getuid(),
            agent_contract::manifest::to_hex(&random)
        );
        let listener =
            UnixListener::bind_addr(&SocketAddr::from_abstract_name(socket.as_bytes())?)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            socket,
            ended: CancelToken::new()?,
            running: Mutex::new(Vec::new()),
        })
    }

    /// What the parent's envelope says.
    pub fn channel(&self) -> SubRunChannel {
        SubRunChannel {
            socket: self.socket.clone(),
        }
    }

    /// The parent has ended: stop serving and cancel its children.
    pub fn end(&self, shared: Option<&Admission>, local: Option<&Admission>) {
        self.ended.cancel(StopReason::Cancelled);
        for child in self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            child.cancel(StopReason::Cancelled);
        }
        for gate in shared.into_iter().chain(local) {
            gate.wake_waiters();
        }
    }

    fn ending(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Serve the parent's calls until [`Server::end`], running each child in a thread of
    /// its own (gated by `local`, the parent's `[runs] parallel`), and wait for every
    /// child to end.
    pub fn serve(&self, parent: &Parent<'_>, local: &Admission) {
        let children = Children {
            list: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        };
        std::thread::scope(|scope| {
            let Some(conn) = self.accept() else {
                return;
            };
            let Ok(reader) = conn.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(reader);
            let mut writer = conn;
            loop {
                if !self.readable(&writer) {
                    break;
                }
                let call = match read_message::<Call>(&mut reader) {
                    Ok(Some(call)) => call,
                    // The parent closed the channel, died, or wrote nonsense: it gets no
                    // more answers, and its children are cancelled when it ends.
                    Ok(None) | Err(_) => break,
                };
                let answer = match call {
                    Call::Start {
                        child,
                        agent,
                        input_base64,
                    } => match self.admit(parent, &children, child, &agent, &input_base64) {
                        Ok((run_id, input)) => {
                            let children = &children;
                            scope.spawn(move || {
                                let report = self.run_child(parent, local, &run_id, &agent, input);
                                let mut list =
                                    children.list.lock().unwrap_or_else(PoisonError::into_inner);
                                if let Some(c) = list.get_mut(child as usize) {
                                    c.report = Some(report);
                                }
                                drop(list);
                                children.changed.notify_all();
                            });
                            Answer::Started {
                                child,
                                run_id: child_run_id(&parent.request.run_id, child),
                            }
                        }
                        Err((why, message)) => Answer::Refused { why, message },
                    },
                    Call::Join { child } => self.join(parent, &children, child),
                };
                if write_message(&mut writer, &answer).is_err() {
                    break;
                }
            }
            // The parent is done with the channel; its children end with it.
            while !self.ending() {
                poll_again(&mut [PollFd::new(self.ended.as_fd(), PollFlags::POLLIN)]);
            }
            children.changed.notify_all();
        });
    }

    /// The parent's connection: the first peer that is this user's and this process's
    /// child. `None` once the parent has ended.
    fn accept(&self) -> Option<UnixStream> {
        loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.ended.as_fd(), PollFlags::POLLIN),
            ];
            if !poll_again(&mut fds) || self.ending() {
                return None;
            }
            let Ok((stream, _)) = self.listener.accept() else {
                continue;
            };
            if is_own_child(&stream) && stream.set_nonblocking(false).is_ok() {
                return Some(stream);
            }
        }
    }

    /// Wait until the parent has sent something (or hung up): false once it has ended.
    fn readable(&self, conn: &UnixStream) -> bool {
        let mut fds = [
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.ended.as_fd(), PollFlags::POLLIN),
        ];
        poll_again(&mut fds) && !self.ending()
    }

    /// Check a start against the parent's `[runs]` and number it: the child's run id and
    /// input.
    fn admit(
        &self,
        parent: &Parent<'_>,
        children: &Children,
        child: u32,
        agent: &str,
        input_base64: &str,
    ) -> Result<(String, Vec<u8>), (Refusal, String)> {
        use base64::Engine as _;
        let mut list = children.list.lock().unwrap_or_else(PoisonError::into_inner);
        if child as usize != list.len() {
            return Err((
                Refusal::InvalidInput,
                format!(
                    "sub-run {child} is out of order: the next is {}",
                    list.len()
                ),
            ));
        }
        if let Some(why) = parent
            .manifest
            .runs
            .refuses(&parent.request.run_id, child, agent)
        {
            return Err((Refusal::NotAllowed, why));
        }
        let input = base64::engine::general_purpose::STANDARD
            .decode(input_base64)
            .map_err(|e| {
                (
                    Refusal::InvalidInput,
                    format!("the input is not base64: {e}"),
                )
            })?;
        if input.len() as u64 > MAX_INPUT_BYTES {
            return Err((
                Refusal::InvalidInput,
                format!("the input is over the limit of {MAX_INPUT_BYTES} bytes"),
            ));
        }
        list.push(Child { report: None });
        Ok((child_run_id(&parent.request.run_id, child), input))
    }

    /// Wait for child `child` to end, the parent's shared slot lent meanwhile.
    fn join(&self, parent: &Parent<'_>, children: &Children, child: u32) -> Answer {
        let mut list = children.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.get(child as usize).is_none() {
            return Answer::Refused {
                why: Refusal::InvalidInput,
                message: format!("no sub-run has number {child}: {} started", list.len()),
            };
        }
        let lent = parent.runner.shared.map(Admission::lend);
        while list[child as usize].report.is_none() && !self.ending() {
            list = children
                .changed
                .wait(list)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let report = list[child as usize].report.clone();
        drop(list);
        if let Some(lent) = lent {
            lent.take_back();
        }
        match report {
            Some(report) => Answer::Joined {
                child,
                report: Box::new(report),
            },
            None => Answer::Refused {
                why: Refusal::Unavailable,
                message: "the run ended before its sub-run did".into(),
            },
        }
    }

    /// Run one child, once its turn comes: its report.
    fn run_child(
        &self,
        parent: &Parent<'_>,
        local: &Admission,
        run_id: &str,
        agent: &str,
        input: Vec<u8>,
    ) -> RunReport {
        let failed = |status: Outcome, error: String| {
            RunReport::failed(
                run_id.to_owned(),
                agent.to_owned(),
                status,
                error,
                PhaseTimings::default(),
            )
        };
        let cancelled = || failed(Outcome::Killed, "its parent ended before it started".into());
        let give_up = || self.ending();
        let Some(_slot) = local.enter_waiting_unless(&give_up) else {
            return cancelled();
        };
        // Held until the child ends; the child passes the same gate on to its own sub-runs.
        let _shared_slot = match parent.runner.shared {
            Some(gate) => match gate.enter_waiting_unless(&give_up) {
                Some(slot) => Some(slot),
                None => return cancelled(),
            },
            None => None,
        };
        let (journal, attempt) = match earlier_attempt(parent.home, run_id) {
            Ok(Earlier::None) => (JournalMode::Record, 1),
            Ok(Earlier::Ended(report)) => return *report,
            Ok(Earlier::Failed { attempt, durable }) => (
                if durable {
                    JournalMode::Resume
                } else {
                    JournalMode::Record
                },
                attempt.saturating_add(1),
            ),
            Err(e) => return failed(Outcome::Store, format!("{e:#}")),
        };
        let p = parent.request;
        let request = Request {
            run_id: run_id.to_owned(),
            agent: agent.to_owned(),
            input,
            timeout: None,
            output: OutputFormat::Json,
            log_format: p.log_format,
            log_level: p.log_level.clone(),
            work_dir: p.work_dir.clone(),
            hook: None,
            capture_stdout: true,
            stream_llm: false,
            journal,
            attempt,
            parent_run_id: Some(p.run_id.clone()),
        };
        // Its own token, cancelled when the parent ends or by whoever finds it listed.
        let Ok(token) = CancelToken::new().map(Arc::new) else {
            return failed(Outcome::Internal, "cannot create its cancel token".into());
        };
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock `end` takes to cancel the list: none is missed.
            if self.ending() {
                return cancelled();
            }
            running.push(Arc::clone(&token));
        }
        let active = parent.runner.active;
        if let Some(table) = active
            && !table.enter(run_id, agent, Some(&p.run_id), Arc::clone(&token))
        {
            return failed(
                Outcome::Usage,
                format!("run {run_id} is in flight already; wait for it to end"),
            );
        }
        let finished = crate::request::execute(
            parent.home,
            &request,
            Stop::token(&token),
            crate::request::Runner {
                executor: &Local::FRESH,
                reap_after_answer: false,
                ..parent.runner
            },
        );
        if let Some(table) = active {
            table.leave(run_id);
        }
        match finished.and_then(crate::request::Finished::into_report) {
            Ok(report) => report,
            Err(e) => {
                let outcome = crate::exit::outcome(&e);
                failed(outcome, format!("{e:#}"))
            }
        }
    }
}

/// What the store says of an earlier attempt at a child.
enum Earlier {
    /// It never ran.
    None,
    /// It ended for good: its report, its answer from the record.
    Ended(Box<RunReport>),
    /// It failed in a way that may pass: run it again, as attempt `attempt + 1`.
    Failed { attempt: u32, durable: bool },
}

fn earlier_attempt(home: &Home, run_id: &str) -> anyhow::Result<Earlier> {
    let store = Store::open(&home.store_path())?;
    let Some(record) = store.run(run_id)? else {
        return Ok(Earlier::None);
    };
    if record.status.may_pass() {
        let durable = home
            .agent_manifest(&record.agent)
            .ok()
            .and_then(|path| Manifest::load(&path).ok())
            .is_some_and(|m| m.durable.journal);
        return Ok(Earlier::Failed {
            attempt: record.attempt,
            durable,
        });
    }
    let output = store.sub_run_output(run_id)?.unwrap_or_default();
    Ok(Earlier::Ended(Box::new(record.into_report(output))))
}

/// Poll `fds` until one is ready, again when a signal interrupts it: false on an error.
fn poll_again(fds: &mut [PollFd<'_>]) -> bool {
    loop {
        match poll(fds, PollTimeout::NONE) {
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Whether the peer runs as this user and is this process's child.
fn is_own_child(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let Ok(cred) = getsockopt(stream, PeerCredentials) else {
        return false;
    };
    if cred.uid() != nix::unistd::getuid().as_raw() {
        return false;
    }
    let parent_of_peer = std::fs::read_to_string(format!("/proc/{}/stat", cred.pid()))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        });
    parent_of_peer == Some(std::process::id())
}
