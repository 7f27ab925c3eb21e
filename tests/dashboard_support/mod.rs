//! What the dashboard tests need besides a cluster: a plain HTTP/1.0 GET, a
//! Prometheus server of their own, the dashboard's queries, and the metric names a
//! PromQL expression mentions.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository's root (where Cargo.toml is).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `name` as found on PATH; panics with how to install it when it is missing, so
/// that a machine without Prometheus fails these tests instead of skipping them.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH. The dashboard tests need Prometheus 2.x: run .ci/run \
                 (which installs it) or `apt-get install prometheus` (Debian/Ubuntu; it \
                 provides `prometheus` and `promtool`)."
            )
        })
}

/// One HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.0 (so the server closes the connection after the body and
/// sends no chunked encoding), within `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nUser-Agent: ringlog-dashboard-test\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    let body = String::from_utf8(body).map_err(|e| e.to_string())?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Undoes `Transfer-Encoding: chunked` (a server may use it despite HTTP/1.0).
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not ended")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|e| e.to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Percent-encodes `s` for a URL query value: everything but RFC 3986's unreserved
/// characters becomes `%XX` (of its UTF-8 bytes).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `prometheus` process scraping `targets` every second, with its storage in a
/// temporary directory; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a port from `pick_port` and waits until it is ready;
    /// picks another port when the chosen one was taken meanwhile (a free port is
    /// only free until someone binds it).
    pub fn start(targets: &[SocketAddr], pick_port: impl Fn() -> u16) -> Prometheus {
        let binary = require_tool("prometheus");
        let mut dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: ringlog\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = SocketAddr::from(([127, 0, 0, 1], pick_port()));
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let mut prometheus = Prometheus { child, addr, dir };
            match prometheus.await_ready(Duration::from_secs(20)) {
                Ok(()) => return prometheus,
                Err(why) if attempt < 5 && prometheus.log().contains("address already in use") => {
                    eprintln!("prometheus: {addr} was taken, trying another port: {why}");
                    prometheus.stop();
                    dir = std::mem::replace(&mut prometheus.dir, tempfile::tempdir().unwrap());
                }
                Err(why) => panic!("{why}\n--- prometheus log ---\n{}", prometheus.log()),
            }
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Prometheus's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits for `/-/ready`: an error after `limit` or if the process exited.
    fn await_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("prometheus on {} exited ({status})", self.addr));
            }
            if let Ok(r) = http_get(self.addr, "/-/ready", Duration::from_secs(2))
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "prometheus on {} not ready within {limit:?}",
                    self.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Evaluates `expr` now (GET /api/v1/query); the whole JSON answer, or why
    /// there is none.
    pub fn query(&self, expr: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let response =
            http_get(self.addr, &path, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let json: Value = serde_json::from_str(&response.body)
            .map_err(|e| format!("HTTP {}: {e}: {}", response.status, response.body))?;
        if response.status != 200 || json["status"] != "success" {
            return Err(format!("HTTP {}: {}", response.status, response.body));
        }
        Ok(json)
    }

    /// The instant vector `expr` evaluates to now, as (labels, value) pairs.
    pub fn vector(&self, expr: &str) -> Result<Vec<(Value, f64)>, String> {
        let json = self.query(expr)?;
        let data = &json["data"];
        if data["resultType"] != "vector" {
            return Err(format!("not an instant vector: {json}"));
        }
        Ok(data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                (series["metric"].clone(), value)
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One query of the dashboard: the panel it belongs to and its PromQL.
#[derive(Clone, Debug)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
}

/// Every panel of `dashboard`, those nested in (collapsed) rows included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every `targets[].expr` of every panel.
pub fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(PanelQuery {
                    panel: title.clone(),
                    expr: expr.to_string(),
                });
            }
        }
    }
    out
}

/// The PromQL of each `query` template variable (e.g. `label_values(m, l)`).
pub fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_default();
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                query.to_string(),
            )
        })
        .collect()
}

/// `expr` as Grafana would send it with every variable at "All" and a rate
/// interval of one minute.
pub fn substitute(expr: &str) -> String {
    [
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__range}", "5m"),
        ("$__range", "5m"),
        ("${__interval}", "1m"),
        ("$__interval", "1m"),
        ("${node}", ".*"),
        ("$node", ".*"),
        ("${partition}", ".*"),
        ("$partition", ".*"),
    ]
    .iter()
    .fold(expr.to_string(), |e, (from, to)| e.replace(from, to))
}

/// The `ringlog_…` identifiers `expr` mentions, as written (suffixes kept).
pub fn metric_tokens(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("ringlog_") {
        let start = i + found;
        let preceded_by_ident = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || matches!(bytes[start - 1], b'_' | b':'));
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded_by_ident && !out.iter().any(|t: &String| t == &expr[start..end]) {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The catalog name a series name belongs to: itself, or the histogram it is the
/// `_bucket`, `_sum` or `_count` series of.
pub fn catalog_name(token: &str) -> Option<&'static str> {
    use ringlog::metrics::catalog::{Kind, METRICS};
    if let Some(def) = METRICS.iter().find(|d| d.name == token) {
        return Some(def.name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = token.strip_suffix(suffix)?;
        METRICS
            .iter()
            .find(|d| d.name == base && d.kind == Kind::Histogram)
            .map(|d| d.name)
    })
}

#[test]
fn helpers_behave() {
    assert_eq!(
        percent_encode("sum by (le) (x{a=~\".*\"}[1m]) / 2"),
        "sum%20by%20%28le%29%20%28x%7Ba%3D~%22.%2A%22%7D%5B1m%5D%29%20%2F%202"
    );
    assert_eq!(percent_encode("é+"), "%C3%A9%2B");
    assert_eq!(
        metric_tokens("rate(ringlog_a_total[1m]) / foo_ringlog_b + ringlog_a_total"),
        vec!["ringlog_a_total"]
    );
    assert_eq!(
        catalog_name("ringlog_commit_latency_seconds_bucket"),
        Some("ringlog_commit_latency_seconds")
    );
    assert_eq!(
        catalog_name("ringlog_raft_term_sum"),
        None,
        "not a histogram"
    );
    assert_eq!(
        substitute("x{node=~\"$node\",partition=~\"${partition}\"}[$__rate_interval]"),
        "x{node=~\".*\",partition=~\".*\"}[1m]"
    );
    assert_eq!(
        dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
        b"abcde"
    );
    let r =
        parse_response(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: a/b\r\n\r\n{}").unwrap();
    assert_eq!(
        (r.status, r.header("content-type"), r.body.as_str()),
        (503, Some("a/b"), "{}")
    );
}
