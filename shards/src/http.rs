//! The HTTP edge of a shard: accepting connections, the limits on them, TLS, and hyper 1.x
//! driven over glommio streams.
//!
//! I/O path choices (see docs/benchmarks.md): hyper reads into its own buffer's spare capacity,
//! which we hand to the socket without zeroing it first; responses are flattened by hyper
//! into one buffer (`writev(false)`) so that a response is one write. hyper's
//! `pipeline_flush` is off on purpose: it makes hyper buffer a response body without limit
//! while the socket is full, so a slow reader of a streamed body (the event stream, a large
//! file) would be buffered for instead of pushing back.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use hyper::server::conn::http1;

use crate::api;
use crate::shard::Shard;

/// Adapts a futures-io stream (glommio TCP, or TLS over it) to hyper's I/O traits.
pub struct HyperIo<T>(pub T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the slice is handed only to the stream's poll_read, which writes received
        // bytes into it and never reads it; we then advance by exactly the count it reports
        // written. This avoids zeroing hyper's read buffer on every read.
        let unfilled = unsafe { &mut *(buf.as_mut() as *mut [MaybeUninit<u8>] as *mut [u8]) };
        match Pin::new(&mut self.0).poll_read(cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: poll_read initialized the first n bytes.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// hyper's timer (header read timeout, keep-alive) on glommio's timers.
#[derive(Clone, Copy)]
pub struct GlommioTimer;

struct GlommioSleep(glommio::timer::Timer);

// SAFETY: hyper requires `Sleep: Send + Sync`, but our connections are spawned with
// `spawn_local` on one shard's executor and never leave its thread; the timer is created,
// polled and dropped there. Nothing ever sends it to another thread.
unsafe impl Send for GlommioSleep {}
unsafe impl Sync for GlommioSleep {}

impl Future for GlommioSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for GlommioSleep {}

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(GlommioSleep(glommio::timer::Timer::new(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// Accepts connections until the shard drains, then waits for open connections to finish
/// (up to the grace period).
pub async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(GlommioTimer)
        .keep_alive(true)
        .header_read_timeout(Duration::from_millis(shard.cfg.header_read_timeout_ms))
        .max_buf_size(shard.cfg.header_bytes_max.max(8192))
        .writev(false);
    let builder = Rc::new(builder);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.draining.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let _ = stream.set_nodelay(true);
        if shard.open_connections.get() >= shard.cfg.connections_per_shard_max {
            let request_id = api::new_request_id(&shard);
            glommio::spawn_local(refuse_overloaded(stream, shard.id, request_id)).detach();
            continue;
        }
        shard.open_connections.set(shard.open_connections.get() + 1);
        let conn_shard = Rc::clone(&shard);
        let builder = Rc::clone(&builder);
        let guard = ConnectionGuard(Rc::clone(&conn_shard));
        // Two kinds of task: a plain connection's task is not sized for TLS state it never
        // has (every open connection, idle event streams included, carries its task).
        let task = match tls.clone() {
            None => glommio::spawn_local(async move {
                serve_connection(conn_shard, &builder, HyperIo(stream), peer).await;
                drop(guard);
            }),
            Some(acceptor) => glommio::spawn_local(async move {
                serve_tls(conn_shard, &builder, stream, acceptor, peer).await;
                drop(guard);
            }),
        };
        task.detach();
    }
    drop(listener);
    // Stop accepting happened above; now wait for the open connections to finish.
    let grace = Instant::now() + Duration::from_millis(shard.cfg.shutdown_grace_ms);
    while shard.open_connections.get() > 0 && Instant::now() < grace {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

struct ConnectionGuard(Rc<Shard>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let n = self.0.open_connections.get();
        self.0.open_connections.set(n.saturating_sub(1));
    }
}

/// A TLS connection: the handshake (within the header read timeout), then HTTP over it.
async fn serve_tls(
    shard: Rc<Shard>,
    builder: &http1::Builder,
    stream: TcpStream,
    acceptor: futures_rustls::TlsAcceptor,
    peer: IpAddr,
) {
    let handshake_timeout = Duration::from_millis(shard.cfg.header_read_timeout_ms);
    let handshake =
        futures_lite::future::or(async { Some(acceptor.accept(stream).await) }, async {
            glommio::timer::sleep(handshake_timeout).await;
            None
        })
        .await;
    match handshake {
        Some(Ok(tls_stream)) => serve_connection(shard, builder, HyperIo(tls_stream), peer).await,
        Some(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        None => tracing::debug!("TLS handshake timed out"),
    }
}

async fn serve_connection<T>(
    shard: Rc<Shard>,
    builder: &http1::Builder,
    io: HyperIo<T>,
    peer: IpAddr,
) where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let svc_shard = Rc::clone(&shard);
    let service = hyper::service::service_fn(move |req| {
        let shard = Rc::clone(&svc_shard);
        // Boxed per request: hyper keeps the box it puts a request's future in for the whole
        // life of the connection, sized for the largest route's future, so an idle
        // connection (an event stream above all) would carry that much forever. This way it
        // holds a pointer, and the future's memory goes back when the answer is made.
        let answer: Answer = Box::pin(async move { Ok(api::handle(shard, req, peer).await) });
        answer
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut drain = std::pin::pin!(shard.draining.wait());
    let mut shutting_down = false;
    let result = std::future::poll_fn(|cx| {
        if !shutting_down && drain.as_mut().poll(cx).is_ready() {
            // Finish the request in flight (if any), then close; idle connections close now.
            conn.as_mut().graceful_shutdown();
            shutting_down = true;
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A request's future as the connection keeps it (see `serve_connection`).
type Answer = Pin<
    Box<dyn Future<Output = Result<hyper::Response<crate::body::Body>, std::convert::Infallible>>>,
>;

/// Over the connection limit: answer 503 with Retry-After and close, without hyper.
async fn refuse_overloaded(mut stream: TcpStream, shard: usize, request_id: String) {
    use futures_lite::AsyncWriteExt;
    let body = nova_protocol::error_body("overloaded", "too many connections; retry shortly");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nx-request-id: {request_id}\r\nx-nova-shard: {shard}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.close().await;
    };
    let _ = futures_lite::future::or(
        async {
            write.await;
        },
        glommio::timer::sleep(Duration::from_secs(1)),
    )
    .await;
}

/// Loads the certificate chain and key for TLS.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<futures_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(futures_rustls::TlsAcceptor::from(Arc::new(config)))
}
