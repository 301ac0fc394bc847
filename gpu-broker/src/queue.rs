//! One ordered queue per device, served by one thread that owns the device's sessions, so
//! work on a device runs one job at a time in arrival order. A model with batching on
//! stacks the compatible requests that arrive within its `max_delay_us` (up to
//! `max_batch`) along the first dimension into one run, and splits the outputs back;
//! requests for other models keep their place in the queue meanwhile.
//!
//! A generation (`chat`) is a series of steps (a chunk of the prompt, then one token at a
//! time), each its own job in the same queue: an inference that arrives while a long
//! answer is being written waits for one step at most, never for the whole answer, and
//! concurrent generations take turns token by token.
//!
//! The fast path: a request that finds its device idle (nothing queued, nobody running)
//! for a model without batching runs at once on the connection's own thread, under the
//! device's lock; it is first in line, so the order is the same, and it saves the two
//! thread hand-offs that are most of a small model's round trip.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_client::{ErrorCode, Tensor};

use crate::repo::Repo;
use crate::runtime::{self, Failure, Loaded};
use crate::stats::Stats;

/// The answer to one job.
pub type Reply = Result<Vec<Tensor>, Failure>;

/// A step of work that runs with the model loaded (or the reason it could not be), on
/// its device, in queue order; it sends its own answer.
pub type Step = Box<dyn FnOnce(Result<&mut Loaded, Failure>) + Send>;

/// What a job asks of its device.
pub enum Work {
    /// Run the model on these inputs, not yet checked, and answer on `reply`.
    Infer {
        /// The inputs.
        inputs: Vec<Tensor>,
        /// Where the answer goes.
        reply: Sender<Reply>,
    },
    /// One step of a generation.
    Step(Step),
}

/// One request waiting for its device.
pub struct Job {
    /// The model's name.
    pub model: String,
    /// What to do.
    pub work: Work,
    /// When it was queued.
    pub queued: Instant,
}

impl Job {
    /// An inference job.
    pub fn infer(model: String, inputs: Vec<Tensor>, reply: Sender<Reply>) -> Job {
        Job {
            model,
            work: Work::Infer { inputs, reply },
            queued: Instant::now(),
        }
    }

    /// Answer the job with a failure, without running it.
    fn fail(self, failure: Failure) {
        match self.work {
            Work::Infer { reply, .. } => {
                let _ = reply.send(Err(failure));
            }
            Work::Step(step) => step(Err(failure)),
        }
    }
}

/// The sending side of a device's queue.
#[derive(Clone)]
pub struct Device {
    /// "cpu" or "cuda".
    pub name: &'static str,
    sender: Sender<Job>,
    depth: Arc<AtomicUsize>,
    core: Arc<Mutex<Core>>,
}

impl Device {
    /// Start the device's thread.
    pub fn start(name: &'static str, repo: Repo, stats: Arc<Mutex<Stats>>) -> Device {
        let (sender, receiver) = mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let core = Arc::new(Mutex::new(Core {
            repo,
            stats,
            models: HashMap::new(),
        }));
        let worker = Worker {
            core: core.clone(),
            receiver,
            pending: VecDeque::new(),
            depth: depth.clone(),
        };
        std::thread::Builder::new()
            .name(format!("device-{name}"))
            .spawn(move || worker.serve())
            .expect("cannot start a device thread");
        Device {
            name,
            sender,
            depth,
            core,
        }
    }

    /// Queue a job; its answer arrives on the job's reply channel. Runs it at once on
    /// this thread when the device is idle and the model does not batch (the fast path).
    pub fn submit(&self, job: Job) {
        let job = match self.run_if_idle(job) {
            None => return,
            Some(job) => job,
        };
        self.depth.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(job)) = self.sender.send(job) {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            job.fail(Failure::new(
                ErrorCode::ShuttingDown,
                "the broker is stopping",
            ));
        }
    }

    /// Run `f` with `model` loaded, on this device in queue order, and wait for its
    /// result.
    pub fn call<T: Send + 'static>(
        &self,
        model: &str,
        f: impl FnOnce(Result<&mut Loaded, Failure>) -> T + Send + 'static,
    ) -> Result<T, Failure> {
        let (reply, answer) = mpsc::channel();
        self.submit(Job {
            model: model.to_owned(),
            work: Work::Step(Box::new(move |loaded| {
                let _ = reply.send(f(loaded));
            })),
            queued: Instant::now(),
        });
        answer
            .recv()
            .map_err(|_| Failure::new(ErrorCode::ShuttingDown, "the broker is stopping"))
    }

    /// The fast path; gives the job back when it must be queued.
    fn run_if_idle(&self, job: Job) -> Option<Job> {
        if self.depth.load(Ordering::SeqCst) > 0 {
            return Some(job);
        }
        let Ok(mut core) = self.core.try_lock() else {
            return Some(job);
        };
        // Queued while the lock was taken: they were first.
        if self.depth.load(Ordering::SeqCst) > 0 {
            return Some(job);
        }
        match core.model(&job.model) {
            Ok(loaded) if loaded.spec.max_batch() == 1 => {}
            _ => return Some(job),
        }
        core.start(job);
        None
    }

    /// Jobs queued and not yet started.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Load `model` now (warm-up, before the broker serves); says whether it worked.
    pub fn warm_up(&self, model: &str) -> Result<(), Failure> {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        match core.model(model) {
            Ok(_) => Ok(()),
            Err(f) => Err(f.clone()),
        }
    }
}

