//! A small HTTP/1.1 server on the node's metrics address, on shard 0's executor:
//! `GET /metrics` (Prometheus text format) and `GET /health` (JSON; 200 when every
//! partition is alive and has a leader, 503 otherwise). One request per connection,
//! answered with `Connection: close`; heads over `REQUEST_HEAD_BYTES_MAX` or slower
//! than `REQUEST_TIMEOUT_MS` get the connection closed, and at most
//! `CONNECTIONS_MAX` are served at once, so a misbehaving scraper costs bounded
//! memory.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::NodeMetrics;
use super::health::HealthBoard;
use crate::tls::{Stream, TlsContext};
use crate::transport::conn::with_deadline;

pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const CONNECTIONS_MAX: usize = 64;

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves one node's metrics and health.
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Arc<NodeMetrics>,
    health: Arc<HealthBoard>,
    /// Copies counters kept outside the registry into it, just before a render.
    collect: Rc<dyn Fn()>,
    /// HTTPS (no client certificate asked) when set.
    tls: Option<Arc<TlsContext>>,
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
}

/// One answer, ready to write.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

impl MetricsServer {
    pub fn bind(
        addr: SocketAddr,
        metrics: Arc<NodeMetrics>,
        health: Arc<HealthBoard>,
        collect: Rc<dyn Fn()>,
    ) -> io::Result<MetricsServer> {
        Ok(MetricsServer {
            listener: crate::transport::conn::listen_exclusive(addr)?,
            metrics,
            health,
            collect,
            tls: None,
        })
    }

    /// Serves HTTPS with the node's certificate.
    pub fn with_tls(mut self, tls: Option<Arc<TlsContext>>) -> MetricsServer {
        self.tls = tls;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr().map_err(io::Error::from)
    }

    /// Accepts scrapes forever.
    pub async fn run(self) {
        let open = Rc::new(Cell::new(0usize));
        let server = Rc::new(self);
        loop {
            let stream =
                crate::transport::conn::accept_retrying(&server.listener, "metrics listener").await;
            if open.get() >= CONNECTIONS_MAX {
                log::warn!("metrics listener: refusing a connection, {CONNECTIONS_MAX} open");
                continue;
            }
            open.set(open.get() + 1);
            let (server, open) = (server.clone(), open.clone());
            glommio::spawn_local(async move {
                if let Err(e) = server.open_and_serve(stream).await {
                    log::debug!("metrics listener: connection ended: {e}");
                }
                open.set(open.get() - 1);
            })
            .detach();
        }
    }

    /// TLS, when the port has it, then one request and its answer, all within
    /// `REQUEST_TIMEOUT_MS`.
    async fn open_and_serve(&self, tcp: TcpStream) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
        let stream = match &self.tls {
            None => Stream::plain(tcp),
            Some(tls) => {
                let config = tls.configs().metrics.clone();
                Stream::accept_tls(tcp, config, deadline)
                    .await
                    .map_err(io::Error::other)?
            }
        };
        self.serve(stream, deadline).await
    }

    async fn serve(&self, mut stream: Stream, deadline: Instant) -> io::Result<()> {
        let exchange = async {
            let head = read_head(&mut stream).await?;
            let (response, head_only) = match parse_request_line(&head) {
                Some(line) => (self.answer(&line), line.method == "HEAD"),
                None => (
                    Response::text("400 Bad Request", "malformed request\n"),
                    false,
                ),
            };
            stream.write_all(&response.encode(head_only)).await?;
            stream.flush().await?;
            stream.close().await
        };
        with_deadline(Some(deadline), exchange)
            .await
            .unwrap_or_else(|| Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow")))
    }

    fn answer(&self, line: &RequestLine<'_>) -> Response {
        if line.method != "GET" && line.method != "HEAD" {
            return Response::text("405 Method Not Allowed", "only GET and HEAD\n");
        }
        // Scrapers may add a query string; it selects nothing here.
        let path = line.path.split('?').next().unwrap_or_default();
        match path {
            "/metrics" => {
                (self.collect)();
                Response {
                    status: "200 OK",
                    content_type: METRICS_CONTENT_TYPE,
                    body: self.metrics.render(),
                }
            }
            "/health" | "/ready" => {
                let report = self.health.report(self.metrics.node_id());
                let status = if report.ok() {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let mut body = serde_json::to_string(&report).expect("health serializes");
                body.push('\n');
                Response {
                    status,
                    content_type: "application/json",
                    body,
                }
            }
            "/" => Response::text("200 OK", "ringlog: see /metrics and /health\n"),
            _ => Response::text("404 Not Found", "not found: try /metrics or /health\n"),
        }
    }
}

/// Reads up to the blank line that ends a request head; the body, if any, is
/// ignored (GET has none).
async fn read_head(stream: &mut Stream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-request",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

fn parse_request_line(head: &[u8]) -> Option<RequestLine<'_>> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return None;
    }
    Some(RequestLine { method, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(RequestLine {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(
            parse_request_line(b"HEAD /health?x=1 HTTP/1.0\n\n").map(|l| l.path),
            Some("/health?x=1")
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = Response::text("404 Not Found", "nope\n");
        let full = String::from_utf8(r.encode(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(full.contains("Content-Length: 5\r\n"));
        assert!(full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\nnope\n"));
        let head = String::from_utf8(r.encode(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");
    }
}
