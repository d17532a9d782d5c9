//! Per-request fallback lists (`fallbacks`, `context_window_fallbacks`,
//! `content_policy_fallbacks` in a request body) and the content-policy error
//! class they react to. A request's list replaces the config's for that call,
//! as LiteLLM's router does (`kwargs.get("fallbacks", self.fallbacks)` in
//! `Router.async_function_with_fallbacks`).

use crate::error::ProviderError;
use serde_json::Value;
use serde_json::value::RawValue;

/// One fallback list in either of the shapes LiteLLM accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum FallbackList {
    /// `["a", "b"]` or `[{"model": "a"}]`: tried in order, whatever the model
    /// (LiteLLM's "non-standard" format, `_check_non_standard_fallback_format`).
    Ordered(Vec<String>),
    /// `[{"gpt-4": ["a"]}, {"*": ["b"]}]`: per model group, `*` for any other
    /// (`get_fallback_model_group`).
    Mapped(Vec<(String, Vec<String>)>),
}

impl FallbackList {
    /// The groups to try after `model` (served by group `group`): an exact key,
    /// then the key without a provider prefix, then `*`.
    pub fn for_model(&self, model: &str, group: &str) -> &[String] {
        match self {
            FallbackList::Ordered(v) => v,
            FallbackList::Mapped(m) => {
                let find = |k: &str| m.iter().find(|(from, _)| from == k).map(|(_, to)| to);
                find(model)
                    .or_else(|| find(group))
                    .or_else(|| model.split_once('/').and_then(|(_, bare)| find(bare)))
                    .or_else(|| find("*"))
                    .map(Vec::as_slice)
                    .unwrap_or_default()
            }
        }
    }
}

/// The fallback lists a request body carried; `None` fields use the config's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFallbacks {
    pub fallbacks: Option<FallbackList>,
    pub context_window: Option<FallbackList>,
    pub content_policy: Option<FallbackList>,
}

impl RequestFallbacks {
    /// Read the three body fields; `None` when none is set (the common case).
    pub fn from_body(
        fallbacks: Option<&RawValue>,
        context_window: Option<&RawValue>,
        content_policy: Option<&RawValue>,
    ) -> Result<Option<Box<RequestFallbacks>>, String> {
        let r = RequestFallbacks {
            fallbacks: parse_list("fallbacks", fallbacks)?,
            context_window: parse_list("context_window_fallbacks", context_window)?,
            content_policy: parse_list("content_policy_fallbacks", content_policy)?,
        };
        Ok((r != RequestFallbacks::default()).then(|| Box::new(r)))
    }
}

fn parse_list(field: &str, raw: Option<&RawValue>) -> Result<Option<FallbackList>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let v: Value = serde_json::from_str(raw.get()).map_err(|e| format!("`{field}`: {e}"))?;
    let items = match v {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        _ => return Err(format!("`{field}` must be a list")),
    };
    let mut ordered = Vec::new();
    let mut mapped = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::String(s) => ordered.push(s),
            Value::Object(o) if o.get("model").is_some_and(Value::is_string) => {
                // A deployment override (`{"model": "x", ...params}`): only the
                // model is honoured, so other keys are refused rather than ignored.
                if let Some(k) = o.keys().find(|k| *k != "model") {
                    return Err(format!(
                        "`{field}[{i}]`: only `model` is supported in a fallback entry, not `{k}`"
                    ));
                }
                if let Some(Value::String(m)) = o.get("model") {
                    ordered.push(m.clone());
                }
            }
            Value::Object(o) if o.len() == 1 => {
                let (from, to) = o.into_iter().next().unwrap_or_default();
                let to = match to {
                    Value::Array(a) => a
                        .into_iter()
                        .map(|m| match m {
                            Value::String(s) => Ok(s),
                            _ => Err(format!("`{field}[{i}].{from}` must list model names")),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Value::String(s) => vec![s],
                    _ => return Err(format!("`{field}[{i}].{from}` must list model names")),
                };
                mapped.push((from, to));
            }
            _ => {
                return Err(format!(
                    "`{field}[{i}]` must be a model name or {{\"<model>\": [<fallback models>]}}"
                ));
            }
        }
    }
    match (ordered.is_empty(), mapped.is_empty()) {
        (_, true) => Ok(Some(FallbackList::Ordered(ordered))),
        (true, false) => Ok(Some(FallbackList::Mapped(mapped))),
        (false, false) => Err(format!(
            "`{field}` mixes model names with {{\"<model>\": [...]}} entries; use one form"
        )),
    }
}

/// The upstream refused the content: LiteLLM's `ContentPolicyViolationError`,
/// recognised by the same message fragments
/// (`ExceptionCheckers.is_azure_content_policy_violation_error` in
/// litellm/litellm_core_utils/exception_mapping_utils.py, which the OpenAI and
/// Azure mappings apply to their 400s).
pub fn is_content_policy_error(e: &ProviderError) -> bool {
    let ProviderError::Status {
        status,
        message,
        error_type,
        ..
    } = e
    else {
        return false;
    };
    if !matches!(status, 400 | 403 | 422) {
        return false;
    }
    const FRAGMENTS: &[&str] = &[
        "content_policy_violation",
        "responsibleaipolicyviolation",
        "the response was filtered due to the prompt triggering azure openai's content management",
        "your task failed as a result of our safety system",
        "the model produced invalid content",
        "content_filter_policy",
        "your request was rejected as a result of our safety system",
    ];
    let m = message.to_ascii_lowercase();
    let t = error_type.to_ascii_lowercase();
    FRAGMENTS.iter().any(|f| m.contains(f) || t.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn reads_both_shapes() {
        let r = RequestFallbacks::from_body(Some(&raw(r#"["a",{"model":"b"}]"#)), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.fallbacks,
            Some(FallbackList::Ordered(vec!["a".into(), "b".into()]))
        );
        let l = parse_list("f", Some(&raw(r#"[{"gpt-4":["x"]},{"*":["y"]}]"#)))
            .unwrap()
            .unwrap();
        assert_eq!(l.for_model("gpt-4", "gpt-4"), ["x".to_owned()]);
        assert_eq!(l.for_model("openai/gpt-4", "openai/*"), ["x".to_owned()]);
        assert_eq!(l.for_model("other", "other"), ["y".to_owned()]);
        assert!(
            RequestFallbacks::from_body(None, Some(&raw("null")), None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_shapes_are_clear_errors() {
        for (s, want) in [
            (r#""a""#, "must be a list"),
            (r#"[1]"#, "`fallbacks[0]` must be"),
            (r#"[{"model":"a","temperature":1}]"#, "not `temperature`"),
            (r#"["a",{"b":["c"]}]"#, "mixes"),
            (r#"[{"b":[1]}]"#, "must list model names"),
        ] {
            let e = parse_list("fallbacks", Some(&raw(s))).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn content_policy_is_classified_as_litellm_does() {
        let st = |status, message: &str| ProviderError::Status {
            status,
            error_type: "invalid_request_error".into(),
            message: message.into(),
            retry_after: None,
        };
        assert!(is_content_policy_error(&st(
            400,
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."
        )));
        assert!(is_content_policy_error(&st(
            400,
            "Your request was rejected as a result of our safety system."
        )));
        assert!(!is_content_policy_error(&st(
            400,
            "max_tokens is too large"
        )));
        assert!(!is_content_policy_error(&st(
            500,
            "content_policy_violation"
        )));
    }
}
