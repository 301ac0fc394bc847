//! Chat completion on the wire: what a client asks the broker for, and what it answers.
//! Both travel as JSON inside `Chat` and `Json` frames, with `Token` frames between them
//! while the text is generated.

use serde::{Deserialize, Serialize};

/// The roles a message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` ([`ROLES`]).
    pub role: String,
    /// The text.
    pub content: String,
}

/// A chat completion request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model's name in the broker's repository.
    pub model: String,
    /// The conversation so far; the answer continues it as the assistant.
    pub messages: Vec<Message>,
    /// Most tokens to generate; the model's remaining context when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// 0 (or absent) picks the likeliest token every time (greedy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling: sample from the likeliest tokens whose probabilities add up to
    /// this (1 or absent: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Texts that end the answer when generated (they are not part of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Seed of the sampler; the same seed and request give the same answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Give up after this many milliseconds (the caller's own deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The provider of `providers.toml` to send it to; the broker's own models when
    /// absent. The caller decides (and checks consent): the broker never picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Serve it on a GPU or not at all (the agent's `[placement] requires_gpu`): the
    /// broker's own model answers `GpuRequired`, without generating, when it does not run
    /// on one. Ignored for a provider, whose hardware is its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_gpu: bool,
    /// The caller takes the answer as it comes: a provider is asked to stream it (the
    /// broker's own models always send each piece as it is generated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model ended its answer, or a stop sequence came.
    Stop,
    /// `max_tokens`, or the end of the model's context.
    Length,
}

/// A finished chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The answer.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens of the prompt, chat template included.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Who served it: `local` for the broker's own models.
    pub provider: String,
    /// The model that served it.
    pub model: String,
    /// Where it ran: `cpu` or `cuda`.
    pub device: String,
    /// Milliseconds from the request to the first generated token.
    pub first_token_ms: f64,
    /// Milliseconds from the request to the end.
    pub total_ms: f64,
    /// The generated token ids, in order (for checks against a reference loop).
    #[serde(default)]
    pub tokens: Vec<u32>,
    /// Whether the call left this machine.
    #[serde(default)]
    pub remote: bool,
    /// Bytes of the request sent to the provider (0 for the broker's own models).
    #[serde(default)]
    pub bytes_sent: u64,
    /// The provider gave no token counts (some servers leave them out of a streamed
    /// answer): `prompt_tokens` is 0 and `completion_tokens` counts the pieces of a
    /// streamed answer (0 for one sent whole).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uncounted: bool,
}
