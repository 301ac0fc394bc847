//! Text generation: a generative model's tokenizer and chat template ([`Generator`]), its
//! KV cache ([`Cache`]), the sampler, and [`chat`], the loop that answers one request.
//!
//! A chat runs on its connection's thread and sends each step to the model's device
//! queue: the prompt in chunks of [`PREFILL_CHUNK`] tokens, then one token at a time. The
//! KV cache lives on the connection's thread between steps and is dropped when the chat
//! ends for any reason (answered, failed, timed out, or its client gone), so an agent killed
//! mid-answer frees its sequence at the next token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_client::ErrorCode;
use broker_client::chat::{ChatRequest, Completion, FinishReason, Message, ROLES};
use ort::value::DynValue;
use tokenizers::Tokenizer;

use crate::queue::Device;
use crate::repo::{ChatTemplate, GenerateSpec, ModelSpec, TensorSpec};
use crate::runtime::{Failure, Loaded, load_failed};

/// Most prompt tokens run in one step: bounds how long an inference queued behind a
/// long prompt waits.
pub const PREFILL_CHUNK: usize = 128;

/// Most stop sequences a request may give, and the longest of them in bytes.
pub const MAX_STOPS: usize = 8;
const MAX_STOP_BYTES: usize = 256;

/// The graph's inputs, as [`crate::runtime::load`] checks them.
pub fn inputs(g: &GenerateSpec) -> Vec<TensorSpec> {
    let mut specs = vec![TensorSpec {
        name: "input_ids".into(),
        dtype: broker_client::Dtype::Int64,
        shape: vec![1, -1],
    }];
    specs.extend(cache_specs(g, "past"));
    specs
}

/// The graph's outputs.
pub fn outputs(g: &GenerateSpec) -> Vec<TensorSpec> {
    let mut specs = vec![TensorSpec {
        name: "logits".into(),
        dtype: broker_client::Dtype::Float32,
        shape: vec![1, g.vocab as i64],
    }];
    specs.extend(cache_specs(g, "present"));
    specs
}

fn cache_specs<'a>(g: &'a GenerateSpec, prefix: &'a str) -> impl Iterator<Item = TensorSpec> + 'a {
    (0..g.layers).flat_map(move |i| {
        ["key", "value"].map(|kind| TensorSpec {
            name: format!("{prefix}.{i}.{kind}"),
            dtype: broker_client::Dtype::Float32,
            shape: vec![1, g.kv_heads as i64, -1, g.head_dim as i64],
        })
    })
}

/// A generative model's text side: how messages become token ids and ids become text.
pub struct Generator {
    spec: GenerateSpec,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    /// `<|im_start|>` and `<|im_end|>` (chatml).
    turn: (u32, u32),
}

