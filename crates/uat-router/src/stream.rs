//! A routed stream: the first chunk (already received, which is what ends
//! the retry window), then the rest, with in-flight accounting, metrics and
//! breaker feedback when the upstream breaks off.

use crate::error::Failure;
use crate::provider::{ChunkStream, StreamChunk};
use crate::router::Slot;
use crate::stats::InFlightGuard;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// A stream that has produced its first chunk. Yields that chunk, then the
/// rest; an `Err` item ends it (the upstream broke off). Dropping it drops
/// the upstream request.
pub struct RoutedStream {
    pub(crate) first: Option<StreamChunk>,
    pub(crate) rest: ChunkStream,
    pub(crate) slot: Arc<Slot>,
    pub(crate) _guard: InFlightGuard,
    pub(crate) start: Instant,
    pub(crate) done: bool,
}

impl std::fmt::Debug for RoutedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedStream")
            .field("provider", &self.slot.name)
            .finish()
    }
}

impl Stream for RoutedStream {
    type Item = Result<StreamChunk, Failure>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.rest.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                self.slot
                    .metrics
                    .observe_duration(self.start.elapsed().as_secs_f64());
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(u) = &chunk.usage {
                    self.slot.metrics.tokens(u);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(f))) => {
                self.done = true;
                tracing::warn!(provider = %self.slot.name, reason = %f, "upstream stream broke off");
                self.slot.failure(&f, self.start.elapsed());
                Poll::Ready(Some(Err(f)))
            }
        }
    }
}
