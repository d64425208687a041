//! Escalation triggers, pure: what in a finished phase needs a human before its story
//! goes on (docs/DESIGN.md §14). The node that writes a result evaluates them with its
//! own thresholds and records what fired in the result (`ResultFact::escalations`), so
//! every node holds the same gate even when configs differ.
//!
//! | trigger | from | holds |
//! |---|---|---|
//! | confidence below `min_confidence` | the executor's handoff | research/plan: implement; implement/rework/review: merge |
//! | plan names ≥ `max_planned_files` files | the plan's handoff | implement |
//! | change touches ≥ `max_changed_files` files | the commit (git shell) | merge |
//! | security concern | the git shell's scan of added lines ([`scan`]) | merge |
//!
//! Retries exhausted (a blocked story) and the `approval` label are not recorded: the view
//! derives them.

use crate::core::model::{AlertKind, Escalation, Handoff, Phase};
use regex::Regex;

/// The thresholds a node applies to the results it writes (config `[attention]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triggers {
    /// A handoff with a confidence under this (0–100) needs a human; 0 turns it off.
    pub min_confidence: u8,
    /// A plan naming at least this many files needs approval before implement; 0: off.
    pub max_planned_files: usize,
    /// A change touching at least this many files needs approval before merge; 0: off.
    pub max_changed_files: usize,
}

impl Default for Triggers {
    fn default() -> Triggers {
        Triggers {
            min_confidence: 40,
            max_planned_files: 12,
            max_changed_files: 20,
        }
    }
}

/// The default security patterns (config `security_patterns` replaces them): secrets
/// committed, dynamic code evaluation, SQL built by string concatenation. Matched against
/// each added line of a change.
pub const DEFAULT_SECURITY_PATTERNS: &[&str] = &[
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"\bAKIA[0-9A-Z]{16}\b",
    r#"(?i)\b(password|passwd|secret|api_?key|token)\s*[:=]\s*["'][^"']{6,}["']"#,
    r"\beval\s*\(",
    r#"(?i)["'](select|insert|update|delete)\b[^"']*["']\s*(\+|\|\||\.\.)"#,
];

/// Longest line a concern quotes.
const MAX_QUOTE: usize = 160;
/// Most concerns recorded for one change.
pub const MAX_CONCERNS: usize = 20;

/// Compiles security patterns; the first that does not compile is the error.
pub fn compile(patterns: &[String]) -> Result<Vec<Regex>, String> {
    patterns
        .iter()
        .map(|p| Regex::new(p).map_err(|e| format!("security pattern {p:?}: {e}")))
        .collect()
}

/// The concerns in a change's added lines (`(file, line)` pairs): one per matching line,
/// naming the file and quoting the line (cut), at most [`MAX_CONCERNS`].
pub fn scan<'a>(
    patterns: &[Regex],
    added: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (file, line) in added {
        if let Some(p) = patterns.iter().find(|p| p.is_match(line)) {
            let mut quote: String = line.trim().chars().take(MAX_QUOTE).collect();
            if quote.len() < line.trim().len() {
                quote.push('…');
            }
            out.push(format!("{file}: {quote} (matches {})", p.as_str()));
            if out.len() >= MAX_CONCERNS {
                break;
            }
        }
    }
    out
}

/// What in `handoff`, the result of `phase`, needs a human.
pub fn escalations(t: &Triggers, phase: Phase, handoff: &Handoff) -> Vec<Escalation> {
    let mut out = Vec::new();
    if t.min_confidence > 0 && !matches!(phase, Phase::Merge) {
        if let Some(c) = handoff.confidence.filter(|c| *c < t.min_confidence) {
            out.push(Escalation {
                kind: AlertKind::LowConfidence,
                detail: format!(
                    "{phase} reported confidence {c}, under {}",
                    t.min_confidence
                ),
            });
        }
    }
    match phase {
        Phase::Plan if t.max_planned_files > 0 && handoff.files.len() >= t.max_planned_files => out
            .push(Escalation {
                kind: AlertKind::LargeChange,
                detail: format!(
                    "the plan touches {} files (at least {}): an architecture decision",
                    handoff.files.len(),
                    t.max_planned_files
                ),
            }),
        Phase::Implement | Phase::Rework => {
            if t.max_changed_files > 0 && handoff.changed_files.len() >= t.max_changed_files {
                out.push(Escalation {
                    kind: AlertKind::LargeChange,
                    detail: format!(
                        "the change touches {} files (at least {})",
                        handoff.changed_files.len(),
                        t.max_changed_files
                    ),
                });
            }
            if !handoff.concerns.is_empty() {
                out.push(Escalation {
                    kind: AlertKind::Security,
                    detail: handoff.concerns.join("; "),
                });
            }
        }
        _ => {}
    }
    out
}

