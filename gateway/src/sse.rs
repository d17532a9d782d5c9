//! Server-Sent Events framing: split a byte stream into events without
//! copying when an event lies inside one chunk, and scan pass-through streams
//! for usage without re-serializing them.

use crate::canonical::Usage;
use crate::error::WireFormat;
use memchr::memmem;
use serde::Deserialize;

/// Splits an SSE byte stream into complete raw events (each ending with a blank line).
#[derive(Debug, Default)]
pub struct SseSplitter {
    pending: Vec<u8>,
}

impl SseSplitter {
    /// Calls `f` with each complete event's raw bytes (terminator included).
    pub fn push(&mut self, chunk: &[u8], mut f: impl FnMut(&[u8])) {
        if self.pending.is_empty() {
            let rest = split(chunk, &mut f);
            self.pending.extend_from_slice(&chunk[rest..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let buf = std::mem::take(&mut self.pending);
            let rest = split(&buf, &mut f);
            self.pending = buf;
            self.pending.drain(..rest);
        }
    }

    /// Bytes held back: the start of an event whose end has not arrived yet.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The unterminated tail, if any (a stream that ended without a blank line).
    pub fn finish(&mut self, mut f: impl FnMut(&[u8])) {
        if self.pending.iter().any(|b| !b.is_ascii_whitespace()) {
            f(&self.pending);
        }
        self.pending.clear();
    }
}

/// Returns the offset after the last complete event.
fn split(buf: &[u8], f: &mut impl FnMut(&[u8])) -> usize {
    let mut start = 0;
    let mut line_start = 0;
    for nl in memchr::memchr_iter(b'\n', buf) {
        let line = &buf[line_start..nl];
        let blank = line.is_empty() || line == b"\r";
        line_start = nl + 1;
        if blank {
            if nl > start && buf[start..nl].iter().any(|b| !b.is_ascii_whitespace()) {
                f(&buf[start..=nl]);
            }
            start = nl + 1;
        }
    }
    start
}

/// One parsed event: its `event:` name (if any) and its `data:` lines joined.
#[derive(Debug, PartialEq)]
pub struct Event<'a> {
    pub name: Option<&'a str>,
    pub data: std::borrow::Cow<'a, str>,
}

pub fn parse_event(raw: &[u8]) -> Event<'_> {
    let mut name = None;
    let mut data: Option<std::borrow::Cow<'_, str>> = None;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim_start());
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            data = Some(match data {
                None => std::borrow::Cow::Borrowed(v),
                Some(prev) => std::borrow::Cow::Owned(format!("{prev}\n{v}")),
            });
        }
    }
    Event {
        name,
        data: data.unwrap_or_default(),
    }
}

#[derive(Deserialize)]
struct OaUsageOnly {
    usage: Option<OaUsage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}
#[derive(Deserialize)]
struct OaUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<OaPromptDetails>,
}
#[derive(Deserialize)]
struct OaPromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl OaUsage {
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cache_read_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_creation_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
struct AnMessageStart {
    message: AnUsageOnly,
}
#[derive(Deserialize)]
struct AnUsageOnly {
    usage: Option<AnUsage>,
}
#[derive(Deserialize)]
struct AnUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnUsage {
    fn input(&self) -> u64 {
        self.input_tokens
            + self.cache_creation_input_tokens.unwrap_or(0)
            + self.cache_read_input_tokens.unwrap_or(0)
    }
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input(),
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_creation_tokens: self.cache_creation_input_tokens.unwrap_or(0),
        }
    }
}

/// What a scanned event turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    Other,
    /// An event that carries usage (an OpenAI chunk with a `usage` object, an
    /// Anthropic `message_delta`): where LiteLLM puts the streamed answer's `cost`.
    Usage,
    /// An OpenAI usage-only chunk (`choices: []`): droppable when the client did not ask for it.
    UsageOnly,
}

/// Usage from a non-streamed response body, parsing only the `usage` field.
///
/// The top-level object is walked structurally ([`top_level_field`]: strings and nested
/// values are jumped over with `memchr`, not decoded) and only the `usage` value is
/// deserialized. serde skipping every other field cost ~5k instructions a response
/// (callgrind, a 600-byte Anthropic message), the largest single item of the proxy's own
/// code. Anything the walk is unsure of (not an object, an escaped key, a duplicate
/// `usage`, unbalanced nesting) falls back to deserializing the whole body as before.
pub fn usage_from_body(format: WireFormat, body: &[u8]) -> Usage {
    match top_level_field(body, b"usage") {
        Ok(None) => Usage::default(),
        Ok(Some(v)) => match format {
            WireFormat::OpenAi => serde_json::from_slice::<Option<OaUsage>>(v)
                .ok()
                .flatten()
                .map(|u| u.usage())
                .unwrap_or_default(),
            WireFormat::Anthropic => serde_json::from_slice::<Option<AnUsage>>(v)
                .ok()
                .flatten()
                .map(|u| u.usage())
                .unwrap_or_default(),
        },
        Err(NotSure) => usage_from_whole_body(format, body),
    }
}

