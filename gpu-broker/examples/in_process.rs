//! The in-process reference for the broker benchmark: the same model, the same input and
//! the same ONNX Runtime library, called directly with `ort` in this process, no socket.
//!
//! `in_process <models dir> <model> <features> <runs>` prints one JSON array of each
//! run's time in microseconds.

use std::time::Instant;

use broker_client::Tensor;
use gpu_broker::{repo::Repo, runtime};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [models, model, features, runs] = args.as_slice() else {
        anyhow::bail!("usage: in_process <models dir> <model> <features> <runs>");
    };
    let features: usize = features.parse()?;
    let runs: usize = runs.parse()?;
    // SAFETY: before any thread exists.
    unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    runtime::init(&runtime::find_library(None).map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    let spec = Repo::new(models).spec(model)?;
    let mut loaded = runtime::load(spec).map_err(|f| anyhow::anyhow!(f.message))?;
    let values: Vec<f32> = (0..features).map(|i| i as f32 / features as f32).collect();
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + runs / 10 {
        let input = Tensor::from_f32("features", vec![1, features as u64], &values);
        let started = Instant::now();
        let inputs = runtime::check_inputs(&loaded.spec, vec![input])
            .map_err(|f| anyhow::anyhow!(f.message))?;
        loaded
            .run(&inputs)
            .map_err(|f| anyhow::anyhow!(f.message))?;
        // The first tenth warms up.
        if i >= runs / 10 {
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    println!("{}", serde_json::to_string(&times)?);
    Ok(())
}
