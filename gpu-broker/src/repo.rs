//! The model repository: `<models>/<name>/model.toml` beside the `.onnx` file it names.
//!
//! ```toml
//! name = "scorer"
//! file = "scorer.onnx"
//! providers = ["cuda", "cpu"]   # preference order; "cpu" is always the last resort
//! require_gpu = false           # true: fail rather than run on the CPU
//! warmup = false                # true: load when the broker starts, not on first use
//!
//! [[inputs]]
//! name = "features"
//! dtype = "float32"
//! shape = [-1, 64]              # -1: any size (the batch dimension)
//!
//! [[outputs]]
//! name = "scores"
//! dtype = "float32"
//! shape = [-1, 4]
//!
//! [batching]                    # optional; off unless max_batch > 1
//! max_batch = 16
//! max_delay_us = 500
//! ```

use std::path::{Path, PathBuf};

use broker_client::Dtype;
use serde::Deserialize;

/// One input or output as the manifest declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The model's name for it.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions; -1 for any size.
    pub shape: Vec<i64>,
}

/// Dynamic batching settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Most requests stacked into one run; 1 turns batching off.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch, in microseconds.
    #[serde(default)]
    pub max_delay_us: u64,
}

/// An execution provider a manifest may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// NVIDIA CUDA (needs the onnxruntime-gpu library and a GPU).
    Cuda,
    /// ONNX Runtime's CPU provider.
    Cpu,
}

/// A validated model manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's name; must match its directory.
    pub name: String,
    /// The .onnx file, relative to the manifest.
    pub file: PathBuf,
    /// Providers in order of preference.
    #[serde(default = "default_providers")]
    pub providers: Vec<Provider>,
    /// Fail rather than fall back to the CPU.
    #[serde(default)]
    pub require_gpu: bool,
    /// Load at broker start.
    #[serde(default)]
    pub warmup: bool,
    /// The inputs, in order.
    pub inputs: Vec<TensorSpec>,
    /// The outputs, in order.
    pub outputs: Vec<TensorSpec>,
    /// Dynamic batching; off when absent.
    pub batching: Option<Batching>,
    /// Where the manifest was read from (set on load).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_providers() -> Vec<Provider> {
    vec![Provider::Cuda, Provider::Cpu]
}

impl ModelSpec {
    /// Requests stacked per run: 1 when batching is off.
    pub fn max_batch(&self) -> usize {
        self.batching.map_or(1, |b| b.max_batch.max(1))
    }

    /// The .onnx file's path.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// No directory for this model.
    #[error("no model named {name:?} in {dir}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The repository.
        dir: String,
    },
    /// The manifest is invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// The manifest.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The repository directory.
#[derive(Debug, Clone)]
pub struct Repo {
    dir: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Repo {
    /// The repository at `dir` (it may not exist yet: then it holds no models).
    pub fn new(dir: impl Into<PathBuf>) -> Repo {
        Repo { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names of the models present, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("model.toml").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        names
    }

    /// Read and validate the manifest of `name`.
    pub fn spec(&self, name: &str) -> Result<ModelSpec, RepoError> {
        let unknown = || RepoError::Unknown {
            name: name.to_owned(),
            dir: self.dir.display().to_string(),
        };
        if !valid_name(name) {
            return Err(unknown());
        }
        let dir = self.dir.join(name);
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|_| unknown())?;
        let invalid = |message: String| RepoError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let mut spec: ModelSpec = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if spec.name != name {
            return Err(invalid(format!(
                "name {:?} does not match its directory {name:?}",
                spec.name
            )));
        }
        if spec.inputs.is_empty() || spec.outputs.is_empty() {
            return Err(invalid(
                "a model needs at least one input and one output".into(),
            ));
        }
        for t in spec.inputs.iter().chain(&spec.outputs) {
            if t.shape.len() > broker_client::wire::MAX_RANK || t.shape.iter().any(|d| *d < -1) {
                return Err(invalid(format!(
                    "tensor {:?}: shape {:?} must have at most {} dimensions, each -1 or more",
                    t.name,
                    t.shape,
                    broker_client::wire::MAX_RANK
                )));
            }
        }
        if spec.max_batch() > 1
            && spec
                .inputs
                .iter()
                .chain(&spec.outputs)
                .any(|t| t.shape.first() != Some(&-1))
        {
            return Err(invalid(
                "batching needs every input and output to start with a -1 (batch) dimension".into(),
            ));
        }
        if spec.providers.is_empty() {
            spec.providers = default_providers();
        }
        spec.dir = dir;
        Ok(spec)
    }
}
