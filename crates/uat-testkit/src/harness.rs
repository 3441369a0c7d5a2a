//! Serving an axum app in-process on an ephemeral port.

use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// An app served on `127.0.0.1:<ephemeral>` until dropped.
pub struct TestServer {
    /// The bound address.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Serves `app` with TCP_NODELAY on accepted connections.
    pub async fn serve(app: axum::Router) -> std::io::Result<TestServer> {
        use axum::serve::ListenerExt;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(TestServer {
            addr,
            shutdown: Some(tx),
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
