//! The origin's response body: 64 KiB chunks, counted as they are handed out, optionally
//! throttled and tampered with.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::origin::{BodyLength, OriginState};

const CHUNK: usize = 64 * 1024;

pub struct ChunkBody {
    data: Bytes,
    pos: usize,
    state: Arc<OriginState>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Waiting for the origin to release held bodies.
    held: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl ChunkBody {
    pub(crate) fn new(data: Bytes, state: Arc<OriginState>) -> ChunkBody {
        ChunkBody {
            data,
            pos: 0,
            state,
            sleep: None,
            held: None,
        }
    }

    /// A wait for the release when this body is past the held point while bodies are held.
    fn hold(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>> {
        let past = self.pos as u64 >= self.state.hold_after.load(Ordering::SeqCst);
        if !past || !*self.state.holding.borrow() {
            return None;
        }
        let mut holding = self.state.holding.subscribe();
        Some(Box::pin(async move {
            let _ = holding.wait_for(|held| !held).await;
        }))
    }

    /// The next chunk, tampered with when the origin is told to, and counted as served.
    fn next_chunk(&mut self) -> Bytes {
        let end = (self.pos + CHUNK).min(self.data.len());
        let mut chunk = self.data.slice(self.pos..end);
        self.pos = end;
        if self.state.tamper.load(Ordering::SeqCst) {
            let mut bytes = chunk.to_vec();
            bytes[0] ^= 0xff;
            chunk = Bytes::from(bytes);
        }
        self.state
            .served
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        chunk
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        if self.pos >= self.data.len() {
            return Poll::Ready(None);
        }
        if self.held.is_none() {
            self.held = self.hold();
        }
        if let Some(held) = self.held.as_mut() {
            if held.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.held = None;
        }
        let chunk = self.next_chunk();
        let rate = self.state.rate.load(Ordering::SeqCst);
        if rate > 0 {
            let wait = Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Exact for a declared length; unknown for chunked, so hyper does not add a
    /// `Content-Length` of its own.
    fn size_hint(&self) -> SizeHint {
        match self.state.options.length {
            BodyLength::Declared => SizeHint::with_exact((self.data.len() - self.pos) as u64),
            BodyLength::Chunked => SizeHint::default(),
        }
    }
}