impl Generator {
    /// Load the tokenizer named by `g` and check the template's tokens are in it.
    pub fn load(spec: &ModelSpec, g: &GenerateSpec) -> Result<Generator, Failure> {
        let path = spec.dir.join(&g.tokenizer);
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| load_failed(spec, format!("tokenizer {}: {e}", path.display())))?;
        // Message text is text: "<|im_end|>" typed by a user is not the control token.
        tokenizer.set_encode_special_tokens(true);
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| load_failed(spec, format!("the tokenizer has no token {token:?}")))
        };
        let stop_ids = g
            .stop_tokens
            .iter()
            .map(|t| id(t))
            .collect::<Result<_, _>>()?;
        let turn = match g.chat_template {
            ChatTemplate::Chatml => (id("<|im_start|>")?, id("<|im_end|>")?),
        };
        Ok(Generator {
            spec: g.clone(),
            tokenizer,
            stop_ids,
            turn,
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, Failure> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Failure::new(ErrorCode::InvalidInput, format!("cannot tokenize: {e}")))
    }

    /// The prompt for `messages`, ending where the assistant's answer begins. A chat
    /// without a system message gets the model's default one.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, Failure> {
        let (start, end) = self.turn;
        let mut ids = Vec::new();
        let mut turn = |role: &str, content: &str| -> Result<(), Failure> {
            ids.push(start);
            ids.extend(self.encode(&format!("{role}\n{content}"))?);
            ids.push(end);
            ids.extend(self.encode("\n")?);
            Ok(())
        };
        if messages.first().is_none_or(|m| m.role != "system") {
            turn("system", &self.spec.default_system)?;
        }
        for m in messages {
            turn(&m.role, &m.content)?;
        }
        ids.push(start);
        ids.extend(self.encode("assistant\n")?);
        Ok(ids)
    }

    /// The text of `ids` (control tokens left out).
    pub fn text(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// One sequence's keys and values, per layer, as the graph gave them.
pub struct Cache {
    values: Vec<DynValue>,
    /// Positions held.
    pub len: usize,
}

impl Cache {
    /// An empty cache (no positions).
    pub fn empty(g: &GenerateSpec) -> Result<Cache, Failure> {
        let values = (0..g.layers * 2)
            .map(|_| {
                ort::value::Tensor::from_array((
                    vec![1i64, g.kv_heads as i64, 0, g.head_dim as i64],
                    Vec::<f32>::new(),
                ))
                .map(|t| t.into_dyn())
            })
            .collect::<ort::Result<_>>()
            .map_err(|e| Failure::new(ErrorCode::Failed, format!("cannot make a KV cache: {e}")))?;
        Ok(Cache { values, len: 0 })
    }
}

/// Run `ids` through the model after `cache`; returns the last position's logits and the
/// cache with the new positions.
pub fn step(loaded: &mut Loaded, ids: &[u32], cache: Cache) -> Result<(Vec<f32>, Cache), Failure> {
    let failed = |e: ort::Error| {
        Failure::new(
            ErrorCode::Failed,
            format!("model {:?} failed: {e}", loaded_name(&loaded.spec)),
        )
    };
    let Some(g) = loaded.spec.generate.clone() else {
        return Err(Failure::new(
            ErrorCode::InvalidInput,
            "not a generative model",
        ));
    };
    let input_ids = ort::value::Tensor::from_array((
        vec![1i64, ids.len() as i64],
        ids.iter().map(|&i| i64::from(i)).collect::<Vec<i64>>(),
    ))
    .map_err(failed)?
    .into_dyn();
    let mut inputs: Vec<(String, DynValue)> = vec![("input_ids".into(), input_ids)];
    for (i, v) in cache.values.into_iter().enumerate() {
        let kind = if i % 2 == 0 { "key" } else { "value" };
        inputs.push((format!("past.{}.{kind}", i / 2), v));
    }
    let mut outputs = loaded.session.run(inputs).map_err(failed)?;
    let logits = outputs
        .get("logits")
        .ok_or_else(|| Failure::new(ErrorCode::Failed, "the model gave no logits"))?
        .try_extract_tensor::<f32>()
        .map_err(failed)?
        .1
        .to_vec();
    let mut values = Vec::with_capacity(g.layers * 2);
    for i in 0..g.layers {
        for kind in ["key", "value"] {
            values.push(
                outputs
                    .remove(format!("present.{i}.{kind}"))
                    .ok_or_else(|| {
                        Failure::new(
                            ErrorCode::Failed,
                            format!("the model gave no present.{i}.{kind}"),
                        )
                    })?,
            );
        }
    }
    Ok((
        logits,
        Cache {
            values,
            len: cache.len + ids.len(),
        },
    ))
}

fn loaded_name(spec: &ModelSpec) -> &str {
    &spec.name
}

/// A small, fixed pseudo-random generator (SplitMix64): the same seed gives the same
/// answer on every machine and every version, which a crate's generator does not promise.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token: greedy at temperature 0, else temperature and top-p sampling.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for these parameters.
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Sampler {
        Sampler {
            temperature,
            top_p,
            rng: SplitMix64(seed),
        }
    }

    /// The next token.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let t = f64::from(self.temperature);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (f64::from(l - max) / t).exp()))
            .collect();
        let sum: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0.0;
        let mut n = 0;
        for (_, p) in &probs {
            kept += p / sum;
            n += 1;
            if kept >= f64::from(self.top_p) {
                break;
            }
        }
        let nucleus: f64 = probs[..n].iter().map(|p| p.1).sum();
        let mut u = self.rng.unit() * nucleus;
        for (id, p) in &probs[..n] {
            if u < *p {
                return *id;
            }
            u -= p;
        }
        probs[n - 1].0
    }
}

/// The index of the largest logit, the first one on a tie (as numpy's argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(ErrorCode::InvalidInput, message)
}

