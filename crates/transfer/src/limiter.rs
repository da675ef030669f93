//! Bandwidth limits: an async token bucket, and a reader that pays for what it reads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

/// How far ahead of the steady rate a burst may run: short enough that a limit is visible
/// within a second, long enough that 1 MiB reads at a few MiB/s do not stutter.
pub const RATE_LIMIT_BURST: Duration = Duration::from_millis(100);

/// Token bucket in bytes/s; 0 = unlimited. Shared by many tasks (host-wide) or per task.
///
/// Implemented as a virtual clock ("generic cell rate"): each caller reserves its bytes on the
/// clock in arrival order and sleeps until its reservation is due, so callers are served
/// first come, first served, a big request cannot be starved by small ones, and no task wakes
/// up just to find the tokens gone.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    bucket: Option<Arc<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    bytes_per_sec: u64,
    /// When the bytes reserved so far will have been "sent" at the steady rate.
    paid_until: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        if bytes_per_sec == 0 {
            return Self::unlimited();
        }
        Self {
            bucket: Some(Arc::new(Bucket {
                bytes_per_sec,
                paid_until: Mutex::new(Instant::now()),
            })),
        }
    }

    pub fn unlimited() -> Self {
        Self { bucket: None }
    }

    pub fn is_unlimited(&self) -> bool {
        self.bucket.is_none()
    }

    /// The configured rate; None when unlimited.
    pub fn bytes_per_sec(&self) -> Option<u64> {
        self.bucket.as_ref().map(|b| b.bytes_per_sec)
    }

    /// Waits until `bytes` may pass. Free when unlimited.
    pub async fn acquire(&self, bytes: u64) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        if let Some(due) = bucket.reserve(bytes) {
            tokio::time::sleep_until(due).await;
        }
    }
}

impl Bucket {
    /// Books `bytes` on the virtual clock; returns when the caller may go on, if not now.
    fn reserve(&self, bytes: u64) -> Option<Instant> {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        let mut paid_until = self.paid_until.lock().ok()?;
        // Idle time does not build up credit beyond the burst allowance.
        let start = (*paid_until).max(now);
        *paid_until = start + cost;
        let due = *paid_until - RATE_LIMIT_BURST.min(*paid_until - now);
        (due > now).then_some(due)
    }
}

type Payment = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Passes reads through and charges every limiter for the bytes read. The charge is settled
/// before the next read, and [`ThrottledReader::settle`] pays for the last one, so the
/// average rate holds without holding data back.
pub struct ThrottledReader<R> {
    inner: R,
    limiters: Arc<[RateLimiter]>,
    debt: Option<Payment>,
}

impl<R> ThrottledReader<R> {
    pub fn new(inner: R, limiters: &[RateLimiter]) -> Self {
        let limited: Vec<RateLimiter> = limiters
            .iter()
            .filter(|l| !l.is_unlimited())
            .cloned()
            .collect();
        Self {
            inner,
            limiters: limited.into(),
            debt: None,
        }
    }

    /// Waits for the charge of the last read.
    pub async fn settle(&mut self) {
        if let Some(debt) = self.debt.take() {
            debt.await;
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Waits on every limiter in turn for `bytes`.
pub async fn acquire_all(limiters: &[RateLimiter], bytes: u64) {
    for limiter in limiters {
        limiter.acquire(bytes).await;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ThrottledReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(debt) = self.debt.as_mut() {
            ready!(debt.as_mut().poll(cx));
            self.debt = None;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        if read > 0 && !self.limiters.is_empty() {
            let limiters = Arc::clone(&self.limiters);
            self.debt = Some(Box::pin(async move { acquire_all(&limiters, read).await }));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::new(0);
        assert!(limiter.is_unlimited());
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            limiter.acquire(u64::MAX / 2).await;
        }
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_holds_over_time() {
        let limiter = RateLimiter::new(1024 * 1024);
        let started = Instant::now();
        for _ in 0..20 {
            limiter.acquire(256 * 1024).await;
        }
        // 5 MiB at 1 MiB/s, less the burst allowance.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(4800), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(5100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_served_in_arrival_order() {
        let limiter = RateLimiter::new(1000);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for caller in 0..5u64 {
            let (limiter, order) = (limiter.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                // The first, big request must not be overtaken by the small ones after it.
                limiter.acquire(if caller == 0 { 3000 } else { 100 }).await;
                order.lock().unwrap().push(caller);
            }));
            tokio::task::yield_now().await;
        }
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttled_reader_charges_what_it_reads() {
        let data = vec![7u8; 512 * 1024];
        let limiter = RateLimiter::new(256 * 1024);
        let started = Instant::now();
        let mut reader =
            ThrottledReader::new(data.as_slice(), &[limiter, RateLimiter::unlimited()]);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        reader.settle().await;
        assert_eq!(out.len(), data.len());
        assert!(
            started.elapsed() >= Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
    }
}
