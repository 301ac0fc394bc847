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
//!
//! A generative model (an LLM, served by `chat` requests) has a `[generate]` table instead
//! of inputs and outputs (its graph's are fixed: see [`GenerateSpec`]); setup writes it:
//!
//! ```toml
//! name = "smollm2-135m"
//! file = "smollm2-135m.onnx"
//! threads = 0                   # ONNX Runtime's threads for it; 0: one per core
//!
//! [generate]
//! tokenizer = "tokenizer.json"  # a `tokenizers` file
//! context = 8192                # positions the model takes, prompt and answer together
//! layers = 30                   # past.<i>.key / past.<i>.value for i in 0..layers
//! kv_heads = 3
//! head_dim = 64
//! vocab = 49152
//! chat_template = "chatml"      # how messages become a prompt
//! default_system = "You are a helpful AI assistant"  # when the chat has no system message
//! stop_tokens = ["<|im_end|>"]
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

/// How a prompt is made from messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
    Chatml,
}

/// A generative model's graph and text conventions. The graph takes `input_ids` int64
/// [1, S] and, per layer, `past.<i>.key` / `past.<i>.value` float32 [1, kv_heads, P,
/// head_dim]; it gives `logits` float32 [1, vocab] (the last position's) and
/// `present.<i>.key` / `present.<i>.value` [1, kv_heads, P + S, head_dim].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// The tokenizer file, relative to the manifest.
    pub tokenizer: PathBuf,
    /// Positions the model takes, prompt and answer together.
    pub context: u32,
    /// Transformer layers: one past key and value each.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Tokens in the vocabulary (the logits' size).
    pub vocab: usize,
    /// How messages become a prompt.
    pub chat_template: ChatTemplate,
    /// The system message used when a chat has none.
    #[serde(default)]
    pub default_system: String,
    /// Tokens that end an answer.
    pub stop_tokens: Vec<String>,
    /// Where the weights came from (informational).
    #[serde(default)]
    pub source: String,
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
    /// ONNX Runtime's threads for this model; 0: one per core. 1 when absent.
    #[serde(default)]
    pub threads: Option<usize>,
    /// The inputs, in order (none for a generative model).
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// The outputs, in order (none for a generative model).
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// Present for a generative model (served by `chat`, not `infer`).
    pub generate: Option<GenerateSpec>,
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

    /// ONNX Runtime's intra-op threads for this model.
    pub fn intra_threads(&self) -> usize {
        match self.threads {
            None => 1,
            Some(0) => std::thread::available_parallelism().map_or(1, usize::from),
            Some(n) => n,
        }
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
        match &spec.generate {
            None if spec.inputs.is_empty() || spec.outputs.is_empty() => {
                return Err(invalid(
                    "a model needs at least one input and one output (or a [generate] table)"
                        .into(),
                ));
            }
            Some(_) if !spec.inputs.is_empty() || !spec.outputs.is_empty() => {
                return Err(invalid(
                    "a generative model's inputs and outputs are fixed; remove them".into(),
                ));
            }
            Some(g)
                if g.layers == 0 || g.vocab == 0 || g.context == 0 || g.stop_tokens.is_empty() =>
            {
                return Err(invalid(
                    "[generate] needs layers, vocab, context and stop_tokens".into(),
                ));
            }
            _ => {}
        }
        if spec.generate.is_some() && spec.batching.is_some() {
            return Err(invalid("a generative model does not batch".into()));
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
