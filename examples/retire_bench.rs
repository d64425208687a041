//! What retiring settled history saves: one document holding N stories carried to merge
//! (research, plan, implement, review, merge: a claim, a result and a release each,
//! implement and merge claims also naming the story's planned file, as the node writes
//! them), then a new epoch's seed cut from it (`Doc::seed`: the merged stories retired
//! whole, into its base). Prints the document saved whole against the seed, the facts
//! kept and left behind, and what cutting and loading the seed took.
//!
//! ```sh
//! cargo build --release --features bench --example retire_bench
//! target/release/examples/retire_bench --stories 10000 --handoff-bytes 0,2000
//! ```
//!
//! The stories are `examples/common/backlog.rs`'s (one planned file of fifty, so files
//! are shared and their claims' token runs grow); `--handoff-bytes` pads each result's
//! summary (0: the built-in simulated executor's terse handoffs; real agents write
//! kilobytes of findings, decisions and plans).

use clap::Parser;
#[path = "common/backlog.rs"]
mod backlog;
use backlog::story;
use mesh_agent::core::lease::{ClaimFact, ReleaseFact, ReleaseReason, Resource};
use mesh_agent::core::model::{Handoff, MergeFact, NewStory, Phase, ResultFact, Verdict, PIPELINE};
use mesh_agent::core::state::Doc;
use mesh_agent::core::trust::Signer;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Document against a new epoch's seed after N stories merged")]
struct Args {
    /// Stories carried to merge.
    #[arg(long, default_value_t = 10_000)]
    stories: usize,
    /// Bytes of summary each result carries, one row per value.
    #[arg(long, value_delimiter = ',', default_value = "0,2000")]
    handoff_bytes: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| stories merged | handoff B | document MB | seed MB | seed / document | facts kept / left | merge ms (write all) | seed ms | seed load ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &pad in &args.handoff_bytes {
        row(args.stories, pad)?;
    }
    Ok(())
}

/// About `len` bytes of words drawn at random from a small vocabulary: text that
/// compresses about as prose does, not a run of one letter.
fn prose(state: &mut u64, len: usize) -> String {
    const WORDS: [&str; 32] = [
        "the", "story", "plan", "change", "test", "module", "handler", "error", "fix", "adds",
        "reads", "writes", "config", "node", "claim", "review", "because", "when", "file",
        "function", "returns", "update", "path", "index", "cache", "request", "token", "merge",
        "branch", "commit", "value", "check",
    ];
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        out.push_str(WORDS[(xorshift(state) % 32) as usize]);
        out.push(' ');
    }
    out
}

/// The next number of a xorshift64 generator: deterministic, no dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A random 40-hex-digit commit id.
fn commit_id(state: &mut u64) -> String {
    let hex: String = (0..3)
        .map(|_| format!("{:016x}", xorshift(state)))
        .collect();
    hex[..40].to_string()
}

fn row(n: usize, pad: usize) -> anyhow::Result<()> {
    let signer = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let me = signer.author().to_string();
    let mut doc = Doc::new([1; 16]).with_signer(signer);
    let mut keys = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<NewStory> = (i..(i + 10_000).min(n)).map(story).collect();
        keys.extend(
            doc.add_story_batch(&batch, "bench", &me, 1)
                .map_err(|e| anyhow::anyhow!("batch at {i}: {e}"))?,
        );
        i += batch.len();
    }
    let t0 = Instant::now();
    let mut file_tokens: BTreeMap<String, u64> = BTreeMap::new();
    let mut claim_no = 0u64;
    let mut seed_rng = 0x9E37_79B9_7F4A_7C15u64;
    for (i, key) in keys.iter().enumerate() {
        let file = story(i).files[0].clone();
        for phase in PIPELINE {
            claim_no += 1;
            let id = format!("{me}-{claim_no}");
            let mut resources = vec![(Resource::story_round(key, phase, 0)?, 1)];
            if matches!(phase, Phase::Implement | Phase::Merge) {
                let t = file_tokens.entry(file.clone()).or_default();
                *t += 1;
                resources.push((Resource::file(&file)?, *t));
            }
            doc.put_claim(
                &id,
                &ClaimFact {
                    resources,
                    holder: me.clone(),
                    ttl_ms: 60_000,
                    written_at_ms: 1,
                    attempt: 1,
                    after: None,
                },
            )?;
            doc.put_result(&ResultFact {
                story: key.clone(),
                phase,
                round: 0,
                claim: id.clone(),
                token: 1,
                holder: me.clone(),
                written_at_ms: 2,
                handoff: Handoff {
                    summary: format!("{phase} done. {}", prose(&mut seed_rng, pad)),
                    verdict: (phase == Phase::Review).then_some(Verdict::Approve),
                    ..Default::default()
                },
                escalations: vec![],
            })?;
            if phase == Phase::Merge {
                doc.put_merge(&MergeFact {
                    story: key.clone(),
                    round: 0,
                    claim: id.clone(),
                    token: 1,
                    holder: me.clone(),
                    // A commit id is random hex: it does not compress as a repeated
                    // one would.
                    commit: commit_id(&mut seed_rng),
                    written_at_ms: 3,
                })?;
            }
            doc.put_release(
                &id,
                &ReleaseFact {
                    why: ReleaseReason::Done,
                    note: String::new(),
                },
                &me,
            )?;
        }
    }
    let wrote = t0.elapsed();
    let whole = doc.save();
    let t1 = Instant::now();
    let seed = doc.seed(1)?;
    let cut = t1.elapsed();
    let t2 = Instant::now();
    let loaded = Doc::load([2; 16], &seed.bytes, &[])?.with_epoch_root(&seed.root)?;
    let view = loaded.view();
    let live = view
        .stories
        .values()
        .filter(|s| s.more.merged.is_some())
        .count();
    let merged = live + view.base().map_or(0, |b| b.retired.len());
    let load = t2.elapsed();
    anyhow::ensure!(merged == n, "the seed shows {merged} of {n} stories merged");
    println!(
        "| {n} | {pad} | {:.2} | {:.2} | {:.1} % | {} / {} | {:.0} | {:.0} | {:.0} |",
        whole.len() as f64 / 1e6,
        seed.bytes.len() as f64 / 1e6,
        100.0 * seed.bytes.len() as f64 / whole.len() as f64,
        seed.kept,
        seed.retired,
        wrote.as_secs_f64() * 1e3,
        cut.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3,
    );
    Ok(())
}
