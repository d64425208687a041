//! The `[notify]` section of the node's config: where notifications go (sinks) and the
//! pipeline's timing. Validation names the key, the value and what is allowed.

use crate::config::ConfigError;
use crate::core::notify::TriggerKind;
use serde::{Deserialize, Serialize};

/// `[notify]`: sinks and timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where notifications go (`[[notify.sink]]`); none: this node sends nothing (and
    /// owns nothing: another node with sinks sends).
    pub sink: Vec<SinkConfig>,
    /// The digest covers this long and is sent once each period ends (default a day).
    pub digest_period_ms: u64,
    /// Triggers older than this are never sent (a node joining an old mesh does not
    /// replay its history).
    pub max_age_ms: u64,
    /// A failed send is retried after retry_base_ms, doubling to retry_max_ms (+ up to
    /// 25 % jitter).
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long one request or command may take.
    pub timeout_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        let core = crate::core::notify::NotifyConfig::default();
        NotifyConfig {
            sink: Vec::new(),
            digest_period_ms: core.digest_period_ms,
            max_age_ms: core.max_age_ms,
            retry_base_ms: core.retry_base_ms,
            retry_max_ms: core.retry_max_ms,
            timeout_ms: 10_000,
        }
    }
}

/// What a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A JSON POST of the trigger to `url`.
    Webhook,
    /// A Slack incoming webhook at `url` (`text` and one mrkdwn section).
    Slack,
    /// A program (`argv`) run with the trigger's JSON on its stdin (e.g. a script that
    /// calls `sendmail`).
    Command,
}

/// One `[[notify.sink]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kind: SinkKind,
    /// For webhook and slack: http:// or https:// (a secret: never logged).
    #[serde(default)]
    pub url: String,
    /// For command: the program and its arguments.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Which triggers go here (story_blocked, needs_attention, security_concern,
    /// budget_exhausted, git_unavailable, digest); empty: all.
    #[serde(default)]
    pub triggers: Vec<String>,
}

