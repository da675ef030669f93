//! Measures a back-to-source download through this crate: ranged GETs of every piece, a few at
//! a time, into a fresh storage, then an export. Prints wall time, CPU time and peak RSS.
//!
//!     cargo run --release -p damselfly-transfer --example fetch_origin -- URL STORAGE_DIR OUTPUT [CONCURRENCY]

use damselfly_core::digest::TRUSTED_PIECE_DIGEST_ALGORITHM;
use damselfly_core::PieceLayout;
use damselfly_storage::{Storage, StorageConfig};
use damselfly_transfer::{Backend, BackendConfig, OriginPiece, RateLimiter};
use futures::StreamExt;
use std::time::Instant;

fn cpu_seconds_and_max_rss_kib() -> (f64, i64) {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime) + secs(usage.ru_stime), usage.ru_maxrss)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, dir, output) = (&args[1], &args[2], &args[3]);
    let concurrency: usize = args.get(4).map(|c| c.parse()).transpose()?.unwrap_or(8);
    let storage = Storage::open(StorageConfig {
        keep: false,
        ..StorageConfig::with_dir(dir)
    })?;
    let backend = Backend::new(BackendConfig::default())?;
    let (cpu_before, _) = cpu_seconds_and_max_rss_kib();
    let started = Instant::now();

    let stat = backend.stat(url, &[]).await?;
    let length = stat.content_length.ok_or("no length")?;
    let layout = PieceLayout::new(length, None);
    let id = "f".repeat(64);
    storage
        .prepare_task(&id, length, layout.piece_length, stat.headers)
        .await?;
    let limiter = [RateLimiter::unlimited()];
    let mut fetches = futures::stream::iter(layout.spans())
        .map(|span| {
            let (backend, storage, id, limiter) = (&backend, &storage, &id, &limiter);
            async move {
                let piece = OriginPiece {
                    url,
                    headers: &[],
                    storage,
                    task_id: id,
                    span,
                    limiters: limiter,
                    trusted: Some(TRUSTED_PIECE_DIGEST_ALGORITHM),
                };
                backend.fetch_piece(&piece).await
            }
        })
        .buffer_unordered(concurrency);
    while let Some(result) = fetches.next().await {
        result?;
    }
    storage.finish_task(&id)?;
    let method = storage
        .export(&id, std::path::Path::new(output), true, false)
        .await?;

    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, max_rss) = cpu_seconds_and_max_rss_kib();
    let gib = length as f64 / (1u64 << 30) as f64;
    println!(
        "{length} bytes in {wall:.3}s ({:.0} MiB/s), cpu {:.3}s ({:.3} s/GiB), max rss {} MiB, {method:?}",
        length as f64 / wall / 1048576.0,
        cpu_after - cpu_before,
        (cpu_after - cpu_before) / gib,
        max_rss / 1024
    );
    Ok(())
}
