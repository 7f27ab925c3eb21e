//! The metrics as an operator sees them: real nodes' `/metrics` pages pass
//! `promtool check metrics`, `/health` says "ok" once leaders exist, every query of
//! grafana/dashboards/ringlog.json returns data from a real Prometheus scraping a
//! loaded cluster, and docs/metrics.md lists every metric of the catalog.
//!
//! Needs `prometheus` and `promtool` on PATH (.ci/run installs them); without them
//! these tests fail and say how to install them.

mod cluster_support;
mod dashboard_support;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::*;
use dashboard_support::*;
use ringlog::client::{Client, ClientConfig};
use ringlog::metrics::catalog::{Kind, METRICS};
use ringlog::transport::{AppendRequest, ClientRequest, ReadRequest, ServerError};
use serde_json::Value;

const DASHBOARD: &str = "grafana/dashboards/ringlog.json";
const DASHBOARD_UID: &str = "ringlog-overview";
const DS_VARIABLE: &str = "DS_PROMETHEUS";
const DS_REF: &str = "${DS_PROMETHEUS}";
const PARTITIONS: u32 = 2;

fn load_dashboard() -> Value {
    let text = std::fs::read_to_string(repo_path(DASHBOARD)).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

// ---------------------------------------------------------------------------
// Static checks: no cluster, no Prometheus.

/// Works imported by hand (a datasource picked for DS_PROMETHEUS) and provisioned
/// (the template variable resolves it); names only what the catalog has.
#[test]
fn dashboard_is_portable_and_names_only_catalog_metrics() {
    let dashboard = load_dashboard();
    let mut problems = Vec::new();
    assert_eq!(dashboard["uid"], DASHBOARD_UID);
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    // Imported by hand, Grafana asks which datasource DS_PROMETHEUS means.
    let inputs = dashboard["__inputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == DS_VARIABLE && i["pluginId"] == "prometheus"),
        "no __inputs entry for {DS_VARIABLE}"
    );
    let ds = var(DS_VARIABLE);
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["node", "partition"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["allValue"], ".*", "{name}: All must be a regex");
        assert_eq!(v["datasource"]["uid"], DS_REF, "{name}");
    }
    for (name, query) in variable_queries(&dashboard) {
        if !query.starts_with("label_values(") {
            problems.push(format!("variable {name}: {query:?} is not label_values(…)"));
        }
        for token in metric_tokens(&query) {
            if catalog_name(&token).is_none() {
                problems.push(format!("variable {name}: {token} is not in the catalog"));
            }
        }
    }

    // The provisioned datasource is the one the dashboard picks by default.
    let default_uid = ds["current"]["value"].as_str().expect("DS current value");
    let provisioned =
        std::fs::read_to_string(repo_path("grafana/provisioning/datasources/ringlog.yaml"))
            .expect("datasource provisioning file");
    assert!(
        provisioned
            .lines()
            .any(|l| l.trim() == format!("uid: {default_uid}")),
        "grafana/provisioning/datasources/ringlog.yaml has no `uid: {default_uid}`"
    );
    let provider =
        std::fs::read_to_string(repo_path("grafana/provisioning/dashboards/ringlog.yaml"))
            .expect("dashboard provisioning file");
    assert!(provider.contains("type: file"), "a file provider");

    let mut ids = std::collections::HashSet::new();
    let mut used = std::collections::HashSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"].as_u64().unwrap_or(0);
        if !ids.insert(id) {
            problems.push(format!("{title}: panel id {id} used twice"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != DS_REF {
            problems.push(format!("{title}: panel datasource is not {DS_REF}"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{title}: no targets"));
        }
        for target in &targets {
            if target["datasource"]["uid"] != DS_REF {
                problems.push(format!("{title}: a target's datasource is not {DS_REF}"));
            }
            let expr = target["expr"].as_str().unwrap_or_default();
            if expr.trim().is_empty() {
                problems.push(format!("{title}: a target has no expr"));
            }
            if expr.contains(DS_VARIABLE) {
                problems.push(format!("{title}: {expr:?} mentions the datasource"));
            }
            // Rate windows follow the scrape interval Grafana knows about.
            for window in expr.split('[').skip(1) {
                let window = window.split(']').next().unwrap_or_default();
                if window != "$__rate_interval" && window != "$__range" {
                    problems.push(format!("{title}: window [{window}] in {expr:?}"));
                }
            }
            for token in metric_tokens(expr) {
                match catalog_name(&token) {
                    Some(name) => {
                        used.insert(name);
                    }
                    None => problems.push(format!(
                        "{title}: {token} (in {expr:?}) is not in ringlog::metrics::catalog"
                    )),
                }
            }
        }
    }
    for def in METRICS {
        if !used.contains(def.name) {
            problems.push(format!(
                "{} is in the catalog but on no panel: add it to {DASHBOARD}",
                def.name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{DASHBOARD}:\n  {}",
        problems.join("\n  ")
    );
}

/// docs/metrics.md has a table row per metric with its kind and labels, lists the
/// buckets, and names nothing the catalog lacks.
#[test]
fn docs_describe_every_catalog_metric() {
    let doc = std::fs::read_to_string(repo_path("docs/metrics.md")).expect("docs/metrics.md");
    let mut problems = Vec::new();
    for def in METRICS {
        let start = format!("| `{}` |", def.name);
        let Some(row) = doc.lines().find(|l| l.starts_with(&start)) else {
            problems.push(format!("{}: no table row starting {start:?}", def.name));
            continue;
        };
        if !row.contains(kind_word(def.kind)) {
            problems.push(format!(
                "{}: row does not say {}",
                def.name,
                kind_word(def.kind)
            ));
        }
        for label in def.labels.iter().chain(&["node"]) {
            if !row.contains(&format!("`{label}`")) {
                problems.push(format!("{}: row does not name label `{label}`", def.name));
            }
        }
    }
    for row in doc.lines().filter(|l| l.starts_with("| `ringlog_")) {
        let name = row.split('`').nth(1).unwrap_or_default();
        if !METRICS.iter().any(|d| d.name == name) {
            problems.push(format!("{name} is documented but not in the catalog"));
        }
    }
    for (what, buckets) in [
        ("seconds", ringlog::metrics::SECONDS_BUCKETS),
        ("count", ringlog::metrics::COUNT_BUCKETS),
        ("bytes", ringlog::metrics::BYTES_BUCKETS),
    ] {
        let list: Vec<String> = buckets.iter().map(|b| b.to_string()).collect();
        let list = list.join(", ");
        if !doc.contains(&list) {
            problems.push(format!("the {what} buckets `{list}` are not listed"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/metrics.md drifted from ringlog::metrics::catalog:\n  {}",
        problems.join("\n  ")
    );
}

/// The example scrape config for `ringlog dev` is one Prometheus accepts.
#[test]
fn example_prometheus_config_is_valid() {
    let promtool = require_tool("promtool");
    let path = repo_path("grafana/prometheus.yml");
    let text = std::fs::read_to_string(&path).expect("grafana/prometheus.yml");
    for port in [7402, 7412, 7422] {
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "no target on {port}"
        );
    }
    let out = Command::new(promtool)
        .arg("check")
        .arg("config")
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config grafana/prometheus.yml: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Live nodes.

fn promtool_check_metrics(promtool: &std::path::Path, body: &str) -> Result<(), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run promtool: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(body.as_bytes())
            .map_err(|e| format!("write to promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for promtool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Polls `/health` on `addr` until it answers 200, or panics after `limit`.
fn await_healthy(addr: SocketAddr, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let last = http_get(addr, "/health", Duration::from_secs(2));
        if let Ok(r) = &last
            && r.status == 200
        {
            assert_eq!(r.header("content-type"), Some("application/json"));
            return serde_json::from_str(&r.body).expect("/health is JSON");
        }
        assert!(
            Instant::now() < deadline,
            "{addr}/health not 200 within {limit:?}; last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_pages_pass_promtool_and_health_is_ok_with_leaders() {
    let promtool = require_tool("promtool");
    let cluster = TestCluster::start(3, PARTITIONS);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let client = client(addrs);
        await_leaders(&client, PARTITIONS as usize, Duration::from_secs(30)).await;
        // Some samples in every histogram of the pages checked below.
        for partition in 0..PARTITIONS {
            let records = vec![Bytes::from_static(b"metrics page"); 3];
            client.append(partition, records).await.expect("append");
        }
    });
    for config in &cluster.configs {
        let addr = config.listen.metrics;
        let health = await_healthy(addr, Duration::from_secs(20));
        assert_eq!(health["status"], "ok", "{addr}: {health}");
        assert_eq!(health["node"], config.node_id, "{health}");
        let partitions = health["partitions"].as_array().expect("partitions");
        assert_eq!(partitions.len(), PARTITIONS as usize, "{health}");
        for p in partitions {
            assert_eq!(p["alive"], true, "{health}");
            assert!(p["leader"].is_u64(), "{health}");
        }

        let page = http_get(addr, "/metrics", Duration::from_secs(5)).expect("GET /metrics");
        assert_eq!(page.status, 200, "{addr}/metrics: {page:?}");
        let content_type = page.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{addr}/metrics Content-Type {content_type:?}"
        );
        for def in METRICS {
            let type_line = format!("# TYPE {} {}\n", def.name, kind_word(def.kind));
            assert!(page.body.contains(&type_line), "{addr}: no {type_line:?}");
        }
        let build = format!("ringlog_build_info{{node=\"{}\",", config.node_id);
        assert!(page.body.contains(&build), "{addr}: no {build}…");
        if let Err(e) = promtool_check_metrics(&promtool, &page.body) {
            panic!(
                "promtool check metrics rejects {addr}/metrics: {e}\n--- page ---\n{}",
                page.body
            );
        }
    }
}

/// What the background load did.
#[derive(Debug, Default)]
struct LoadReport {
    appends_ok: u64,
    appends_failed: u64,
    reads_ok: u64,
    reads_failed: u64,
    metadata_ok: u64,
    /// Requests meant to fail (append to a follower, read of a missing partition)
    /// that did fail as expected.
    expected_errors: u64,
    last_failure: Option<String>,
}

/// Appends to every partition, reads, asks for metadata, and sends requests that
/// fail, on a glommio executor of its own, until stopped (or dropped).
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoadReport>>,
}

impl Load {
    fn start(addrs: Vec<String>, partitions: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = spawn_on_executor(async move || run_load(addrs, partitions, flag).await);
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// True once the load thread has ended on its own (it panicked).
    fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("not finished twice").join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run_load(addrs: Vec<String>, partitions: u32, stop: Arc<AtomicBool>) -> LoadReport {
    let mut config = ClientConfig::new(addrs);
    config.retries_max = 3;
    config.retry_backoff_max_ms = 100;
    config.request_timeout_ms = 2_000;
    let client = Rc::new(Client::new(config));
    await_leaders(&client, partitions as usize, Duration::from_secs(30)).await;
    let report = Rc::new(RefCell::new(LoadReport::default()));
    let mut tasks = Vec::new();

    // Appenders: batches of 16 records of 100 bytes, spread over the partitions.
    for worker in 0..4u32 {
        let (client, report, stop) = (client.clone(), report.clone(), stop.clone());
        tasks.push(glommio::spawn_local(async move {
            let partition = worker % partitions;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let records = (0..16)
                    .map(|i| Bytes::from(format!("w{worker}-{n}-{i:<90}")))
                    .collect();
                n += 1;
                let result = client.append(partition, records).await;
                let mut r = report.borrow_mut();
                match result {
                    Ok(_) => r.appends_ok += 1,
                    Err(e) => {
                        r.appends_failed += 1;
                        r.last_failure = Some(format!("append: {e}"));
                    }
                }
            }
        }));
    }

    // A reader per partition, following the log from its start.
    for partition in 0..partitions {
        let (client, report, stop) = (client.clone(), report.clone(), stop.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut next = 1;
            while !stop.load(Ordering::Relaxed) {
                let request = ReadRequest {
                    partition,
                    from_index: next,
                    max_records: 500,
                    max_bytes: 256 << 10,
                    wait_timeout_ms: 50,
                    any_replica: false,
                };
                let result = client.read(request).await;
                let mut r = report.borrow_mut();
                match result {
                    Ok(ok) => {
                        r.reads_ok += 1;
                        next = ok.next_from(next);
                    }
                    Err(e) => {
                        r.reads_failed += 1;
                        r.last_failure = Some(format!("read: {e}"));
                    }
                }
            }
        }));
    }

    // Metadata, and requests that must fail: an append sent straight to a follower
    // (no redirect: `call` makes one attempt) and a read of a missing partition.
    {
        let (client, report, stop) = (client.clone(), report.clone(), stop.clone());
        tasks.push(glommio::spawn_local(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(meta) = client.metadata().await {
                    report.borrow_mut().metadata_ok += 1;
                    for p in &meta.partitions {
                        let Some(follower) = meta
                            .nodes
                            .iter()
                            .find(|n| p.leader.is_some_and(|l| l != n.node_id))
                        else {
                            continue;
                        };
                        let request = ClientRequest::Append(AppendRequest {
                            partition: p.partition,
                            records: vec![Bytes::from_static(b"to a follower")],
                        });
                        let answer = client.call(&follower.client_addr, &request).await;
                        if let Ok(Err(ServerError::NotLeader { .. })) = answer {
                            report.borrow_mut().expected_errors += 1;
                        }
                    }
                    let read = ClientRequest::Read(ReadRequest {
                        partition: partitions + 7,
                        from_index: 1,
                        max_records: 1,
                        max_bytes: 1024,
                        wait_timeout_ms: 0,
                        any_replica: false,
                    });
                    let addr = &meta.nodes[0].client_addr;
                    if let Ok(Err(ServerError::InvalidRequest { .. })) =
                        client.call(addr, &read).await
                    {
                        report.borrow_mut().expected_errors += 1;
                    }
                }
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    for task in tasks {
        task.await;
    }
    Rc::try_unwrap(report)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

/// The value of a one-series instant vector, if `expr` gives exactly one.
fn scalar(prometheus: &Prometheus, expr: &str) -> Option<f64> {
    match prometheus.vector(expr).ok()?.as_slice() {
        [(_, v)] => Some(*v),
        _ => None,
    }
}

/// Waits until Prometheus scraped every target at least `scrapes` times, all are
/// up, and the scraped figures show appends and client errors within the last
/// minute, so that every `rate(…[1m])` of the dashboard has something to work on.
fn await_scraped(prometheus: &Prometheus, load: &Load, targets: usize, scrapes: usize) {
    let limit = Duration::from_secs(40);
    let deadline = Instant::now() + limit;
    let checks = [
        ("count(up == 1)".to_string(), targets as f64),
        (
            format!("count(count_over_time(up[1m]) >= {scrapes})"),
            targets as f64,
        ),
        (
            "sum(rate(ringlog_append_records_total[1m])) > 0".to_string(),
            f64::MIN_POSITIVE,
        ),
        (
            "sum(rate(ringlog_client_requests_total{result!=\"ok\"}[1m])) > 0".to_string(),
            f64::MIN_POSITIVE,
        ),
    ];
    loop {
        let pending: Vec<String> = checks
            .iter()
            .filter(|(expr, want)| scalar(prometheus, expr).is_none_or(|v| v < *want))
            .map(|(expr, want)| {
                format!(
                    "{expr} (want >= {want}, have {:?})",
                    prometheus.vector(expr)
                )
            })
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            !load.ended(),
            "the load generator stopped early (see its panic above)"
        );
        assert!(
            Instant::now() < deadline,
            "Prometheus did not get there within {limit:?}:\n  {}\n--- prometheus log ---\n{}",
            pending.join("\n  "),
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs one dashboard expression; a description of what is wrong with the answer.
/// With RINGLOG_DASHBOARD_DUMP set, prints every answer (to eyeball the figures).
fn check_query(prometheus: &Prometheus, expr: &str) -> Result<usize, String> {
    let series = prometheus.vector(expr)?;
    if std::env::var_os("RINGLOG_DASHBOARD_DUMP").is_some() {
        eprintln!("{expr}");
        for (labels, value) in &series {
            eprintln!("    {value:<12} {labels}");
        }
    }
    if series.is_empty() {
        return Err("no series (empty result)".into());
    }
    if series.iter().all(|(_, v)| v.is_nan()) {
        let shown: Vec<String> = series.iter().map(|(m, v)| format!("{m} {v}")).collect();
        return Err(format!("every series is NaN: {}", shown.join("; ")));
    }
    Ok(series.len())
}

/// Figures that must move (rates) or be positive (gauges) on every loaded, healthy
/// cluster: a panel full of zeros would not show that its metric is dead.
const MOVING_UNDER_LOAD: &[&str] = &[
    "sum(rate(ringlog_append_records_total[1m]))",
    "sum(rate(ringlog_append_bytes_total[1m]))",
    "sum(rate(ringlog_commit_latency_seconds_count[1m]))",
    "sum(rate(ringlog_wal_fsync_duration_seconds_count[1m]))",
    "sum(rate(ringlog_wal_batch_records_count[1m]))",
    "sum(rate(ringlog_wal_batch_bytes_sum[1m]))",
    "sum(rate(ringlog_wal_written_bytes_total[1m]))",
    "sum(rate(ringlog_wal_flushes_total[1m]))",
    "sum(rate(ringlog_transport_sent_bytes_total[1m]))",
    "sum(rate(ringlog_transport_received_bytes_total[1m]))",
    "sum(rate(ringlog_transport_sent_messages_total[1m]))",
    "sum(rate(ringlog_client_requests_total[1m]))",
    "sum(rate(ringlog_client_request_duration_seconds_count[1m]))",
    "sum(rate(ringlog_client_received_bytes_total[1m]))",
    "min(ringlog_raft_term)",
    "min(ringlog_raft_has_leader)",
    "min(ringlog_raft_commit_index)",
    "min(ringlog_raft_last_index)",
    "min(ringlog_raft_log_start_index)",
    "sum(ringlog_raft_role{role=\"leader\"})",
    "min(ringlog_peer_connections)",
    "sum(ringlog_client_connections)",
    "min(ringlog_build_info)",
];

/// Known to stay flat under load (see the note in each case); the test fails
/// once one moves, so that this list cannot outlive the bug.
const KNOWN_FLAT: &[(&str, &str)] = &[];

#[test]
fn every_dashboard_query_returns_data_from_a_loaded_cluster() {
    let began = Instant::now();
    require_tool("prometheus");
    let dashboard = load_dashboard();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "only {} queries", queries.len());

    // Dropped in reverse: the load stops first, then Prometheus, then the nodes.
    let cluster = TestCluster::start(3, PARTITIONS);
    let targets: Vec<SocketAddr> = cluster.configs.iter().map(|c| c.listen.metrics).collect();
    let load = Load::start(cluster.client_addrs(), PARTITIONS);
    let prometheus = Prometheus::start(&targets, free_port);
    await_scraped(&prometheus, &load, targets.len(), 4);
    let scraped_after = began.elapsed();

    let mut failures = Vec::new();
    for (variable, query) in variable_queries(&dashboard) {
        // label_values(metric, label) lists the label's values among the metric's
        // series; `count by (label) (metric)` has one series per value.
        let inner = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','));
        let Some((metric, label)) = inner else {
            failures.push(format!("variable {variable}: cannot evaluate {query:?}"));
            continue;
        };
        let expr = format!("count by ({}) ({})", label.trim(), metric.trim());
        let want = if variable == "node" {
            targets.len()
        } else {
            PARTITIONS as usize
        };
        match prometheus.vector(&expr) {
            Ok(values) if values.len() == want => {}
            other => failures.push(format!(
                "variable {variable}: {query}\n    want {want} values, got {other:?}"
            )),
        }
    }
    for q in &queries {
        let expr = substitute(&q.expr);
        if expr.contains('$') {
            failures.push(format!(
                "panel {:?}: {}\n    a variable is left after substitution",
                q.panel, q.expr
            ));
            continue;
        }
        if let Err(what) = check_query(&prometheus, &expr) {
            failures.push(format!("panel {:?}: {expr}\n    {what}", q.panel));
        }
    }
    for expr in MOVING_UNDER_LOAD {
        let known = KNOWN_FLAT.iter().find(|(name, _)| expr.contains(name));
        let value = scalar(&prometheus, expr);
        let moving = value.is_some_and(|v| v > 0.0);
        match (moving, known) {
            (true, None) | (false, Some(_)) => {}
            (false, None) => failures.push(format!(
                "{expr} = {value:?} on a loaded cluster: the metric does not move"
            )),
            (true, Some((name, _))) => failures.push(format!(
                "{expr} = {value:?}: {name} moves now; remove it from KNOWN_FLAT"
            )),
        }
    }
    let report = load.finish();
    assert!(
        report.appends_ok > 0 && report.expected_errors > 0,
        "load did not run: {report:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries (after {:?} of scraping) give no data:\n  {}\nload: {report:?}",
        failures.len(),
        queries.len(),
        scraped_after,
        failures.join("\n  ")
    );
    eprintln!(
        "dashboard: {} queries checked; scraped after {scraped_after:?}, done after {:?}; load {report:?}",
        queries.len(),
        began.elapsed()
    );
}