impl SinkConfig {
    /// The kinds of trigger this sink takes.
    pub fn kinds(&self) -> Vec<TriggerKind> {
        if self.triggers.is_empty() {
            return TriggerKind::ALL.to_vec();
        }
        self.triggers
            .iter()
            .filter_map(|t| TriggerKind::parse(t))
            .collect()
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

impl NotifyConfig {
    /// Checks every value; the first problem wins.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, s) in self.sink.iter().enumerate() {
            let key = |k: &str| format!("notify.sink[{i}].{k}");
            match s.kind {
                SinkKind::Webhook | SinkKind::Slack => {
                    let scheme_ok = ["http://", "https://"]
                        .iter()
                        .any(|p| s.url.len() > p.len() && s.url.starts_with(p));
                    if !scheme_ok || s.url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(invalid(
                            &key("url"),
                            "(hidden: it is a secret)",
                            "expected an http:// or https:// URL without spaces",
                        ));
                    }
                    if !s.argv.is_empty() {
                        return Err(invalid(
                            &key("argv"),
                            format!("{:?}", s.argv),
                            "only a command sink takes argv",
                        ));
                    }
                }
                SinkKind::Command => {
                    if s.argv.first().is_none_or(|p| p.trim().is_empty()) {
                        return Err(invalid(
                            &key("argv"),
                            format!("{:?}", s.argv),
                            "expected a program and its arguments, e.g. [\"/usr/local/bin/mail-team\"]",
                        ));
                    }
                    if !s.url.is_empty() {
                        return Err(invalid(
                            &key("url"),
                            "(hidden)",
                            "a command sink takes argv, not url",
                        ));
                    }
                }
            }
            for t in &s.triggers {
                if TriggerKind::parse(t).is_none() {
                    let names: Vec<&str> = TriggerKind::ALL.iter().map(|k| k.as_str()).collect();
                    return Err(invalid(
                        &key("triggers"),
                        format!("{t:?}"),
                        &format!("allowed values are {}", names.join(", ")),
                    ));
                }
            }
        }
        for (k, v, lo, hi) in [
            (
                "digest_period_ms",
                self.digest_period_ms,
                1_000,
                31 * 86_400_000,
            ),
            ("max_age_ms", self.max_age_ms, 1_000, 365 * 86_400_000),
            ("retry_base_ms", self.retry_base_ms, 10, 3_600_000),
            ("timeout_ms", self.timeout_ms, 100, 600_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(invalid(
                    &format!("notify.{k}"),
                    v,
                    &format!("allowed {lo}..={hi}"),
                ));
            }
        }
        if !(self.retry_base_ms..=86_400_000).contains(&self.retry_max_ms) {
            return Err(invalid(
                "notify.retry_max_ms",
                self.retry_max_ms,
                "allowed notify.retry_base_ms..=86400000 (a day)",
            ));
        }
        Ok(())
    }

    /// The kinds at least one sink takes.
    pub fn kinds(&self) -> std::collections::BTreeSet<TriggerKind> {
        self.sink.iter().flat_map(SinkConfig::kinds).collect()
    }

    /// The roles this node announces (`notify:<kind>` for each kind it sends).
    pub fn roles(&self) -> Vec<String> {
        self.kinds().into_iter().map(TriggerKind::role).collect()
    }

    /// The core's settings; `warmup_ms`: how long a node listens to its peers before it
    /// sends anything (the membership's dead-after, so a dead owner is known dead).
    pub fn core(&self, warmup_ms: u64) -> crate::core::notify::NotifyConfig {
        crate::core::notify::NotifyConfig {
            kinds: self.kinds(),
            digest_period_ms: self.digest_period_ms,
            max_age_ms: self.max_age_ms,
            retry_base_ms: self.retry_base_ms,
            retry_max_ms: self.retry_max_ms,
            warmup_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, CONFIG_FILE};

    fn load(text: &str) -> Result<Config, String> {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join(CONFIG_FILE), text).expect("write");
        let c = Config::load(d.path(), vec![]).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn sinks_load_from_toml_and_announce_the_kinds_they_take() {
        let c = load(
            r#"
[notify]
digest_period_ms = 3600000
[[notify.sink]]
kind = "slack"
url = "https://hooks.slack.com/services/T000/B000/XXXX"
triggers = ["story_blocked", "digest"]
[[notify.sink]]
kind = "command"
argv = ["/usr/local/bin/mail-team", "--to", "team@example.com"]
triggers = ["security-concern"]
"#,
        )
        .expect("valid");
        assert_eq!(c.notify.sink.len(), 2);
        assert_eq!(c.notify.digest_period_ms, 3_600_000);
        assert_eq!(
            c.notify.roles(),
            [
                "notify:story_blocked",
                "notify:security_concern",
                "notify:digest"
            ]
        );
        assert!(
            NotifyConfig::default().roles().is_empty(),
            "no sinks, no role"
        );
        assert_eq!(
            NotifyConfig {
                sink: vec![SinkConfig {
                    kind: SinkKind::Webhook,
                    url: "http://x/".into(),
                    argv: vec![],
                    triggers: vec![],
                }],
                ..Default::default()
            }
            .kinds()
            .len(),
            TriggerKind::ALL.len(),
            "no filter: every kind"
        );
    }

    #[test]
    fn bad_sinks_are_one_clear_line_that_never_shows_the_url() {
        let e = load("[[notify.sink]]\nkind = \"slack\"\nurl = \"ftp://secret-token\"\n")
            .expect_err("bad scheme");
        assert!(
            e.contains("notify.sink[0].url") && !e.contains("secret-token"),
            "{e}"
        );
        let e = load("[[notify.sink]]\nkind = \"command\"\n").expect_err("no argv");
        assert!(e.contains("notify.sink[0].argv"), "{e}");
        let e = load(
            "[[notify.sink]]\nkind = \"webhook\"\nurl = \"http://x/\"\ntriggers = [\"all\"]\n",
        )
        .expect_err("bad trigger");
        assert!(e.contains("allowed values are story_blocked"), "{e}");
        let e = load("[[notify.sink]]\nkind = \"pager\"\n").expect_err("bad kind");
        assert!(e.contains("pager"), "{e}");
        let e =
            load("[notify]\nretry_base_ms = 5000\nretry_max_ms = 100\n").expect_err("max < base");
        assert!(e.contains("notify.retry_max_ms"), "{e}");
    }
}
