//! The handoff a command executor's program returns: read from `$MESH_HANDOFF_FILE` or
//! found as the last JSON object with a handoff field on stdout, then checked against
//! the phase. Errors are the failure reasons a human reads.

use crate::core::model::{Handoff, Phase};
use std::collections::BTreeMap;
use std::path::Path;
use tokio::io::AsyncReadExt;

/// The largest handoff accepted, in bytes of JSON.
pub const MAX_HANDOFF_BYTES: usize = 256 * 1024;
/// The handoff fields a JSON object on stdout must have at least one of to count as the
/// handoff (so a trailing log line such as `{"level":"info"}` is not taken for it).
const HANDOFF_FIELDS: [&str; 11] = [
    "summary",
    "findings",
    "decisions",
    "warnings",
    "suggested_approach",
    "files",
    "verdict",
    "confidence",
    "tokens",
    "cost_micro_usd",
    "learnings",
];
/// How much of unusable output a failure reason quotes.
const GOT_CHARS: usize = 200;

/// The start of some unusable output, quoted, for a failure reason.
fn got(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "nothing (stdout was empty)".to_string();
    }
    let head: String = text.chars().take(GOT_CHARS).collect();
    if head.len() < text.len() {
        format!("{head:?}...")
    } else {
        format!("{head:?}")
    }
}

/// The handoff the program wrote to `$MESH_HANDOFF_FILE`, if it wrote one (an empty
/// file counts as none).
pub(super) async fn read_handoff_file(path: &Path) -> Result<Option<Handoff>, String> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_HANDOFF_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > MAX_HANDOFF_BYTES {
        return Err(format!(
            "the handoff in $MESH_HANDOFF_FILE ({}) is over {MAX_HANDOFF_BYTES} bytes; keep \
             it short (summaries, not logs)",
            path.display()
        ));
    }
    if bytes.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        format!(
            "invalid handoff in $MESH_HANDOFF_FILE ({}): {e}; got: {}",
            path.display(),
            got(&bytes)
        )
    })
}

/// The byte ranges of the top-level JSON objects in `text`, in order (an object inside
/// another is not listed; text around and between them is skipped).
fn json_objects(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].iter().position(|&b| b == b'{') {
        let start = i + off;
        let mut values = serde_json::Deserializer::from_slice(&text[start..])
            .into_iter::<serde::de::IgnoredAny>();
        match values.next() {
            Some(Ok(_)) => {
                let end = start + values.byte_offset();
                out.push((start, end));
                i = end;
            }
            _ => i = start + 1,
        }
    }
    out
}

/// The handoff printed on stdout: the last top-level JSON object with at least one
/// handoff field (text around it, such as a markdown code fence, is ignored).
pub fn handoff_from_stdout(stdout: &[u8]) -> Result<Handoff, String> {
    let objects = json_objects(stdout);
    for &(start, end) in objects.iter().rev() {
        let bytes = &stdout[start..end];
        let Ok(keys) = serde_json::from_slice::<BTreeMap<String, serde::de::IgnoredAny>>(bytes)
        else {
            continue;
        };
        if !keys.keys().any(|k| HANDOFF_FIELDS.contains(&k.as_str())) {
            continue;
        }
        if bytes.len() > MAX_HANDOFF_BYTES {
            return Err(format!(
                "the handoff on stdout is {} bytes; the limit is {MAX_HANDOFF_BYTES} (keep it \
                 to summaries, not logs)",
                bytes.len()
            ));
        }
        return serde_json::from_slice(bytes)
            .map_err(|e| format!("invalid handoff on stdout: {e}; got: {}", got(bytes)));
    }
    let hint = if objects.is_empty() {
        String::new()
    } else {
        format!(
            " (the JSON objects on stdout have none of the handoff fields: {})",
            HANDOFF_FIELDS.join(", ")
        )
    };
    Err(format!(
        "no handoff: expected JSON on stdout or in $MESH_HANDOFF_FILE{hint}; got: {}",
        got(stdout)
    ))
}

/// A rate limit the program reported on stdout: a JSON object with `"rate_limited":
/// true`, and when to come back (`"retry_after_s"`), if it said.
pub fn rate_limit_from_stdout(stdout: &[u8]) -> Option<Option<u64>> {
    json_objects(stdout).into_iter().rev().find_map(|(s, e)| {
        let v: serde_json::Value = serde_json::from_slice(&stdout[s..e]).ok()?;
        v.get("rate_limited")?.as_bool()?.then(|| {
            v.get("retry_after_s")
                .and_then(serde_json::Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
                .map(|s| (s * 1000.0) as u64)
        })
    })
}

/// What the agent CLI says it used, from its own JSON output: Claude Code's final
/// `{"type": "result", "total_cost_usd": …, "usage": {"input_tokens": …,
/// "output_tokens": …}}`, or the `usage` of each of Codex's `turn.completed` events
/// (summed; Codex reports no cost, so the cost stays 0 and the handoff should carry
/// it). None when no object on stdout has a `usage`.
pub fn usage_from_stdout(stdout: &[u8]) -> Option<crate::core::state::Usage> {
    let mut total: Option<crate::core::state::Usage> = None;
    for (s, e) in json_objects(stdout) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&stdout[s..e]) else {
            continue;
        };
        let Some(u) = v.get("usage") else {
            continue;
        };
        let n = |k: &str| u.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let (tin, tout) = (
            n("input_tokens")
                .saturating_add(n("cache_read_input_tokens"))
                .saturating_add(n("cache_creation_input_tokens")),
            n("output_tokens"),
        );
        let cost = v
            .get("total_cost_usd")
            .and_then(serde_json::Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0 && *c < 1e6)
            .map_or(0, |c| (c * 1e6).round() as u64);
        let t = total.get_or_insert_with(Default::default);
        if v.get("type").and_then(serde_json::Value::as_str) == Some("result") {
            // Claude's result is the whole run's total: it replaces what came before.
            *t = Default::default();
        }
        t.add(&crate::core::state::Usage {
            tokens_in: tin,
            tokens_out: tout,
            tokens: tin.saturating_add(tout),
            cost_micro_usd: cost,
        });
    }
    total
}

