//! What a document of N stories costs one node, with every fact signed and checked,
//! beside the same code with signatures neither made nor checked (`KeyScheme::Unchecked`,
//! a benchmark-only mode): a local write (seal, check, commit, read the change back), a
//! peer applying that write's change, a claim settling among five state machines, the
//! view fold, and loading the whole document from a snapshot. `scripts/bench --doc` runs
//! it; docs/PERFORMANCE.md "Signed facts" has the figures.
//!
//! The settle column drives five `Core`s in this one thread with no network: a job
//! finishes, its node writes the result and at once claims the next piece of work; from
//! there until that claim's job starts, every message of every node handled in turn —
//! the CPU a settle costs the whole mesh, which is what signatures change (on a real mesh
//! the peers work in parallel and loopback adds ~0.1 ms a hop).
//!
//!     cargo run --release --example doc_bench -- [--stories 1000,10000] [--samples 50]

use mesh_agent::core::lease::{ClaimFact, LeaseConfig, Resource};
use mesh_agent::core::membership::MembershipConfig;
use mesh_agent::core::model::{NewStory, Phase, Topic};
use mesh_agent::core::sim_handoff::sim_handoff;
use mesh_agent::core::state::{Doc, SyncState};
use mesh_agent::core::{Core, CoreConfig, Effect, Guards, Input, Job};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> ! {
    eprintln!("usage: doc_bench [--stories N,N,...] [--samples N]");
    std::process::exit(2);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn sync(a: &mut Doc, b: &mut Doc) {
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    loop {
        let m1 = a.sync_generate(&mut sa);
        if let Some(m) = &m1 {
            b.sync_receive(&mut sb, m).expect("sync");
        }
        let m2 = b.sync_generate(&mut sb);
        if let Some(m) = &m2 {
            a.sync_receive(&mut sa, m).expect("sync");
        }
        if m1.is_none() && m2.is_none() {
            return;
        }
    }
}

/// A document as the mode reads and writes it.
fn load(actor: u8, snap: &[u8], unchecked: bool) -> Doc {
    if unchecked {
        Doc::load_unchecked([actor; 16], snap, &[]).expect("load")
    } else {
        Doc::load_test_names([actor; 16], snap, &[]).expect("load")
    }
}

const NAMES: [&str; 5] = ["A", "B", "C", "D", "E"];
const WALL: u64 = 1_800_000_000_000;

/// Carries every core's effects to their destinations until none is left; the jobs
/// started, by core.
fn pump(cores: &mut [Core], now: u64, started: &mut Vec<(usize, Job)>) {
    loop {
        let mut moved = false;
        for i in 0..cores.len() {
            while let Some(e) = cores[i].poll_effect() {
                moved = true;
                let from = NAMES[i].to_string();
                match e {
                    Effect::Publish { topic, data } => {
                        for (_, c) in cores.iter_mut().enumerate().filter(|(j, _)| *j != i) {
                            let (from, data) = (from.clone(), data.clone());
                            c.handle(
                                now,
                                match topic {
                                    Topic::Heartbeat => Input::Heartbeat { from, data },
                                    Topic::Events => Input::Event { from, data },
                                },
                            );
                        }
                    }
                    Effect::SendSync { to, data } => {
                        let j = NAMES.iter().position(|n| *n == to).expect("peer");
                        let reply = i as u64;
                        cores[j].handle(now, Input::SyncRequest { from, data, reply });
                    }
                    Effect::Respond { reply, data } => {
                        cores[reply as usize].handle(now, Input::SyncResponse { from, data });
                    }
                    Effect::Probe { to, data } => {
                        let j = NAMES.iter().position(|n| *n == to).expect("peer");
                        let reply = i as u64;
                        cores[j].handle(now, Input::Probe { from, data, reply });
                    }
                    Effect::ProbeAnswer { reply, data } => {
                        cores[reply as usize].handle(now, Input::ProbeAnswer { from, data });
                    }
                    Effect::StartWork(job) => started.push((i, *job)),
                    _ => {}
                }
            }
        }
        if !moved {
            return;
        }
    }
}

/// Claim settle among five cores on a document of the snapshot's stories: per sample, a
/// job finishes and the claimer at once claims the next; the wall time from there until
/// that job starts (the result and the claim reach four peers, the claim settles).
fn settle(snap: &[u8], unchecked: bool, samples: usize) -> Vec<f64> {
    let mut cores: Vec<Core> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cfg = CoreConfig {
                membership: MembershipConfig::default(),
                roles: Phase::ALL.iter().map(|p| p.as_str().to_string()).collect(),
                capacity: 1,
                role_limits: BTreeMap::new(),
                max_sync_bytes: 64 << 20,
                passive: false,
                lease: LeaseConfig::default(),
                work: i == 0,
                broken_winner_rule: false,
                check_view: false,
                stall_after_ms: 0,
                origin_breaker: Default::default(),
                merge_gate: None,
                epoch_after: 0,
                limits: Default::default(),
                triggers: Default::default(),
                budget: Default::default(),
            };
            let mut c = Core::new(
                name.to_string(),
                cfg,
                load(10 + i as u8, snap, unchecked),
                1,
            );
            c.set_guards(Guards {
                join_wait_ms: 0,
                remembers_peers: false,
                clock_skew: false,
            });
            c
        })
        .collect();
    for (i, core) in cores.iter_mut().enumerate() {
        for (_, peer) in NAMES.iter().enumerate().filter(|(j, _)| *j != i) {
            core.handle(0, Input::Connected(peer.to_string()));
        }
    }
    let mut started = Vec::new();
    let mut now = 0;
    let beat = |cores: &mut Vec<Core>, now: u64, all: bool| {
        for c in cores.iter_mut() {
            c.heartbeat(now, WALL + now);
        }
        for c in cores.iter_mut().skip(usize::from(!all)) {
            c.tick(now, WALL + now);
        }
    };
    // Warm-up: peers turn alive, the claimer joins and starts its first job.
    let mut job = None;
    for _ in 0..30 {
        now += 1000;
        beat(&mut cores, now, true);
        pump(&mut cores, now, &mut started);
        if let Some((_, j)) = started.pop() {
            job = Some(j);
            break;
        }
    }
    let mut job = job.expect("no claim settled in the warm-up");
    let mut out = Vec::new();
    for s in 0..samples {
        // The peers beat (untimed): they stay alive in the claimer's view.
        now += 1000;
        beat(&mut cores, now, false);
        pump(&mut cores, now, &mut started);
        // The job finishes: the claimer writes its result and, capacity freed, claims
        // the next piece of work at once. Timed from there until that claim's job starts.
        let outcome = Ok(sim_handoff(&job));
        cores[0].handle(
            now,
            Input::WorkFinished {
                claim: job.claim,
                outcome,
            },
        );
        let t = Instant::now();
        let mut next = None;
        for _ in 0..400 {
            pump(&mut cores, now, &mut started);
            if let Some((_, j)) = started.pop() {
                next = Some(j);
                break;
            }
            now += 5;
            cores[0].tick(now, WALL + now);
        }
        out.push(ms(t.elapsed()));
        job = next.unwrap_or_else(|| panic!("no claim settled in sample {s}"));
    }
    out
}

