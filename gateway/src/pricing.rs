//! Built-in price table (USD per million tokens) for common models;
//! `litellm_params.input_cost_per_token`/`output_cost_per_token` override it.

use crate::canonical::Usage;

/// USD per token.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    pub fn cost(&self, u: Usage) -> f64 {
        self.input * u.input_tokens as f64 + self.output * u.output_tokens as f64
    }
}

/// (model prefix, input $/Mtok, output $/Mtok). Longest matching prefix wins.
const TABLE: &[(&str, f64, f64)] = &[
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5", 1.25, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4-turbo", 10.00, 30.00),
    ("gpt-4", 30.00, 60.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o4-mini", 1.10, 4.40),
    ("o3-mini", 1.10, 4.40),
    ("o3", 2.00, 8.00),
    ("o1-mini", 1.10, 4.40),
    ("o1", 15.00, 60.00),
    ("claude-opus-4-5", 5.00, 25.00),
    ("claude-opus-4", 15.00, 75.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-haiku-4", 1.00, 5.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-opus", 15.00, 75.00),
    ("claude-3-haiku", 0.25, 1.25),
    ("deepseek-chat", 0.27, 1.10),
    ("deepseek-reasoner", 0.55, 2.19),
];

/// Price for an upstream model name (`gpt-4o-2024-08-06` matches `gpt-4o`).
/// Unknown models cost 0 (tokens are still recorded).
pub fn lookup(model: &str) -> Price {
    let m = model.rsplit('/').next().unwrap_or(model);
    TABLE
        .iter()
        .filter(|(p, _, _)| m.starts_with(p))
        .max_by_key(|(p, _, _)| p.len())
        .map(|(_, i, o)| Price {
            input: i / 1e6,
            output: o / 1e6,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn longest_prefix() {
        assert_eq!(lookup("gpt-4o-mini-2024-07-18").input, 0.15 / 1e6);
        assert_eq!(lookup("gpt-4o-2024-08-06").output, 10.0 / 1e6);
        assert_eq!(lookup("claude-sonnet-4-5-20250929").input, 3.0 / 1e6);
        assert_eq!(lookup("mystery"), Price::default());
    }
}