/// Check a request's own fields (before any model is touched).
fn check(request: &ChatRequest) -> Result<(), Failure> {
    if request.messages.is_empty() {
        return Err(invalid("a chat needs at least one message"));
    }
    for (i, m) in request.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(invalid(format!(
                "message {i} has the role {:?}; a role is one of {}",
                m.role,
                ROLES.join(", ")
            )));
        }
    }
    if request.max_tokens == Some(0) {
        return Err(invalid("max_tokens must be at least 1"));
    }
    if let Some(t) = request.temperature
        && !(t.is_finite() && (0.0..=10.0).contains(&t))
    {
        return Err(invalid(format!("temperature {t} is not between 0 and 10")));
    }
    if let Some(p) = request.top_p
        && !(p.is_finite() && p > 0.0 && p <= 1.0)
    {
        return Err(invalid(format!("top_p {p} is not in (0, 1]")));
    }
    if request.stop.len() > MAX_STOPS
        || request
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(format!(
            "at most {MAX_STOPS} stop sequences, each 1 to {MAX_STOP_BYTES} bytes"
        )));
    }
    Ok(())
}

/// How much of `text` can be shown: all but an ending that may still become a stop
/// sequence, on a character boundary.
fn settled(text: &str, stops: &[String]) -> usize {
    let mut keep = text.len();
    for stop in stops {
        for (i, _) in stop.char_indices().skip(1) {
            if text.ends_with(&stop[..i]) {
                keep = keep.min(text.len() - i);
            }
        }
    }
    keep
}

/// The refusal of a chat that must run on a GPU, for `model`, which runs on `runs_on`.
fn gpu_required(model: &str, runs_on: &str) -> Failure {
    Failure::new(
        ErrorCode::GpuRequired,
        format!(
            "the chat requires a GPU and model {model:?} runs on the {runs_on} here (a GPU \
             needs ONNX Runtime with CUDA and `providers = [\"cuda\", ...]` in the model's \
             model.toml)"
        ),
    )
}