fn main() {
    let mut sizes = vec![1_000usize, 10_000];
    let mut samples = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--stories" => {
                sizes = val()
                    .split(',')
                    .map(|n| n.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--samples" => samples = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    println!(
        "| stories | signatures | write p50 / p99 ms | peer applies it p50 ms | next claim settles p50 / p99 ms (5 cores) | fold p50 ms | load ms | snapshot |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        for unchecked in [false, true] {
            row(n, samples, unchecked);
        }
    }
}

fn row(n: usize, samples: usize, unchecked: bool) {
    {
        let mut a = load(1, &[], unchecked);
        let t = Instant::now();
        for start in (0..n).step_by(1000) {
            let batch: Vec<NewStory> = (start..n.min(start + 1000))
                .map(|i| NewStory {
                    title: format!("story {i}"),
                    body: "Some body text of a realistic length for a story. ".repeat(4),
                    files: vec![format!("src/f{}.rs", i % 50)],
                    ..Default::default()
                })
                .collect();
            a.add_stories(&batch, "node0", start as u64).expect("add");
            eprintln!(
                "doc_bench: {}/{n} stories ({:.0} s)",
                start + batch.len(),
                t.elapsed().as_secs_f64()
            );
        }
        let mut b = load(2, &[], unchecked);
        sync(&mut a, &mut b);
        let keys: Vec<String> = a.view().stories.keys().map(|k| k.to_string()).collect();
        let (mut writes, mut applies) = (Vec::new(), Vec::new());
        for (k, key) in keys.iter().take(samples).enumerate() {
            let res = Resource::story(key, Phase::Research).expect("resource");
            let fact = ClaimFact {
                resources: vec![(res, 1)],
                holder: "node0".into(),
                ttl_ms: 10_000,
                written_at_ms: k as u64,
                attempt: 1,
                after: None,
            };
            let t = Instant::now();
            a.put_claim(&format!("node0-{}", 1000 + k), &fact)
                .expect("claim");
            writes.push(ms(t.elapsed()));
            let t = Instant::now();
            sync(&mut a, &mut b);
            applies.push(ms(t.elapsed()));
        }
        let mut folds = Vec::new();
        for _ in 0..samples.clamp(1, 20) {
            let t = Instant::now();
            let view = b.view();
            folds.push(ms(t.elapsed()));
            assert_eq!(view.stories.len(), n);
        }
        let snap = a.save();
        let t = Instant::now();
        let loaded = load(3, &snap, unchecked);
        let load_ms = ms(t.elapsed());
        assert_eq!(loaded.view().stories.len(), n);
        eprintln!("doc_bench: settling claims among five cores ({n} stories)");
        let settles = settle(&snap, unchecked, samples);
        println!(
            "| {n} | {} | {:.2} / {:.2} | {:.2} | {:.2} / {:.2} | {:.1} | {load_ms:.0} | {:.1} MB |",
            if unchecked { "off" } else { "on" },
            pct(writes.clone(), 0.5),
            pct(writes, 0.99),
            pct(applies, 0.5),
            pct(settles.clone(), 0.5),
            pct(settles, 0.99),
            pct(folds, 0.5),
            snap.len() as f64 / 1e6
        );
    }
}