fn usage_from_whole_body(format: WireFormat, body: &[u8]) -> Usage {
    match format {
        WireFormat::OpenAi => serde_json::from_slice::<OaUsageOnly>(body)
            .ok()
            .and_then(|u| u.usage)
            .map(|u| u.usage())
            .unwrap_or_default(),
        WireFormat::Anthropic => serde_json::from_slice::<AnUsageOnly>(body)
            .ok()
            .and_then(|u| u.usage)
            .map(|u| u.usage())
            .unwrap_or_default(),
    }
}

/// The structural walk could not vouch for its answer: parse the whole body instead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotSure;

/// The raw bytes of `key`'s value in the top-level JSON object of `body` (`Ok(None)`: no
/// such key). Keys are compared as raw bytes, so a key with an escape is `NotSure`, as is
/// a second `key` (serde refuses duplicate fields) and anything that is not a well-nested
/// object. Values are not validated beyond their nesting: the one returned is parsed.
pub(crate) fn top_level_field<'a>(body: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, NotSure> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return Err(NotSure);
    }
    i = skip_ws(body, i + 1);
    if body.get(i) == Some(&b'}') {
        return Ok(None);
    }
    let mut found = None;
    loop {
        if body.get(i) != Some(&b'"') {
            return Err(NotSure);
        }
        let end = string_end(body, i)?;
        let name = &body[i + 1..end];
        if memchr::memchr(b'\\', name).is_some() {
            return Err(NotSure);
        }
        i = skip_ws(body, end + 1);
        if body.get(i) != Some(&b':') {
            return Err(NotSure);
        }
        let start = skip_ws(body, i + 1);
        let stop = value_end(body, start)?;
        if name == key {
            if found.is_some() {
                return Err(NotSure);
            }
            found = Some(&body[start..stop]);
        }
        i = skip_ws(body, stop);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            Some(b'}') => {
                return match skip_ws(body, i + 1) == body.len() {
                    true => Ok(found),
                    false => Err(NotSure),
                };
            }
            _ => return Err(NotSure),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// Index of the quote that closes the string opening at `open`.
fn string_end(b: &[u8], open: usize) -> Result<usize, NotSure> {
    let mut i = open + 1;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', b.get(i..).ok_or(NotSure)?).ok_or(NotSure)?;
        if b[at] == b'"' {
            return Ok(at);
        }
        i = at + 2; // an escape: the next byte is never the string's end
    }
}

