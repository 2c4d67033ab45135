//! The HTTP endpoints on `metrics.listen`: `GET /metrics` (Prometheus text format),
//! `GET /health/live` and `GET /health/ready` (docs/METRICS.md).
//!
//! `run(listener, metrics, stop)` takes its shutdown as a parameter: on `stop` it closes the
//! listener, lets open requests finish (bounded) and returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::metrics::Metrics;

/// Connections served at once; more are closed at once (scrapers and probes are few).
const MAX_CONNECTIONS: usize = 64;
/// A client that does not send its request headers within this time is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests may take to finish after shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds exactly `listen` (`metrics.listen`, checked to be `address:port` by the config).
pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("metrics.listen {listen:?} is not an address:port"))?;
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot serve metrics on {listen} (metrics.listen): {e}; choose a free address:port \
             in metrics.listen or set `metrics: disabled`"
        )
    })
}

/// Serves until `stop` fires.
pub async fn run(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // e.g. too many open files: do not spin
                    warn!(error = %e, "metrics: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!("metrics: too many connections; closing a new one");
            continue;
        };
        let m = metrics.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let m = m.clone();
            async move { Ok::<_, Infallible>(route(&m, &req)) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "metrics: connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("metrics: open connections did not finish in time; closing them");
    }
}

fn route(m: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => match m.encode() {
            Ok(text) => respond(StatusCode::OK, TEXT_FORMAT, text),
            Err(e) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding metrics failed: {e}\n"),
            ),
        },
        "/health/live" => json(StatusCode::OK, r#"{"status":"live"}"#.to_owned()),
        "/health/ready" => {
            let r = m.readiness();
            let status = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                serde_json::to_string(&r).unwrap_or_else(|_| "{}".to_owned()),
            )
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /health/live or /health/ready\n",
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::health::Phase;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_stops_on_cancel() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new("g", "w").unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(run(listener, metrics.clone(), stop.clone()));

        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("observer_worker_info"), "{body}");
        assert_eq!(get(addr, "/health/live").await.0, 200);
        let (status, body) = get(addr, "/health/ready").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("starting"), "{body}");
        assert_eq!(get(addr, "/nope").await.0, 404);

        metrics.set_phase(Phase::Stopping);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on cancel")
            .unwrap();
        assert!(reqwest::get(format!("http://{addr}/health/live"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let first = bind("127.0.0.1:0").await.unwrap();
        let addr = first.local_addr().unwrap().to_string();
        let err = bind(&addr).await.unwrap_err();
        assert!(err.contains("metrics.listen"), "{err}");
    }
}
