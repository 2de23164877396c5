//! The HTTP server loop: axum's router on hyper connections, with the limits `axum::serve`
//! does not offer: a cap on open connections, a deadline for a client to send its request
//! headers (slowloris), and bounds on header size and count.

use std::{net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Most connections open at once; beyond it, new connections wait in the listen backlog.
    pub max_connections: usize,
    /// Longest time a client may take to send a request's headers (also how long an idle
    /// keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger answers 431. At
    /// least 8192 (hyper's minimum).
    pub max_header_bytes: usize,
    /// Most request headers; more answer 431.
    pub max_headers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

/// Serve `router` on `listener` until `shutdown`, then finish the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let max_connections = limits.max_connections.clamp(1, u32::MAX as usize >> 4);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers.max(1));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);

    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics::gauge!("cas_http_connections").increment(1.0);
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // hyper's header timer starts with the first byte: a connection that never sends
            // one would hold its slot forever.
            let mut first = [0u8; 1];
            let started = tokio::select! {
                () = shutdown.cancelled() => false,
                peeked = tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)) => {
                    matches!(peeked, Ok(Ok(n)) if n > 0)
                }
            };
            if !started {
                metrics::gauge!("cas_http_connections").decrement(1.0);
                return;
            }
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                router.clone().oneshot(request.map(Body::new))
            });
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::trace!(error = %err, "connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            metrics::gauge!("cas_http_connections").decrement(1.0);
            drop(slot);
        });
    }
    // Every open connection holds a slot: having them all back means they are all done.
    let _ = slots.acquire_many(max_connections as u32).await;
    Ok(())
}
