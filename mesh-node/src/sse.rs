//! Reading an OpenAI chat response as it passes through the proxy: content deltas and
//! `usage.completion_tokens` from an SSE stream (incrementally, across arbitrary chunk
//! boundaries), or usage from a non-streaming JSON body.

use serde::Deserialize;
use std::borrow::Cow;

/// An event larger than this is not a chat chunk; it is skipped rather than buffered.
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// What one slice of the stream contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// Events carrying generated text (one token each from llama-server).
    pub content_deltas: u32,
    /// `usage.completion_tokens`, when an event in the slice carried it.
    pub usage_completion_tokens: Option<u32>,
}

/// Incremental SSE reader: feed it byte chunks in order.
#[derive(Debug, Default)]
pub struct SseScanner {
    /// The current, unterminated line.
    line: Vec<u8>,
    /// `data:` lines of the current event, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
    oversized: bool,
}

impl SseScanner {
    /// Scans `chunk`, reporting the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Scan {
        let mut scan = Scan::default();
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.extend_line(&rest[..i]);
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.on_line(&line, &mut scan);
            // Keep the allocation for the next line.
            self.line = line;
            self.line.clear();
            rest = &rest[i + 1..];
        }
        self.extend_line(rest);
        scan
    }

    /// The stream ended: an event not followed by a blank line still counts.
    pub fn finish(&mut self) -> Scan {
        let mut scan = Scan::default();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, &mut scan);
        }
        self.dispatch(&mut scan);
        scan
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            self.oversized = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn on_line(&mut self, line: &[u8], scan: &mut Scan) {
        if line.is_empty() {
            self.dispatch(scan);
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            // `event:`, `id:`, `retry:` and `:` comments carry nothing the proxy measures.
            return;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.has_data {
            self.data.push(b'\n');
        }
        if self.data.len() + value.len() > MAX_EVENT_BYTES {
            self.oversized = true;
        } else {
            self.data.extend_from_slice(value);
        }
        self.has_data = true;
    }

    fn dispatch(&mut self, scan: &mut Scan) {
        if self.has_data && !self.oversized && self.data != b"[DONE]" {
            if let Ok(chunk) = serde_json::from_slice::<Chunk>(&self.data) {
                if chunk.has_content() {
                    scan.content_deltas += 1;
                }
                if let Some(n) = chunk.usage.and_then(|u| u.completion_tokens) {
                    scan.usage_completion_tokens = Some(n);
                }
            }
        }
        self.data.clear();
        self.has_data = false;
        self.oversized = false;
    }
}

/// `usage.completion_tokens` of a non-streaming JSON response body.
pub fn json_completion_tokens(body: &[u8]) -> Option<u32> {
    serde_json::from_slice::<Chunk>(body)
        .ok()?
        .usage?
        .completion_tokens
}

/// The parts of a chat chunk (or body) the proxy reads; everything else is ignored. Text is
/// borrowed from the event where it can be (no escapes), so reading a token allocates little.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    /// Legacy `/v1/completions` chunks.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    /// Thinking models stream their reasoning here before the answer: it is generated tokens.
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u32>,
}

impl Chunk<'_> {
    fn has_content(&self) -> bool {
        let non_empty = |s: &Option<Cow<'_, str>>| s.as_deref().is_some_and(|s| !s.is_empty());
        self.choices.iter().any(|c| {
            non_empty(&c.text)
                || c.delta
                    .as_ref()
                    .is_some_and(|d| non_empty(&d.content) || non_empty(&d.reasoning_content))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A real llama-server stream (SmolLM2, max_tokens 8, include_usage), trimmed of ids.
    const LLAMA_STREAM: &str = concat!(
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" there\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\",\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" how\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" can\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" i\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" help\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"?\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[],\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":8,\"prompt_tokens\":31,\"total_tokens\":39},\"timings\":{\"predicted_n\":8,\"predicted_per_second\":48.68}}\n\n",
        "data: [DONE]\n\n",
    );

    fn scan_all(chunks: &[&[u8]]) -> Scan {
        let mut s = SseScanner::default();
        let mut total = Scan::default();
        let mut scans: Vec<Scan> = chunks.iter().map(|c| s.push(c)).collect();
        scans.push(s.finish());
        for c in scans {
            total.content_deltas += c.content_deltas;
            if c.usage_completion_tokens.is_some() {
                total.usage_completion_tokens = c.usage_completion_tokens;
            }
        }
        total
    }

    #[test]
    fn llama_server_stream_yields_eight_deltas_and_the_usage_tail() {
        let scan = scan_all(&[LLAMA_STREAM.as_bytes()]);
        assert_eq!(
            scan.content_deltas, 8,
            "the role-only chunk and the finish chunk are not content"
        );
        assert_eq!(scan.usage_completion_tokens, Some(8));
    }

    #[test]
    fn each_delta_is_reported_by_the_chunk_that_completes_its_event() {
        let mut s = SseScanner::default();
        let event = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
        let (a, b) = event.split_at(20);
        assert_eq!(s.push(a.as_bytes()).content_deltas, 0);
        assert_eq!(s.push(b.as_bytes()).content_deltas, 1);
    }

    #[test]
    fn crlf_multiline_data_comments_and_unterminated_tail() {
        let stream = ": keep-alive\r\n\r\nevent: message\r\ndata: {\"choices\":[{\"delta\":\r\ndata: {\"content\":\"a\"}}]}\r\n\r\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":1}}";
        let scan = scan_all(&[stream.as_bytes()]);
        assert_eq!(scan.content_deltas, 1);
        assert_eq!(scan.usage_completion_tokens, Some(1));
    }

    #[test]
    fn reasoning_and_legacy_text_deltas_count_as_tokens() {
        let stream = "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\ndata: {\"choices\":[{\"text\":\"t\"}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n";
        assert_eq!(scan_all(&[stream.as_bytes()]).content_deltas, 2);
    }

    #[test]
    fn stream_without_usage_chunk_reports_none() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: not json\n\ndata: [DONE]\n\n";
        let scan = scan_all(&[stream.as_bytes()]);
        assert_eq!(scan.content_deltas, 1);
        assert_eq!(scan.usage_completion_tokens, None);
    }

    #[test]
    fn oversized_event_is_skipped_and_the_next_one_still_counts() {
        let mut s = SseScanner::default();
        let mut big = b"data: ".to_vec();
        big.resize(MAX_EVENT_BYTES + 10, b'a');
        assert_eq!(s.push(&big).content_deltas, 0);
        let next = s.push(b"\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert_eq!(next.content_deltas, 1);
    }

    #[test]
    fn json_body_usage() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Hello!"}}],"usage":{"completion_tokens":8,"prompt_tokens":31}}"#;
        assert_eq!(json_completion_tokens(body), Some(8));
        assert_eq!(json_completion_tokens(br#"{"choices":[]}"#), None);
        assert_eq!(json_completion_tokens(b"<html>"), None);
    }

    proptest! {
        #[test]
        fn chunk_boundaries_never_change_the_reading(cuts in proptest::collection::vec(0usize..LLAMA_STREAM.len(), 0..40)) {
            let bytes = LLAMA_STREAM.as_bytes();
            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            let scan = scan_all(&chunks);
            prop_assert_eq!(scan.content_deltas, 8);
            prop_assert_eq!(scan.usage_completion_tokens, Some(8));
        }
    }
}
