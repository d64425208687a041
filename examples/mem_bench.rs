//! Where a node's memory goes with a large backlog: the live heap (a counting allocator,
//! not RSS) of each part of one document holding N stories, written locally in batches
//! of 10,000 and then loaded from its own save as a restarted node loads it.
//!
//! ```sh
//! cargo build --release --features bench --example mem_bench
//! target/release/examples/mem_bench --stories 100000
//! ```
//!
//! Prints, in MB of live heap: the written document (automerge plus this crate's decoded
//! facts), the same loaded from its save, automerge alone loaded from that save, and the
//! view folded from it. RSS is larger (allocator slack, the runtime, sled): see
//! `backlog_bench`.

use clap::Parser;
#[path = "common/backlog.rs"]
mod backlog;
use backlog::story;
use mesh_agent::core::model::NewStory;
use mesh_agent::core::state::Doc;
use mesh_agent::core::trust::Signer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes it holds for the program.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed through to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mb() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / 1e6
}

#[derive(Parser, Debug)]
#[command(about = "Live heap of a document's parts at N stories (automerge, decoded facts, view)")]
struct Args {
    /// Stories in the document.
    #[arg(long, default_value_t = 100_000)]
    stories: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.stories;
    let signer = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let author = signer.author().to_string();
    let base = mb();
    let mut doc = Doc::new([1; 16]).with_signer(signer);
    let mut i = 0;
    while i < n {
        let batch: Vec<NewStory> = (i..(i + 10_000).min(n)).map(story).collect();
        doc.add_story_batch(&batch, "bench", &author, 1)
            .map_err(|e| anyhow::anyhow!("batch at {i}: {e}"))?;
        i += batch.len();
    }
    let written = mb() - base;
    let bytes = doc.save();
    drop(doc);
    let base = mb();
    let doc = Doc::load([2; 16], &bytes, &[])?;
    let loaded = mb() - base;
    let base = mb();
    let view = doc.view();
    let folded = mb() - base;
    drop(view);
    drop(doc);
    let base = mb();
    let bare = automerge::AutoCommit::load(&bytes)?;
    let automerge_only = mb() - base;
    drop(bare);
    println!(
        "| stories | saved MB | written doc MB | loaded doc MB | of which automerge MB | view MB |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {:.1} | {written:.1} | {loaded:.1} | {automerge_only:.1} | {folded:.1} |",
        bytes.len() as f64 / 1e6
    );
    Ok(())
}
