//! JSON-RPC 2.0 as MCP uses it: classifying what a client sent, and building replies.
//!
//! MCP narrows JSON-RPC: request ids are strings or integers (never `null`), and `params`,
//! when present, is an object.

use serde_json::{Map, Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error object (`{code, message}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, message)
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("method not found: {method}"))
    }

    pub fn internal() -> Self {
        Self::new(INTERNAL_ERROR, "internal error")
    }
}

/// One message a client sent, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Map<String, Value>,
    },
    Notification {
        method: String,
    },
    /// A reply to a server-to-client request. This server sends none, so replies are
    /// accepted (as the transport requires) and dropped.
    Response,
}

impl Incoming {
    pub fn is_initialize(&self) -> bool {
        matches!(self, Incoming::Request { method, .. } if method == "initialize")
    }
}

/// Classifies one message. On failure returns the error and the id to answer with (the
/// message's own id when it had a usable one, else `null`).
pub fn classify(message: Value) -> Result<Incoming, (Value, RpcError)> {
    let Value::Object(mut object) = message else {
        return Err((
            Value::Null,
            RpcError::invalid_request("a JSON-RPC message must be an object"),
        ));
    };
    let id = match object.remove("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
        Some(_) => {
            return Err((
                Value::Null,
                RpcError::invalid_request("`id` must be a string or an integer"),
            ));
        }
    };
    let answer_id = id.clone().unwrap_or(Value::Null);
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            answer_id,
            RpcError::invalid_request("`jsonrpc` must be \"2.0\""),
        ));
    }
    match object.remove("method") {
        Some(Value::String(method)) => {
            let params = match object.remove("params") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(params)) => params,
                Some(_) => {
                    return Err((
                        answer_id,
                        RpcError::invalid_params("`params` must be an object"),
                    ));
                }
            };
            Ok(match id {
                Some(id) => Incoming::Request { id, method, params },
                None => Incoming::Notification { method },
            })
        }
        Some(_) => Err((
            answer_id,
            RpcError::invalid_request("`method` must be a string"),
        )),
        None if id.is_some() && (object.contains_key("result") || object.contains_key("error")) => {
            Ok(Incoming::Response)
        }
        None => Err((
            answer_id,
            RpcError::invalid_request("a message needs `method` (or `result`/`error` with `id`)"),
        )),
    }
}

pub fn success(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error(id: Value, error: &RpcError) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": error.code, "message": error.message},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(value: Value) -> (Value, i64) {
        let (id, e) = classify(value).unwrap_err();
        (id, e.code)
    }

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        let request = classify(json!({"jsonrpc": "2.0", "id": 7, "method": "ping"})).unwrap();
        assert_eq!(
            request,
            Incoming::Request {
                id: json!(7),
                method: "ping".into(),
                params: Map::new()
            }
        );
        let request = classify(
            json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"name": "x"}}),
        )
        .unwrap();
        let Incoming::Request { id, params, .. } = request else {
            panic!("not a request")
        };
        assert_eq!((id, params["name"].clone()), (json!("a"), json!("x")));
        assert_eq!(
            classify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).unwrap(),
            Incoming::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(
            classify(json!({"jsonrpc": "2.0", "id": 1, "result": {}})).unwrap(),
            Incoming::Response
        );
        assert_eq!(
            classify(json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}}))
                .unwrap(),
            Incoming::Response
        );
    }

    #[test]
    fn malformed_messages_are_invalid_requests_with_the_best_id() {
        assert_eq!(code_of(json!([1])), (Value::Null, INVALID_REQUEST));
        assert_eq!(code_of(json!("ping")), (Value::Null, INVALID_REQUEST));
        assert_eq!(
            code_of(json!({"id": 1, "method": "ping"})),
            (json!(1), INVALID_REQUEST)
        );
        assert_eq!(
            code_of(json!({"jsonrpc": "1.0", "id": 1, "method": "ping"})),
            (json!(1), INVALID_REQUEST)
        );
        assert_eq!(
            code_of(json!({"jsonrpc": "2.0", "id": null, "method": "ping"})),
            (Value::Null, INVALID_REQUEST)
        );
        assert_eq!(
            code_of(json!({"jsonrpc": "2.0", "id": 1.5, "method": "ping"})),
            (Value::Null, INVALID_REQUEST)
        );
        assert_eq!(
            code_of(json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"})),
            (Value::Null, INVALID_REQUEST)
        );
        assert_eq!(
            code_of(json!({"jsonrpc": "2.0", "id": 2, "method": 5})),
            (json!(2), INVALID_REQUEST)
        );
        assert_eq!(
            code_of(json!({"jsonrpc": "2.0", "id": 3})),
            (json!(3), INVALID_REQUEST)
        );
        assert_eq!(
            code_of(json!({"jsonrpc": "2.0", "id": 4, "method": "ping", "params": [1]})),
            (json!(4), INVALID_PARAMS)
        );
    }

    #[test]
    fn replies_have_the_json_rpc_shape() {
        assert_eq!(
            success(json!(1), json!({})),
            json!({"jsonrpc": "2.0", "id": 1, "result": {}})
        );
        assert_eq!(
            error(Value::Null, &RpcError::new(PARSE_ERROR, "bad")),
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "bad"}})
        );
    }
}