/// An inference job whose inputs passed their checks.
struct Inference {
    reply: Sender<Reply>,
    queued: Instant,
}

/// What running needs: the device's sessions. Behind the device's lock, so one job runs
/// at a time, on the device thread or on the fast path.
struct Core {
    repo: Repo,
    stats: Arc<Mutex<Stats>>,
    /// Loaded models, or why one could not be loaded (a restart of the broker retries).
    models: HashMap<String, Result<Loaded, Failure>>,
}

/// The device thread's side of the queue.
struct Worker {
    core: Arc<Mutex<Core>>,
    receiver: Receiver<Job>,
    /// Jobs taken off the channel while a batch was being gathered, in arrival order.
    pending: VecDeque<Job>,
    depth: Arc<AtomicUsize>,
}

/// Stack the inputs of `jobs` along the first dimension.
fn stack(jobs: &[(Inference, Vec<Tensor>)]) -> Vec<Tensor> {
    let first = &jobs[0].1;
    (0..first.len())
        .map(|i| {
            let mut t = first[i].clone();
            t.shape[0] = jobs.iter().map(|(_, ins)| ins[i].shape[0]).sum();
            t.data = jobs
                .iter()
                .flat_map(|(_, ins)| ins[i].data.iter().copied())
                .collect();
            t
        })
        .collect()
}

/// Split batched `outputs` back into one set per job, by each job's first dimension.
fn split(outputs: &[Tensor], sizes: &[u64]) -> Vec<Vec<Tensor>> {
    let total: u64 = sizes.iter().sum();
    let mut starts = vec![0u64; outputs.len()];
    sizes
        .iter()
        .map(|&rows| {
            outputs
                .iter()
                .zip(starts.iter_mut())
                .map(|(o, start)| {
                    let row_bytes = o.data.len() as u64 / total.max(1);
                    let from = (*start * row_bytes) as usize;
                    let to = ((*start + rows) * row_bytes) as usize;
                    *start += rows;
                    let mut t = o.clone();
                    t.shape[0] = rows;
                    t.data = o.data[from..to].to_vec();
                    t
                })
                .collect()
        })
        .collect()
}

impl Core {
    fn model(&mut self, name: &str) -> &mut Result<Loaded, Failure> {
        if !self.models.contains_key(name) {
            let loaded = self
                .repo
                .spec(name)
                .map_err(|e| match e {
                    crate::repo::RepoError::Unknown { .. } => {
                        Failure::new(ErrorCode::UnknownModel, e.to_string())
                    }
                    crate::repo::RepoError::Invalid { .. } => {
                        Failure::new(ErrorCode::LoadFailed, e.to_string())
                    }
                })
                .and_then(runtime::load);
            if let Ok(l) = &loaded {
                tracing::info!(
                    model = name,
                    provider = l.provider,
                    load_ms = l.load_ms,
                    "model loaded"
                );
                if let Some(why) = &l.fallback {
                    tracing::warn!(model = name, "running on the CPU: {why}");
                }
            }
            self.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .loaded(name, &loaded);
            self.models.insert(name.to_owned(), loaded);
        }
        self.models.get_mut(name).expect("inserted above")
    }

    /// Run a job that does not batch: a step, or an inference on its own.
    fn start(&mut self, job: Job) {
        let model = job.model.clone();
        if let Some(checked) = self.checked(job) {
            self.run(&model, vec![checked]);
        }
    }

