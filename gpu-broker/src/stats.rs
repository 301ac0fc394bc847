//! What `status` reports: per model, the provider it runs on, load time, requests served,
//! failures, batches, and latency (queue + run, and run alone) percentiles over the last
//! requests.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

use crate::runtime::{Failure, Loaded};

/// Latencies kept per model for the percentiles.
const WINDOW: usize = 1024;

#[derive(Default)]
struct ModelStats {
    provider: Option<&'static str>,
    fallback: Option<String>,
    load_error: Option<String>,
    load_ms: Option<f64>,
    served: u64,
    failed: u64,
    batches: u64,
    largest_batch: usize,
    total_us: VecDeque<u64>,
    run_us: VecDeque<u64>,
}

/// Counters for `status`, shared by the device threads and the connections.
#[derive(Default)]
pub struct Stats {
    models: BTreeMap<String, ModelStats>,
}

fn push(window: &mut VecDeque<u64>, v: u64) {
    if window.len() == WINDOW {
        window.pop_front();
    }
    window.push_back(v);
}

fn percentile(window: &VecDeque<u64>, p: f64) -> Option<u64> {
    let mut v: Vec<u64> = window.iter().copied().collect();
    v.sort_unstable();
    let rank = ((p / 100.0) * (v.len().checked_sub(1)? as f64)).round() as usize;
    v.get(rank).copied()
}

impl Stats {
    /// A model was loaded, or failed to.
    pub fn loaded(&mut self, model: &str, result: &Result<Loaded, Failure>) {
        let m = self.models.entry(model.to_owned()).or_default();
        match result {
            Ok(l) => {
                m.provider = Some(l.provider);
                m.fallback = l.fallback.clone();
                m.load_ms = Some(l.load_ms);
                m.load_error = None;
            }
            Err(f) => m.load_error = Some(f.message.clone()),
        }
    }

    /// A request was answered after `total_us` (queue + run) of which `run_us` running.
    pub fn served(&mut self, model: &str, total_us: u64, run_us: u64, ok: bool) {
        let m = self.models.entry(model.to_owned()).or_default();
        if ok {
            m.served += 1;
            push(&mut m.total_us, total_us);
            push(&mut m.run_us, run_us);
        } else {
            m.failed += 1;
        }
    }

    /// A run of `size` stacked requests.
    pub fn batch(&mut self, model: &str, size: usize) {
        let m = self.models.entry(model.to_owned()).or_default();
        m.batches += 1;
        m.largest_batch = m.largest_batch.max(size);
    }

    /// Requests served, all models together.
    pub fn served_total(&self) -> u64 {
        self.models.values().map(|m| m.served).sum()
    }

    /// Per-model figures as JSON.
    pub fn models_json(&self) -> Value {
        self.models
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    json!({
                        "loaded": m.provider.is_some(),
                        "provider": m.provider,
                        "fallback": m.fallback,
                        "load_error": m.load_error,
                        "load_ms": m.load_ms,
                        "served": m.served,
                        "failed": m.failed,
                        "batches": m.batches,
                        "largest_batch": m.largest_batch,
                        "latency_us": {
                            "p50": percentile(&m.total_us, 50.0),
                            "p95": percentile(&m.total_us, 95.0),
                            "run_p50": percentile(&m.run_us, 50.0),
                        },
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}
