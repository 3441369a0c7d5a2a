//! HTTP/2 streams whose client stops taking data.
//!
//! On HTTP/1 a client that stops reading blocks the socket write, which the
//! connection's write timeout ends. On HTTP/2 the socket keeps moving (other
//! streams, pings) while one stream's flow-control window stays shut: hyper
//! then waits for window and never asks the response body for more, so the
//! body, and the upstream stream and in-flight slot it holds, would be kept
//! for ever. A client could take every slot that way with a few connections.
//!
//! So each HTTP/2 stream task runs under a [`SendWatch`] ([`StreamExec`]
//! spawns it): the response body (the middleware's, which holds the
//! in-flight slot) notes when it hands hyper a frame and when hyper comes
//! back for the next ([`SendWatch::note`]); a stream that has held a frame
//! hyper could not send for `server.write_timeout` is dropped, which resets
//! it and drops its body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    static WATCH: Arc<SendWatch>;
}

/// What one HTTP/2 stream's response body owes hyper.
#[derive(Debug)]
pub(crate) struct SendWatch {
    base: Instant,
    /// Milliseconds after `base`, plus one, since the body handed hyper a
    /// frame hyper has not come back after; 0 while hyper waits on the body
    /// (a slow upstream is not the client's stall).
    owed_since: AtomicU64,
}

impl SendWatch {
    fn new() -> Self {
        SendWatch {
            base: Instant::now(),
            owed_since: AtomicU64::new(0),
        }
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// When the frame hyper holds has been held `timeout`, if it holds one.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.owed_since.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1) + timeout),
        }
    }
}

/// The watch of the HTTP/2 stream task this request is served on (spawned
/// by [`StreamExec`]); `None` on HTTP/1. The response body notes its frames
/// in it ([`SendWatch::note`]).
pub(crate) fn current() -> Option<Arc<SendWatch>> {
    WATCH.try_with(Arc::clone).ok()
}

impl SendWatch {
    /// Notes what the body's `poll_frame` gave hyper: a frame is owed until
    /// hyper comes back for the next (anything else owes nothing).
    pub(crate) fn note<T, E>(&self, polled: &Poll<Option<Result<T, E>>>) {
        let owed = match polled {
            Poll::Ready(Some(Ok(_))) => self.stamp(),
            _ => 0,
        };
        self.owed_since.store(owed, Ordering::Release);
    }
}

/// hyper's executor for HTTP/2 stream tasks: each runs under a fresh
/// [`SendWatch`], and is dropped once its body has held a frame the client
/// would not take for `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamExec {
    pub(crate) timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let watch = Arc::new(SendWatch::new());
        tokio::spawn(Watched {
            inner: Box::pin(WATCH.scope(watch.clone(), fut)),
            watch,
            timer: None,
            timeout: self.timeout,
        });
    }
}

/// A stream task and its watch.
struct Watched<F> {
    inner: Pin<Box<tokio::task::futures::TaskLocalFuture<Arc<SendWatch>, F>>>,
    watch: Arc<SendWatch>,
    /// Armed while a frame is owed; re-armed lazily when it fires early.
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.inner.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            let Some(deadline) = this.watch.deadline(this.timeout) else {
                // Nothing owed: hyper waits on the body, whose wake-up polls
                // this task again. An armed timer may stay; it re-checks.
                return Poll::Pending;
            };
            if Instant::now() >= deadline {
                tracing::debug!(
                    timeout = ?this.timeout,
                    "HTTP/2 stream: the client took no data for the write timeout; reset"
                );
                return Poll::Ready(());
            }
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            // A timer set for an earlier frame fires early and is moved on
            // to this one's deadline (at most once per timeout).
            if timer.deadline() < deadline && timer.is_elapsed() {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    timer.as_mut().reset(deadline);
                    continue;
                }
            }
        }
    }
}