    /// Check an inference job's inputs; answer it at once when they are wrong (or its
    /// model failed). A step is run here, and gives None.
    fn checked(&mut self, job: Job) -> Option<(Inference, Vec<Tensor>)> {
        let (inputs, reply) = match job.work {
            Work::Step(step) => {
                match self.model(&job.model) {
                    Ok(loaded) => step(Ok(loaded)),
                    Err(f) => step(Err(f.clone())),
                }
                return None;
            }
            Work::Infer { inputs, reply } => (inputs, reply),
        };
        let loaded = match self.model(&job.model) {
            Ok(loaded) => loaded,
            Err(f) => {
                let _ = reply.send(Err(f.clone()));
                return None;
            }
        };
        if loaded.generator.is_some() {
            let _ = reply.send(Err(Failure::new(
                ErrorCode::InvalidInput,
                format!(
                    "model {:?} is a generative model: call it with a chat (the llm interface), not infer",
                    job.model
                ),
            )));
            return None;
        }
        let inference = Inference {
            reply,
            queued: job.queued,
        };
        match runtime::check_inputs(&loaded.spec, inputs) {
            Ok(inputs) => Some((inference, inputs)),
            Err(f) => {
                let _ = inference.reply.send(Err(f));
                None
            }
        }
    }

    fn run(&mut self, model: &str, batch: Vec<(Inference, Vec<Tensor>)>) {
        let started = Instant::now();
        let Ok(loaded) = self.model(model) else {
            return;
        };
        let result = if batch.len() == 1 {
            loaded.run(&batch[0].1).map(|o| vec![o])
        } else {
            let sizes: Vec<u64> = batch.iter().map(|(_, ins)| ins[0].shape[0]).collect();
            loaded.run(&stack(&batch)).map(|o| split(&o, &sizes))
        };
        let run_us = started.elapsed().as_micros() as u64;
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.batch(model, batch.len());
        match result {
            Ok(per_job) => {
                for ((job, _), outputs) in batch.into_iter().zip(per_job) {
                    stats.served(model, job.queued.elapsed().as_micros() as u64, run_us, true);
                    let _ = job.reply.send(Ok(outputs));
                }
            }
            Err(f) => {
                for (job, _) in batch {
                    stats.served(
                        model,
                        job.queued.elapsed().as_micros() as u64,
                        run_us,
                        false,
                    );
                    let _ = job.reply.send(Err(f.clone()));
                }
            }
        }
    }
}

impl Worker {
    /// The next job; still counted in the depth until the caller holds the device's lock,
    /// so that no fast-path request can overtake it.
    fn next(&mut self) -> Option<Job> {
        match self.pending.pop_front() {
            Some(job) => Some(job),
            None => self.receiver.recv().ok(),
        }
    }

    fn serve(mut self) {
        let core = self.core.clone();
        while let Some(job) = self.next() {
            let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
            self.depth.fetch_sub(1, Ordering::SeqCst);
            let model = job.model.clone();
            let (max_batch, max_delay) = match core.model(&model) {
                Err(f) => {
                    job.fail(f.clone());
                    continue;
                }
                Ok(loaded) => (
                    loaded.spec.max_batch(),
                    Duration::from_micros(loaded.spec.batching.map_or(0, |b| b.max_delay_us)),
                ),
            };
            let Some(first) = core.checked(job) else {
                continue;
            };
            let mut batch = vec![first];
            if max_batch > 1 {
                self.gather(&mut core, &model, &mut batch, max_batch, max_delay);
            }
            core.run(&model, batch);
        }
    }

    /// Add to `batch` the jobs for `model` with the same non-batch dimensions that arrive
    /// before `max_delay` has passed, up to `max_batch`; others wait in `pending`.
    fn gather(
        &mut self,
        core: &mut Core,
        model: &str,
        batch: &mut Vec<(Inference, Vec<Tensor>)>,
        max_batch: usize,
        max_delay: Duration,
    ) {
        let deadline = Instant::now() + max_delay;
        // Jobs already waiting at the front of the queue for the same model come first.
        while batch.len() < max_batch && self.pending.front().is_some_and(|j| j.model == model) {
            let Some(job) = self.pending.pop_front() else {
                break;
            };
            self.depth.fetch_sub(1, Ordering::SeqCst);
            join(core, model, batch, job);
        }
        while batch.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(job) if job.model == model && self.pending.is_empty() => {
                    self.depth.fetch_sub(1, Ordering::SeqCst);
                    join(core, model, batch, job);
                }
                Ok(job) => self.pending.push_back(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
    }
}

/// Add `job` to `batch` when its shapes fit; otherwise run it on its own first (it arrived
/// after the batch's first job, so order is kept within the model).
fn join(core: &mut Core, model: &str, batch: &mut Vec<(Inference, Vec<Tensor>)>, job: Job) {
    if let Some((job, inputs)) = core.checked(job) {
        let fits = batch[0].1.len() == inputs.len()
            && batch[0]
                .1
                .iter()
                .zip(&inputs)
                .all(|(x, y)| x.shape[1..] == y.shape[1..]);
        if fits {
            batch.push((job, inputs));
        } else {
            core.run(model, vec![(job, inputs)]);
        }
    }
}