/// Answer one chat request (its JSON as the client sent it). `device` gives the device a
/// model's steps go to; `send` gets each settled piece of text and says whether the
/// client still listens.
pub fn chat<'d>(
    json: &str,
    device: impl Fn(&str) -> &'d Device,
    remote: impl FnOnce(&ChatRequest, &mut dyn FnMut(&str) -> bool) -> Result<Completion, Failure>,
    send: &mut dyn FnMut(&str) -> bool,
) -> Result<Completion, Failure> {
    let started = Instant::now();
    let request: ChatRequest = serde_json::from_str(json)
        .map_err(|e| invalid(format!("the chat request is not valid: {e}")))?;
    check(&request)?;
    if request.provider.is_some() {
        return remote(&request, send);
    }
    let deadline = request
        .timeout_ms
        .map(|ms| started + Duration::from_millis(ms));
    let device = device(&request.model);
    let model = request.model.clone();
    // Checked before the model is loaded where the device already says it, and after (a
    // CUDA device falls back to the CPU when the provider cannot be registered).
    if request.require_gpu && device.name != "cuda" {
        return Err(gpu_required(&model, device.name));
    }
    let require_gpu = request.require_gpu;
    let (generator, spec): (Arc<Generator>, GenerateSpec) = device
        .call(&model, move |loaded| {
            let loaded = loaded?;
            if require_gpu && loaded.provider != "cuda" {
                return Err(gpu_required(&loaded.spec.name, loaded.provider));
            }
            match (&loaded.generator, &loaded.spec.generate) {
                (Some(g), Some(s)) => Ok((g.clone(), s.clone())),
                _ => Err(invalid(format!(
                    "model {:?} is not a generative model (it takes tensors: use infer)",
                    loaded.spec.name
                ))),
            }
        })
        .and_then(|r| r)?;
    let prompt = generator.prompt(&request.messages)?;
    let context = spec.context as usize;
    if prompt.len() >= context {
        return Err(Failure::new(
            ErrorCode::ContextTooLong,
            format!(
                "the prompt is {} tokens and model {model:?} takes {context} at most, prompt and \
                 answer together: shorten the conversation",
                prompt.len()
            ),
        ));
    }
    let room = context - prompt.len();
    let max_tokens = request.max_tokens.map_or(room, |m| (m as usize).min(room));
    let mut sampler = Sampler::new(
        request.temperature.unwrap_or(0.0),
        request.top_p.unwrap_or(1.0),
        request.seed.unwrap_or(0),
    );
    let timed_out = |done: usize| {
        Failure::new(
            ErrorCode::Timeout,
            format!(
                "the chat ran past its {} ms after {done} generated tokens",
                request.timeout_ms.unwrap_or(0)
            ),
        )
    };
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);

    let run = |ids: Vec<u32>, cache: Cache| {
        device
            .call(&model, move |loaded| step(loaded?, &ids, cache))
            .and_then(|r| r)
    };
    let mut cache = Cache::empty(&spec)?;
    let mut logits = Vec::new();
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        if past_deadline() {
            return Err(timed_out(0));
        }
        (logits, cache) = run(chunk.to_vec(), cache)?;
    }
    let mut first_token_ms = None;
    let mut generated: Vec<u32> = Vec::new();
    let mut shown = 0;
    let mut finish = FinishReason::Length;
    let mut text = String::new();
    while generated.len() < max_tokens {
        let token = sampler.pick(&logits);
        first_token_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
        if generator.stop_ids.contains(&token) {
            finish = FinishReason::Stop;
            break;
        }
        generated.push(token);
        text = generator.text(&generated);
        if let Some(at) = request
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(at);
            finish = FinishReason::Stop;
            break;
        }
        // A character split across tokens decodes as U+FFFD until its last byte comes.
        if !text.ends_with('\u{FFFD}') {
            let upto = settled(&text, &request.stop);
            if upto > shown {
                if !send(&text[shown..upto]) {
                    return Err(Failure::new(ErrorCode::Failed, "the client went away"));
                }
                shown = upto;
            }
        }
        if generated.len() == max_tokens {
            break;
        }
        if past_deadline() {
            return Err(timed_out(generated.len()));
        }
        (logits, cache) = run(vec![token], cache)?;
    }
    drop(cache);
    if text.len() > shown && !send(&text[shown..]) {
        return Err(Failure::new(ErrorCode::Failed, "the client went away"));
    }
    Ok(Completion {
        text,
        finish_reason: finish,
        prompt_tokens: prompt.len() as u32,
        completion_tokens: generated.len() as u32,
        provider: "local".into(),
        model,
        device: device.name.into(),
        first_token_ms: first_token_ms.unwrap_or(0.0),
        total_ms: started.elapsed().as_secs_f64() * 1000.0,
        tokens: generated,
        remote: false,
        bytes_sent: 0,
        uncounted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(Sampler::new(0.0, 1.0, 7).pick(&[0.1, 0.3, 0.2]), 1);
    }

    #[test]
    fn sampling_is_seeded_and_stays_in_the_nucleus() {
        let logits = [3.0, 2.9, -5.0, -6.0];
        let picks = |seed| {
            let mut s = Sampler::new(1.0, 0.9, seed);
            (0..64).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(picks(42), picks(42));
        assert_ne!(picks(42), picks(43));
        // Tokens 2 and 3 hold well under 10% together: outside the nucleus.
        assert!(picks(42).iter().all(|&t| t < 2), "{:?}", picks(42));
        assert!(picks(42).contains(&0) && picks(42).contains(&1));
    }

    #[test]
    fn text_that_may_start_a_stop_sequence_is_held_back_on_a_char_boundary() {
        let stops = vec!["ÉND".to_owned()];
        assert_eq!(settled("abc", &stops), 3);
        assert_eq!(settled("abcÉ", &stops), 3);
        assert_eq!(settled("abcÉN", &stops), 3);
        assert_eq!(settled("naïve", &stops), "naïve".len());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let base = ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: "user".into(),
                content: "hi".into(),
            }],
            ..ChatRequest::default()
        };
        let err = |r: ChatRequest| check(&r).expect_err("refused").message;
        assert!(
            err(ChatRequest {
                max_tokens: Some(0),
                ..base.clone()
            })
            .contains("max_tokens")
        );
        assert!(
            err(ChatRequest {
                top_p: Some(0.0),
                ..base.clone()
            })
            .contains("top_p")
        );
        assert!(
            err(ChatRequest {
                temperature: Some(f32::NAN),
                ..base.clone()
            })
            .contains("temperature")
        );
        let mut wizard = base.clone();
        wizard.messages[0].role = "wizard".into();
        assert!(err(wizard).contains("\"wizard\""));
        assert!(
            err(ChatRequest {
                messages: vec![],
                ..base.clone()
            })
            .contains("at least one")
        );
        assert!(check(&base).is_ok());
    }
}
