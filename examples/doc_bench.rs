//! What a document of N stories costs one node, with every fact signed and checked:
//! a local write (seal, check, commit, read the change back), a peer applying that
//! write's change, the view fold, and loading the whole document from a snapshot (every
//! value verified). `scripts/bench --doc` runs it; docs/PERFORMANCE.md "Signed facts"
//! has the figures.
//!
//!     cargo run --release --example doc_bench -- [--stories 1000,10000] [--samples 50]

use mesh_agent::core::lease::{ClaimFact, Resource};
use mesh_agent::core::model::{NewStory, Phase};
use mesh_agent::core::state::{Doc, SyncState};
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
    println!("| stories | facts | write p50 / p99 ms | peer applies it p50 ms | fold ms | load ms | snapshot |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let mut a = Doc::new([1; 16]).with_test_names();
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
        let mut b = Doc::new([2; 16]).with_test_names();
        sync(&mut a, &mut b);
        let keys: Vec<String> = a.view().stories.keys().cloned().collect();
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
        let t = Instant::now();
        let view = b.view();
        let fold = ms(t.elapsed());
        assert_eq!(view.stories.len(), n);
        let snap = a.save();
        let t = Instant::now();
        let loaded = Doc::load_test_names([3; 16], &snap, &[]).expect("load");
        let load = ms(t.elapsed());
        assert_eq!(loaded.view().stories.len(), n);
        println!(
            "| {n} | {} | {:.2} / {:.2} | {:.2} | {fold:.1} | {load:.0} | {:.1} MB |",
            n + samples,
            pct(writes.clone(), 0.5),
            pct(writes, 0.99),
            pct(applies, 0.5),
            snap.len() as f64 / 1e6
        );
    }
}
