//! sentiment: says whether a text reads positive or negative, and how sure it is, by
//! running the `sentiment` model (models/sentiment) through the inference broker. The text
//! becomes word counts over the model's vocabulary here, in the sandbox; the model turns
//! them into probabilities in the broker.
//!
//! `spawner run sentiment "the new build is great, thanks"` -> `positive 0.95 (great, thanks)`

use agent_sdk::{Agent, AgentError, Request, Response, inference};

/// The model's vocabulary, in its input order.
const VOCABULARY: &str = include_str!("../../../models/sentiment/vocabulary.txt");

struct Sentiment;

impl Agent for Sentiment {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let text = request.text()?.to_lowercase();
        let vocabulary: Vec<&str> = VOCABULARY.lines().filter(|w| !w.is_empty()).collect();
        let mut counts = vec![0f32; vocabulary.len()];
        let mut known = Vec::new();
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            if let Some(i) = vocabulary.iter().position(|v| *v == word) {
                counts[i] += 1.0;
                if !known.contains(&word) {
                    known.push(word);
                }
            }
        }
        if known.is_empty() {
            return Ok(Response::text("neutral (no word it knows)\n"));
        }
        let input = inference::Tensor::from_f32("counts", &[1, counts.len() as u64], &counts);
        let outputs = inference::infer("sentiment", &[input])?;
        let p = outputs
            .first()
            .and_then(|t| t.to_f32())
            .filter(|p| p.len() == 2)
            .ok_or_else(|| {
                AgentError::Failed("the sentiment model gave no [negative, positive] pair".into())
            })?;
        let (label, confidence) = if p[1] >= p[0] {
            ("positive", p[1])
        } else {
            ("negative", p[0])
        };
        Ok(Response::text(format!(
            "{label} {confidence:.2} ({})\n",
            known.join(", ")
        )))
    }
}

agent_sdk::export!(Sentiment);