/// Index just past the value starting at `start`.
fn value_end(b: &[u8], start: usize) -> Result<usize, NotSure> {
    let (open, close) = match b.get(start) {
        Some(b'"') => return Ok(string_end(b, start)? + 1),
        Some(b'{') => (b'{', b'}'),
        Some(b'[') => (b'[', b']'),
        Some(_) => {
            // A number, `true`, `false` or `null`: up to the next delimiter.
            let rest = &b[start..];
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(rest.len());
            return match len {
                0 => Err(NotSure),
                n => Ok(start + n),
            };
        }
        None => return Err(NotSure),
    };
    // Only this value's own bracket kind needs counting: the other kind nests inside it.
    let mut depth = 0usize;
    let mut i = start;
    loop {
        let at =
            i + memchr::memchr3(b'"', open, close, b.get(i..).ok_or(NotSure)?).ok_or(NotSure)?;
        match b[at] {
            b'"' => i = string_end(b, at)? + 1,
            c if c == open => {
                depth += 1;
                i = at + 1;
            }
            _ => {
                depth -= 1;
                i = at + 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
        }
    }
}

/// Look at one raw pass-through event and update `usage`. Only events that can
/// carry usage are parsed at all.
pub fn scan_usage(format: WireFormat, raw: &[u8], usage: &mut Usage) -> Scanned {
    match format {
        WireFormat::OpenAi => {
            if memmem::find(raw, b"\"usage\"").is_none() {
                return Scanned::Other;
            }
            let ev = parse_event(raw);
            if let Ok(c) = serde_json::from_str::<OaUsageOnly>(&ev.data)
                && let Some(u) = c.usage
            {
                *usage = u.usage();
                if c.choices.as_ref().is_some_and(|c| c.is_empty()) {
                    return Scanned::UsageOnly;
                }
                return Scanned::Usage;
            }
            Scanned::Other
        }
        WireFormat::Anthropic => {
            let head = &raw[..raw.len().min(40)];
            if memmem::find(head, b"message_start").is_some() {
                let ev = parse_event(raw);
                if let Ok(m) = serde_json::from_str::<AnMessageStart>(&ev.data)
                    && let Some(u) = m.message.usage
                {
                    *usage = u.usage();
                }
            } else if memmem::find(head, b"message_delta").is_some() {
                let ev = parse_event(raw);
                if let Ok(m) = serde_json::from_str::<AnUsageOnly>(&ev.data)
                    && let Some(u) = m.usage
                {
                    usage.output_tokens = u.output_tokens;
                    if u.input() > 0 {
                        let out = usage.output_tokens;
                        *usage = u.usage();
                        usage.output_tokens = out;
                    }
                    return Scanned::Usage;
                }
            }
            Scanned::Other
        }
    }
}

/// The same event with `"cost": cost` appended to its `usage` object (LiteLLM's
/// `include_cost_in_streaming_usage`), or None when it has no usage object. The
/// bytes are spliced, not re-serialized: everything else stays as the upstream sent it.
pub fn with_cost(raw: &[u8], cost: f64) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct UsageSpan<'a> {
        #[serde(borrow, default)]
        usage: Option<&'a serde_json::value::RawValue>,
    }
    let cost = serde_json::to_string(&cost).ok()?;
    let mut out = Vec::with_capacity(raw.len() + cost.len() + 8);
    let mut done = false;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let data = line
            .strip_prefix(b"data:")
            .map(|d| d.strip_prefix(b" ").unwrap_or(d));
        let spliced = match data {
            Some(d) if !done => {
                let body = d.strip_suffix(b"\n").unwrap_or(d);
                let body = body.strip_suffix(b"\r").unwrap_or(body);
                serde_json::from_slice::<UsageSpan<'_>>(body)
                    .ok()
                    .and_then(|u| u.usage)
                    .map(|u| u.get())
                    .filter(|u| u.starts_with('{') && u.ends_with('}'))
                    .map(|u| {
                        // The closing brace of `usage`, as an offset into `line`.
                        let close = u.as_ptr() as usize - line.as_ptr() as usize + u.len() - 1;
                        let empty = u[1..u.len() - 1].trim().is_empty();
                        (close, empty)
                    })
            }
            _ => None,
        };
        match spliced {
            Some((close, empty)) => {
                out.extend_from_slice(&line[..close]);
                if !empty {
                    out.push(b',');
                }
                out.extend_from_slice(b"\"cost\":");
                out.extend_from_slice(cost.as_bytes());
                out.extend_from_slice(&line[close..]);
                done = true;
            }
            None => out.extend_from_slice(line),
        }
    }
    done.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structural walk gives what parsing the whole body gives, on real response shapes
    /// and on bodies built to mislead it: `usage` inside content, strings holding quotes,
    /// braces and escapes, nested `usage` keys, whitespace everywhere.
    #[test]
    fn usage_from_body_agrees_with_parsing_the_whole_body() {
        let bodies: &[&str] = &[
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":7}}"#,
            r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"input_tokens":3,"output_tokens":4},"choices":[]}"#,
            r#"{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":999999,"output_tokens":999999}}}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
            r#"{"content":[{"type":"text","text":"\"usage\": {\"input_tokens\": 5} } ] { [ \\"}],"usage":{"input_tokens":6,"output_tokens":7}}"#,
            r#"{"choices":[{"message":{"content":"{\"usage\":{\"prompt_tokens\":50}}"}}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#,
            "  {\n  \"usage\" :\t{ \"input_tokens\" : 8 , \"output_tokens\" : 9 } ,\n \"x\" : [ 1 , 2.5e3 , true , null , { } , [ ] ] }\n",
            r#"{"usage":null}"#,
            r#"{"usage":{}}"#,
            r#"{}"#,
            r#"{"id":"no usage at all","choices":[]}"#,
            r#"{"usage":{"prompt_tokens":"not a number"}}"#,
            r#"{"a":{"usage":{"prompt_tokens":77}},"b":[[{"usage":1}]],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            r#"{"text":"é ü 漢字 🚀","usage":{"input_tokens":1,"output_tokens":1}}"#,
        ];
        for body in bodies {
            for format in [WireFormat::OpenAi, WireFormat::Anthropic] {
                assert!(
                    top_level_field(body.as_bytes(), b"usage").is_ok(),
                    "the walk should be sure of {body}"
                );
                assert_eq!(
                    usage_from_body(format, body.as_bytes()),
                    usage_from_whole_body(format, body.as_bytes()),
                    "{format:?} {body}"
                );
            }
        }
        let u = usage_from_body(WireFormat::Anthropic, bodies[3].as_bytes());
        assert_eq!(
            (u.input_tokens, u.output_tokens),
            (1, 2),
            "the top-level usage, not the tool's"
        );
    }

    /// What the walk cannot vouch for goes to the whole-body parse, which decides as before.
    #[test]
    fn usage_walk_defers_when_unsure() {
        let unsure: &[&str] = &[
            r#"{"usag\u0065":{"input_tokens":5,"output_tokens":1}}"#,
            r#"{"usage":{"input_tokens":1},"usage":{"input_tokens":2}}"#,
            r#"[{"usage":{"input_tokens":1}}]"#,
            r#"{"usage":{"input_tokens":1}"#,
            r#"{"usage":{"input_tokens":1}} trailing"#,
            r#"{"content":"unterminated,"usage":{"input_tokens":1}}"#,
            r#"{"usage":}"#,
            "",
            "not json",
        ];
        for body in unsure {
            assert_eq!(
                top_level_field(body.as_bytes(), b"usage"),
                Err(NotSure),
                "{body}"
            );
            for format in [WireFormat::OpenAi, WireFormat::Anthropic] {
                assert_eq!(
                    usage_from_body(format, body.as_bytes()),
                    usage_from_whole_body(format, body.as_bytes()),
                    "{format:?} {body}"
                );
            }
        }
        // An escaped key still counts, through the whole-body parse.
        let u = usage_from_body(WireFormat::Anthropic, unsure[0].as_bytes());
        assert_eq!((u.input_tokens, u.output_tokens), (5, 1));
    }

    fn collect(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = SseSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |e| out.push(String::from_utf8_lossy(e).into_owned()));
        }
        s.finish(|e| out.push(String::from_utf8_lossy(e).into_owned()));
        out
    }

    #[test]
    fn splits_across_chunks_and_crlf() {
        let evs = collect(&[b"data: {\"a\"", b":1}\n\ndata: [DO", b"NE]\n\n"]);
        assert_eq!(evs, vec!["data: {\"a\":1}\n\n", "data: [DONE]\n\n"]);
        let evs = collect(&[b"event: ping\r\ndata: {}\r\n\r\nevent: x\r\n"]);
        assert_eq!(evs.len(), 2);
        assert_eq!(parse_event(evs[0].as_bytes()).name, Some("ping"));
    }

    #[test]
    fn scans_usage() {
        let mut u = Usage::default();
        let raw = b"data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n";
        assert_eq!(
            scan_usage(WireFormat::OpenAi, raw, &mut u),
            Scanned::UsageOnly
        );
        assert_eq!(
            u,
            Usage {
                input_tokens: 5,
                output_tokens: 7,
                ..Default::default()
            }
        );
        let mut u = Usage::default();
        scan_usage(WireFormat::Anthropic, b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n", &mut u);
        scan_usage(WireFormat::Anthropic, b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":4}}\n\n", &mut u);
        assert_eq!(
            u,
            Usage {
                input_tokens: 9,
                output_tokens: 4,
                ..Default::default()
            }
        );
        // Cache counts survive the scan (Anthropic streams, OpenAI cached_tokens).
        let mut u = Usage::default();
        scan_usage(WireFormat::Anthropic, b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":80,\"cache_creation_input_tokens\":10,\"output_tokens\":1}}}\n\n", &mut u);
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.cache_creation_tokens),
            (95, 80, 10)
        );
        let body = br#"{"usage":{"prompt_tokens":100,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":64}}}"#;
        assert_eq!(
            usage_from_body(WireFormat::OpenAi, body).cache_read_tokens,
            64
        );
    }

    #[test]
    fn cost_goes_into_the_usage_event() {
        let raw = b"event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\r\n\r\n";
        let out = with_cost(raw, 0.25).unwrap();
        let ev = parse_event(&out);
        assert_eq!(ev.name, Some("message_delta"));
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["usage"]["cost"], 0.25);
        assert_eq!(v["usage"]["output_tokens"], 4);
        assert!(out.ends_with(b"\r\n\r\n"));
        // Spliced, not re-serialized: the upstream's key order and spacing stay.
        assert_eq!(
            with_cost(
                b"data: {\"z\": 1, \"usage\": {\"b\": 2, \"a\": 1}}\n\n",
                0.5
            )
            .unwrap(),
            b"data: {\"z\": 1, \"usage\": {\"b\": 2, \"a\": 1,\"cost\":0.5}}\n\n"
        );
        assert_eq!(
            with_cost(b"data: {\"usage\":{}}\n\n", 2.0).unwrap(),
            b"data: {\"usage\":{\"cost\":2.0}}\n\n"
        );
        assert_eq!(with_cost(b"data: {\"usage\":null}\n\n", 1.0), None);
        assert_eq!(with_cost(b"data: [DONE]\n\n", 1.0), None);
    }
}
