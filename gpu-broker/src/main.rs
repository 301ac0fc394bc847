//! gpu-broker: serve ONNX Runtime inference to agents over a local socket. Usually started
//! on demand by the first agent that needs it (see `broker-client`); exits after an idle
//! time-to-live unless `--persistent`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use nix::fcntl::{Flock, FlockArg};

use gpu_broker::{Broker, repo::Repo, runtime};

/// Serve ONNX Runtime inference over a local socket.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The runtime's home (default: $SPAWNER_HOME, else the XDG data home).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Socket to listen on (default: the home's broker socket).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The model repository (default: <home>/models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// libonnxruntime.so (default: $ORT_DYLIB_PATH, else beside this executable).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Exit after this many seconds with no client.
    #[arg(long, default_value_t = 300)]
    idle_ttl: u64,
    /// Never exit for idleness.
    #[arg(long)]
    persistent: bool,
    /// Seconds a client may take to send one frame (a stalled client is closed).
    #[arg(long, default_value_t = gpu_broker::FRAME_DEADLINE.as_secs())]
    client_timeout: u64,
}

fn main() -> std::process::ExitCode {
    // SAFETY: the first thing main does, before any thread exists. The PyPI build of ONNX
    // Runtime otherwise writes a device id under ~/.cache and tries to send telemetry.
    unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    keep_large_buffers_returnable();
    // Tool servers over HTTPS (reqwest, through rmcp) use rustls's ring provider, the one
    // ureq uses for the LLM providers. Fails only if one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // ONNX Runtime logs every session's options at info: keep the log to what matters.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The starter reads this line from our standard output.
            println!("error: {e:#}");
            eprintln!("gpu-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serve allocations of 64 KiB and more (a generation's KV cache: 768 bytes a position per
/// layer and kind) from their own mappings, so that a finished or abandoned sequence gives
/// its memory back to the system rather than leave glibc's heaps grown for good.
fn keep_large_buffers_returnable() {
    // SAFETY: mallopt only sets a tunable of the allocator; called before other threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 64 << 10);
    }
}

/// How long the accept loop waits after a failed accept (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A long-lived service sets its own limits rather than keep those of whoever started it
/// (often a request's agent-exec, with a CPU-time backstop of a few seconds and a small
/// descriptor limit): the soft CPU and open-file limits are raised to their hard limits.
/// Transparent huge pages are allowed again as the system allows them: the musl builds of
/// spawner and agent-exec turn them off for themselves (mimalloc, built for processes that
/// live milliseconds), and the kernel passes that setting on to every process they start.
fn own_limits() {
    use nix::sys::resource::Resource;
    for resource in [Resource::RLIMIT_CPU, Resource::RLIMIT_NOFILE] {
        if let (_, Some(e)) = agent_contract::service::raise_soft_limit(resource) {
            tracing::warn!("cannot raise {resource:?} to its hard limit: {e}");
        }
    }
    if let Err(e) = nix::sys::prctl::set_thp_disable(false) {
        tracing::warn!("cannot allow transparent huge pages again: {e}");
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    own_limits();
    let home = agent_contract::Home::resolve(args.home.clone())?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| home.broker_socket_path());
    let models = args.models.clone().unwrap_or_else(|| home.models_dir());
    let dir = socket
        .parent()
        .context("the socket path has no directory")?;
    if let Some(old) = home
        .prepare_socket_dir(&socket)
        .with_context(|| format!("cannot create {}", dir.display()))?
    {
        tracing::warn!("{}", agent_contract::home::made_private_notice(dir, old));
    }

    // One broker per socket for as long as it lives. A broker that is just exiting for
    // idleness still holds it for a moment: wait a little rather than fail.
    let lock_path = socket.with_extension("lock");
    let mut lock_file = agent_contract::home::open_private_append(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let mut tries = 0;
    let _lock = loop {
        match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((file, _)) if tries < 200 => {
                lock_file = file;
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => bail!("another gpu-broker is serving {}", socket.display()),
        }
    };

    let library = runtime::find_library(args.ort_lib.as_deref()).map_err(anyhow::Error::msg)?;
    runtime::init(&library).map_err(anyhow::Error::msg)?;

    let name = socket.as_path().to_fs_name::<GenericFilePath>()?;
    let listener = ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .try_overwrite(true)
        .create_sync()
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let idle_ttl = (!args.persistent).then(|| Duration::from_secs(args.idle_ttl));
    let broker = Arc::new(
        Broker::new(Repo::new(&models), library.display().to_string(), idle_ttl)
            .with_home(home.root().to_owned())
            .with_frame_deadline(Duration::from_secs(args.client_timeout.max(1))),
    );
    for failure in broker.warm_up() {
        tracing::warn!("warm-up: {failure}");
    }

    {
        let broker = broker.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => broker.accept(stream),
                        // Out of descriptors (EMFILE, ENFILE) or memory: the pending
                        // connection stays queued, so accepting again at once would spin.
                        // Back off and let connections in flight finish.
                        Err(e) => {
                            tracing::warn!("accept failed: {e}; backing off");
                            std::thread::sleep(ACCEPT_BACKOFF);
                        }
                    }
                }
            })?;
    }
    tracing::info!(socket = %socket.display(), models = %models.display(), library = %library.display(), "ready");
    println!("ready {}", std::process::id());
    std::io::stdout().flush()?;
    // Nothing more goes to the starter's pipe (it may be closed by now).
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;

    match idle_ttl {
        None => loop {
            std::thread::park();
        },
        Some(ttl) => loop {
            std::thread::sleep(Duration::from_millis(200).min(ttl));
            if broker.idle_for().is_some_and(|idle| idle >= ttl) {
                tracing::info!("idle for {ttl:?}: exiting");
                let _ = std::fs::remove_file(&socket);
                return Ok(());
            }
            // The home (or just the socket) was removed: nobody can reach this broker.
            if !socket.exists() {
                tracing::warn!("{} is gone: exiting", socket.display());
                return Ok(());
            }
        },
    }
}
