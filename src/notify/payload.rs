//! What a sink receives: the generic webhook's JSON (the trigger and the sending node)
//! and a Slack incoming-webhook message (`text` plus one `section` block in mrkdwn).

use crate::core::notify::{Trigger, TriggerKind};
use serde_json::{json, Value};

/// Slack caps a section's text at 3000 characters.
const SLACK_SECTION_MAX: usize = 3000;

/// The generic webhook's body: the trigger's fields, its kind as a string and the node
/// that sent it.
pub fn webhook(t: &Trigger, node: &str) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("node".into(), Value::String(node.to_string()));
    }
    v
}

/// Slack's escaping for text: `&`, `<` and `>` (the rest is sent as is).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A Slack incoming-webhook message: a plain `text` (notifications and fallbacks) and
/// one `section` block with the title in bold and the detail.
pub fn slack(t: &Trigger) -> Value {
    let icon = match t.kind {
        TriggerKind::StoryBlocked => ":no_entry:",
        TriggerKind::NeedsAttention => ":raising_hand:",
        TriggerKind::SecurityConcern => ":warning:",
        TriggerKind::BudgetExhausted => ":money_with_wings:",
        TriggerKind::GitUnavailable => ":electric_plug:",
        TriggerKind::Digest => ":bar_chart:",
    };
    let text = cut_chars(&format!("{}: {}", t.title, t.detail), SLACK_SECTION_MAX);
    let section = cut_chars(
        &format!("{icon} *{}*\n{}", escape(&t.title), escape(&t.detail)),
        SLACK_SECTION_MAX,
    );
    json!({
        "text": escape(&text),
        "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": section } }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(detail: &str) -> Trigger {
        Trigger {
            id: "attention/S-0001@abcdef/blocked@implement.0/5000".into(),
            kind: TriggerKind::StoryBlocked,
            story: Some("S-0001".into()),
            title: "S-0001 is blocked: Parse <config>".into(),
            detail: detail.into(),
            at_ms: 5_000,
            digest: None,
            story_key: "S-0001@abcdef".into(),
        }
    }

    /// The incoming-webhook shape: a string `text`, and `blocks` of sections whose
    /// `text` is a mrkdwn text object of at most 3000 characters.
    pub(crate) fn assert_slack_shape(v: &Value) {
        let o = v.as_object().expect("an object");
        assert!(o.keys().all(|k| k == "text" || k == "blocks"), "{v}");
        assert!(o["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
        let blocks = o["blocks"].as_array().expect("blocks");
        assert!(!blocks.is_empty() && blocks.len() <= 50, "{v}");
        for b in blocks {
            assert_eq!(b["type"], "section", "{v}");
            assert_eq!(b["text"]["type"], "mrkdwn", "{v}");
            let t = b["text"]["text"].as_str().expect("section text");
            assert!(
                !t.is_empty() && t.chars().count() <= SLACK_SECTION_MAX,
                "{v}"
            );
        }
    }

    #[test]
    fn the_slack_payload_has_the_incoming_webhook_shape_escaped_and_cut() {
        let v = slack(&trigger("implement failed 3 attempts: a & b"));
        assert_slack_shape(&v);
        let section = v["blocks"][0]["text"]["text"].as_str().expect("text");
        assert!(
            section.contains("*S-0001 is blocked: Parse &lt;config&gt;*"),
            "{section}"
        );
        assert!(section.ends_with("a &amp; b"), "{section}");
        let long = slack(&trigger(&"é".repeat(10_000)));
        assert_slack_shape(&long);
    }

    #[test]
    fn the_webhook_payload_is_the_trigger_and_the_node() {
        let v = webhook(&trigger("why"), "12D3KooWnode");
        assert_eq!(v["id"], "attention/S-0001@abcdef/blocked@implement.0/5000");
        assert_eq!(v["kind"], "story_blocked");
        assert_eq!(v["story"], "S-0001");
        assert_eq!(v["detail"], "why");
        assert_eq!(v["at_ms"], 5_000);
        assert_eq!(v["node"], "12D3KooWnode");
        assert!(
            v.get("story_key").is_none() && v.get("digest").is_none(),
            "{v}"
        );
    }
}
