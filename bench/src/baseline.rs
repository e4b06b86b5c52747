//! The side-by-side baseline: the smallest reasonable hyper 1.x server on one core (a
//! current-thread tokio runtime), answering `GET /health` with `{"status":"ok"}` over
//! keep-alive HTTP/1.1. Nova's `/health` is judged as a ratio of this.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const HEALTH_BODY: &[u8] = br#"{"status":"ok"}"#;
const NOT_FOUND_BODY: &[u8] = br#"{"error":{"code":"not_found","message":"no such route"}}"#;

/// Serves until killed; prints `baseline listening on http://ADDR` once it accepts.
pub fn serve(listen: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let mut stdout = std::io::stdout();
        writeln!(
            stdout,
            "baseline listening on http://{}",
            listener.local_addr()?
        )?;
        stdout.flush()?;
        loop {
            // A failed accept (say, out of file descriptors) drops that one connection
            // attempt; the server keeps serving the others.
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(handle);
                // A client that goes away mid-request is not the baseline's problem.
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if request.method() == Method::GET && request.uri().path() == "/health" {
        (StatusCode::OK, HEALTH_BODY)
    } else {
        (StatusCode::NOT_FOUND, NOT_FOUND_BODY)
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
