//! Accepted connections: TCP_NODELAY, and work a handler leaves for after
//! its response has been written.
//!
//! A cache miss stores its answer (the L1 insert, the L2/L3 writes queued)
//! after the answer has gone to the client: the handler leaves the store in
//! its connection's [`AfterWrite`], and the connection's socket wrapper
//! ([`Deferring`]) runs it right after the next write to the socket, on the
//! same task, with no wake-up of another thread. On a keep-alive connection
//! that is the moment the response leaves; the client's next request comes
//! after it. What is left when the connection goes (no write came) runs then.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::serve::{IncomingStream, Listener};
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use uat_cache::DeferredPut;

/// What a handler knows of its connection (axum's `ConnectInfo<ConnInfo>`
/// extension, set by [`crate::serve`]).
#[derive(Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Work for after the connection's next write (a miss's cache store).
    pub after_write: AfterWrite,
}

/// One connection's work for after its next write. Cheap to clone.
#[derive(Clone, Default)]
pub struct AfterWrite(Arc<Slot>);

#[derive(Default)]
struct Slot {
    /// Set while `jobs` is not empty: a write checks this alone.
    pending: AtomicBool,
    jobs: Mutex<Vec<DeferredPut>>,
}

impl AfterWrite {
    /// Leaves a store for after the connection's next write.
    pub fn defer(&self, put: DeferredPut) {
        self.0.jobs.lock().push(put);
        self.0.pending.store(true, Ordering::Release);
    }

    /// Runs what is left: dropping a [`DeferredPut`] stores it. Under the
    /// lock, which a store never takes, so the list keeps its allocation.
    fn run(&self) {
        if !self.0.pending.load(Ordering::Acquire) {
            return;
        }
        let mut jobs = self.0.jobs.lock();
        self.0.pending.store(false, Ordering::Release);
        jobs.clear();
    }
}

/// Extractor of the request's [`AfterWrite`]: present when the request came
/// through [`crate::serve`] (not, say, through `tower::ServiceExt::oneshot`).
/// Never rejects.
pub struct After(pub Option<AfterWrite>);

impl<S: Send + Sync> FromRequestParts<S> for After {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(After(
            parts
                .extensions
                .get::<ConnectInfo<ConnInfo>>()
                .map(|c| c.0.after_write.clone()),
        ))
    }
}

/// A socket that runs its connection's [`AfterWrite`] after every write.
pub struct Deferring<IO> {
    io: IO,
    after: AfterWrite,
}

impl<IO> Deferring<IO> {
    /// Wraps `io` with an empty [`AfterWrite`].
    pub fn new(io: IO) -> Self {
        Deferring {
            io,
            after: AfterWrite::default(),
        }
    }

    /// The connection's [`AfterWrite`].
    pub fn after_write(&self) -> &AfterWrite {
        &self.after
    }
}

impl<IO> Drop for Deferring<IO> {
    fn drop(&mut self) {
        self.after.run();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Deferring<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

// Run after the write whatever its outcome: when the write did not happen
// (the socket is full, or gone), storing now is what the handler would
// have done anyway.
impl<IO: AsyncWrite + Unpin> AsyncWrite for Deferring<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after.run();
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after.run();
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.after.run();
        r
    }
}

/// The server's listener: TCP connections with TCP_NODELAY, each wrapped
/// in [`Deferring`].
pub struct DeferringListener(pub TcpListener);

impl Listener for DeferringListener {
    type Io = Deferring<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's accept loop for TCP (it retries on errors such as EMFILE).
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        // Nagle's algorithm would hold small responses back ~40 ms on a
        // keep-alive connection.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        (Deferring::new(tcp), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, DeferringListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, DeferringListener>) -> Self {
        ConnInfo {
            remote: *stream.remote_addr(),
            after_write: stream.io().after_write().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use uat_cache::{CacheKey, RequestKind, TieredCache};

    fn deferred(cache: &TieredCache, i: u64) -> (CacheKey, DeferredPut) {
        let key =
            CacheKey::for_request("t", "m", RequestKind::Chat, &serde_json::json!({ "i": i }));
        let put = cache.defer_put(
            key.clone(),
            bytes::Bytes::from_static(b"{}"),
            Duration::from_secs(60),
            None,
        );
        (key, put)
    }

    #[tokio::test]
    async fn a_deferred_store_runs_after_the_next_write_and_not_before() {
        let cache = TieredCache::builder().l1(1 << 20).build();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Deferring::new(server);
        let (key, put) = deferred(&cache, 1);
        conn.after_write().defer(put);
        let l1 = cache.l1().unwrap();
        assert!(!l1.contains(&key), "stored before any write");
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(l1.contains(&key), "not stored after the write");
        let mut got = [0u8; 17];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn requests_through_serve_carry_their_connections_after_write() {
        let listener = crate::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|After(after): After| async move { after.is_some().to_string() }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        let body = reqwest::get(format!("http://{addr}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "true");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn what_no_write_ran_runs_when_the_connection_goes() {
        let cache = TieredCache::builder().l1(1 << 20).build();
        let (_client, server) = tokio::io::duplex(1024);
        let conn = Deferring::new(server);
        let (key, put) = deferred(&cache, 2);
        conn.after_write().defer(put);
        drop(conn);
        assert!(cache.l1().unwrap().contains(&key));
    }
}