/// The phase an escalation on a result of `phase` holds: research and plan hold
/// implement; implement, rework and review hold merge.
pub fn holds(phase: Phase) -> Option<Phase> {
    match phase {
        Phase::Refine | Phase::Research | Phase::Plan | Phase::PlanReview => Some(Phase::Implement),
        Phase::Implement | Phase::Rework | Phase::Review => Some(Phase::Merge),
        Phase::Merge => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<Regex> {
        let p: Vec<String> = DEFAULT_SECURITY_PATTERNS
            .iter()
            .map(|s| s.to_string())
            .collect();
        compile(&p).expect("the defaults compile")
    }

    #[test]
    fn the_default_patterns_find_secrets_eval_and_concatenated_sql_and_not_plain_code() {
        let p = defaults();
        let bad = [
            ("k.pem", "-----BEGIN RSA PRIVATE KEY-----"),
            ("c.py", "aws = 'AKIAABCDEFGHIJKLMNOP'"),
            ("c.py", "PASSWORD = \"hunter22hunter\""),
            ("a.js", "const f = eval(input)"),
            ("db.py", "q = \"SELECT * FROM users WHERE id = \" + uid"),
        ];
        for (f, line) in bad {
            let found = scan(&p, [(f, line)]);
            assert_eq!(found.len(), 1, "{line} should be a concern");
            assert!(found[0].starts_with(f), "{found:?}");
        }
        let fine = [
            ("a.rs", "let total = a + b;"),
            ("a.py", "password = os.environ[\"PW\"]"),
            (
                "q.py",
                "cur.execute(\"SELECT * FROM t WHERE id = ?\", (uid,))",
            ),
            ("n.rs", "fn evaluate(x: u8) {}"),
        ];
        for (f, line) in fine {
            assert!(scan(&p, [(f, line)]).is_empty(), "{line} is no concern");
        }
    }

    #[test]
    fn a_bad_pattern_is_named_in_the_error() {
        let e = compile(&["ok".into(), "(unclosed".into()]).unwrap_err();
        assert!(e.contains("(unclosed"), "{e}");
    }

    #[test]
    fn each_trigger_fires_at_its_threshold_and_zero_turns_it_off() {
        let t = Triggers {
            min_confidence: 50,
            max_planned_files: 3,
            max_changed_files: 2,
        };
        let h = |conf: u8, files: usize| Handoff {
            confidence: Some(conf),
            files: (0..files).map(|i| format!("f{i}")).collect(),
            changed_files: (0..files).map(|i| format!("f{i}")).collect(),
            ..Handoff::default()
        };
        let kinds = |p: Phase, h: &Handoff, t: &Triggers| -> Vec<AlertKind> {
            escalations(t, p, h).into_iter().map(|e| e.kind).collect()
        };
        assert_eq!(kinds(Phase::Plan, &h(50, 2), &t), vec![]);
        assert_eq!(
            kinds(Phase::Plan, &h(49, 2), &t),
            vec![AlertKind::LowConfidence]
        );
        assert_eq!(
            kinds(Phase::Plan, &h(90, 3), &t),
            vec![AlertKind::LargeChange]
        );
        assert_eq!(
            kinds(Phase::Implement, &h(90, 2), &t),
            vec![AlertKind::LargeChange]
        );
        assert_eq!(kinds(Phase::Review, &h(90, 9), &t), vec![]);
        let mut s = h(90, 1);
        s.concerns = vec!["a.py: eval(x)".into()];
        assert_eq!(kinds(Phase::Rework, &s, &t), vec![AlertKind::Security]);
        let off = Triggers {
            min_confidence: 0,
            max_planned_files: 0,
            max_changed_files: 0,
        };
        assert_eq!(kinds(Phase::Plan, &h(1, 99), &off), vec![]);
        assert_eq!(holds(Phase::Plan), Some(Phase::Implement));
        assert_eq!(holds(Phase::Review), Some(Phase::Merge));
    }
}