/// Checks a handoff against its phase: reviews must decide. The commit is the node's to
/// fill in, and confidence is capped at 100.
pub(super) fn check_handoff(phase: Phase, mut h: Handoff) -> Result<Handoff, String> {
    if matches!(phase, Phase::Review | Phase::PlanReview) && h.verdict.is_none() {
        return Err(format!(
            "{phase} must return verdict approve or reject (\"verdict\": \"approve\" or \
             \"reject\" in the handoff)"
        ));
    }
    h.confidence = h.confidence.map(|c| c.min(100));
    h.commit = None;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_rate_limits_are_read_from_agent_output() {
        let claude = br#"{"type":"result","subtype":"success","total_cost_usd":0.1234,"usage":{"input_tokens":1200,"cache_read_input_tokens":800,"output_tokens":300}}"#;
        let u = usage_from_stdout(claude).unwrap();
        assert_eq!((u.tokens_in, u.tokens_out, u.tokens), (2000, 300, 2300));
        assert_eq!(u.cost_micro_usd, 123_400);
        let codex = br#"{"type":"turn.completed","usage":{"input_tokens":10,"output_tokens":2}}
{"type":"turn.completed","usage":{"input_tokens":5,"output_tokens":1}}"#;
        let u = usage_from_stdout(codex).unwrap();
        assert_eq!((u.tokens_in, u.tokens_out, u.cost_micro_usd), (15, 3, 0));
        assert!(usage_from_stdout(br#"{"summary":"x"}"#).is_none());
        assert_eq!(
            rate_limit_from_stdout(br#"{"rate_limited": true, "retry_after_s": 1.5}"#),
            Some(Some(1500))
        );
        assert_eq!(
            rate_limit_from_stdout(br#"{"rate_limited": true}"#),
            Some(None)
        );
        assert_eq!(rate_limit_from_stdout(br#"{"rate_limited": false}"#), None);
    }

    #[test]
    fn the_last_object_with_handoff_fields_wins() {
        let out = b"thinking {not json}\n```json\n{\"summary\": \"a\", \"learnings\": [{\"kind\": \"pitfall\", \"text\": \"t\"}]}\n```\n{\"level\": \"info\"}\n";
        let h = handoff_from_stdout(out).unwrap();
        assert_eq!(h.summary, "a");
        assert_eq!(h.learnings.len(), 1);
        let e = handoff_from_stdout(b"{\"level\": 1}").unwrap_err();
        assert!(e.contains("none of the handoff fields"), "{e}");
        let e = handoff_from_stdout(b"").unwrap_err();
        assert!(e.contains("got: nothing"), "{e}");
    }

    /// A handoff file one byte over the cap is refused, read no further than that byte.
    #[tokio::test]
    async fn an_oversized_handoff_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("handoff.json");
        let mut big = br#"{"summary": ""#.to_vec();
        big.resize(MAX_HANDOFF_BYTES - 2, b'a');
        big.extend(br#""}"#);
        std::fs::write(&path, &big).unwrap();
        assert!(
            read_handoff_file(&path).await.unwrap().is_some(),
            "at the cap: read"
        );
        big.insert(14, b'a');
        std::fs::write(&path, &big).unwrap();
        let e = read_handoff_file(&path).await.unwrap_err();
        assert!(e.contains("is over"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// An agent's stdout is anything a program prints: never a panic, and a handoff
        /// found is within the cap.
        #[test]
        fn any_stdout_yields_a_handoff_or_a_reason(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            text in "[{}\\[\\]\":,a-z0-9 \n]{0,200}",
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let _ = handoff_from_stdout(&noise);
            let _ = handoff_from_stdout(text.as_bytes());
            let valid = br#"log line {"summary": "did it", "files": ["a.rs"], "verdict": "approve", "confidence": 250, "learnings": [{"kind": "pitfall", "text": "t"}]} trailing"#;
            let mut mutated = valid.to_vec();
            mutated[at.index(valid.len())] = byte;
            if let Ok(h) = handoff_from_stdout(&mutated) {
                let _ = check_handoff(Phase::Review, h);
            }
            let mut glued = noise.clone();
            glued.extend_from_slice(&mutated);
            let _ = handoff_from_stdout(&glued);
        }
    }
}
