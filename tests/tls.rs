//! TLS and authentication with real node processes (`docs/security.md`): peers
//! replicate over mutual TLS; plaintext, a certificate of another CA, an expired
//! one, and a peer certificate naming another node are refused; roles limit what a
//! client may do; `openssl s_client` completes a handshake and sees the chain; and
//! certificates rotate on SIGHUP under load without dropping a connection.

mod cluster_support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cluster_support::tls::{ALL_ROLES, Pki, blocking_tls, metrics_addr, tls_client, tls_metric};
use cluster_support::{TestCluster, await_leaders, on_executor, read_frame};
use ringlog::client::{Client, ClientError};
use ringlog::tls::Role;
use ringlog::tls::certs::{Validity, node_names};
use ringlog::transport::frame::{FrameKind, PROTOCOL_VERSION};
use ringlog::transport::peer_msg::{Hello, Lane, decode_refused, encode_hello};
use ringlog::transport::{ReadRequest, ServerError};

const PATIENCE: Duration = Duration::from_secs(30);

/// A 3-node, 1-shard cluster with TLS on, `writer` (append, read), `reader`
/// (read) and `ops` (every role) as principals; started, with a leader.
fn tls_cluster() -> (TestCluster, Pki) {
    let mut cluster = TestCluster::configure_routed(3, 1, |_, _, addr| addr);
    let pki = Pki::new(cluster.dir.path(), "cluster");
    pki.enable(
        &mut cluster,
        &[
            ("writer", &[Role::Append, Role::Read]),
            ("reader", &[Role::Read]),
            ("ops", ALL_ROLES),
        ],
    );
    cluster.spawn_all();
    let (addrs, ca_file) = (cluster.client_addrs(), pki.ca_file.clone());
    let ops = pki.client("ops", Validity::Current);
    on_executor(async move || {
        await_leaders(&tls_client(addrs, &ca_file, Some(&ops)), 1, PATIENCE).await;
    });
    (cluster, pki)
}

/// The error of one append through `client`.
async fn append_error(client: &Client) -> ClientError {
    client
        .append(0, vec![Bytes::from_static(b"refused")])
        .await
        .expect_err("the append must be refused")
}

#[test]
fn a_tls_cluster_replicates_and_refuses_what_has_no_credential() {
    let (cluster, pki) = tls_cluster();
    let (addrs, ca_file) = (cluster.client_addrs(), pki.ca_file.clone());
    let writer = pki.client("writer", Validity::Current);
    let reader = pki.client("reader", Validity::Current);
    let expired = pki.client("writer", Validity::Expired);
    let stranger = Pki::new(cluster.dir.path(), "stranger");
    let forged = stranger.client("writer", Validity::Current);
    let leader_index = {
        let (writer, ca_file) = (writer.clone(), ca_file.clone());
        let addrs = addrs.clone();
        on_executor(async move || {
            let client = tls_client(addrs, &ca_file, Some(&writer));
            await_leaders(&client, 1, PATIENCE).await;
            // Committed on a majority: the peers replicate over mutual TLS.
            let ok = client
                .append(0, vec![Bytes::from_static(b"over tls")])
                .await
                .expect("an append by a principal with the append role");
            ok.first_index
        })
    };
    let ca = ca_file.clone();
    let a = addrs.clone();
    on_executor(async move || {
        // Plaintext to a TLS port: refused, and told why.
        let plaintext = cluster_support::client(a.clone());
        let e = append_error(&plaintext).await;
        assert!(
            matches!(&e, ClientError::Tls { reason, .. } if reason.contains("TLS required")),
            "{e}"
        );
        // No client certificate, an expired one, one of another CA.
        for (what, identity) in [
            ("none", None),
            ("expired", Some(&expired)),
            ("other CA", Some(&forged)),
        ] {
            let e = append_error(&tls_client(a.clone(), &ca, identity)).await;
            assert!(matches!(e, ClientError::Tls { .. }), "{what}: {e}");
        }
        // A client that trusts another CA does not trust the nodes: it tries each
        // (one node's certificate may be at fault), sending nothing, then gives up.
        let mut config = ringlog::client::ClientConfig::new(a.clone());
        config.retries_max = 3;
        let identity = (forged.0.as_path(), forged.1.as_path());
        config.tls = Some(ringlog::tls::client_config(&stranger.ca_file, Some(identity)).unwrap());
        let e = append_error(&Client::new(config)).await;
        assert!(
            matches!(&e, ClientError::RetriesExhausted { last, .. } if last.to_string().contains("UnknownIssuer")),
            "{e}"
        );
        // Roles: a reader reads, and may not append or trim.
        let client = tls_client(a.clone(), &ca, Some(&reader));
        let e = append_error(&client).await;
        assert!(
            matches!(&e, ClientError::Server { source: ServerError::Unauthorized { reason }, .. }
                if reason.contains("reader does not have the append role")),
            "{e}"
        );
        let e = client.trim(0, 1).await.expect_err("a reader may not trim");
        assert!(
            matches!(
                &e,
                ClientError::Server {
                    source: ServerError::Unauthorized { .. },
                    ..
                }
            ),
            "{e}"
        );
        let read = client
            .read(ReadRequest {
                partition: 0,
                from_index: leader_index,
                max_records: 10,
                max_bytes: 1 << 20,
                wait_timeout_ms: 0,
                any_replica: false,
            })
            .await
            .expect("a reader reads");
        assert_eq!(read.records[0].payload, Bytes::from_static(b"over tls"));
    });
    // Every refusal above was counted by the node that refused it.
    let counted = |name: &str, label: &str| {
        (0..3)
            .map(|k| tls_metric(metrics_addr(&cluster, k), name, label, &ca_file).unwrap_or(0.0))
            .sum::<f64>()
    };
    assert!(counted("ringlog_tls_handshakes_failed_total", "port=\"client\"") >= 4.0);
    assert!(counted("ringlog_client_requests_unauthorized_total", "node") >= 2.0);
}

/// A PeerHello from node `claimed` to node `target` (shard 0, cluster 42).
fn hello(claimed: u32, target: u32) -> BytesMut {
    let hello = Hello {
        cluster_id: 42,
        node_id: claimed,
        peer_node_id: target,
        shard_id: 0,
        lane: Lane::Control,
        protocol_version: PROTOCOL_VERSION,
        shard_count: 1,
    };
    let mut out = BytesMut::new();
    encode_hello(&mut out, FrameKind::PeerHello, &hello);
    out
}

/// Opens a TLS connection to node `target`'s peer port showing `identity`, says
/// hello as `claimed`, and returns the node's answer: the hello ack, or a refusal.
fn peer_hello(
    cluster: &TestCluster,
    pki: &Pki,
    target: u32,
    claimed: u32,
    identity: &(PathBuf, PathBuf),
) -> (FrameKind, String) {
    let addr = cluster.configs[target as usize - 1].listen.peer;
    let name = ringlog::tls::peer_name(target, 42);
    let mut stream = blocking_tls(addr, &name, &pki.ca_file, Some(identity));
    stream.write_all(&hello(claimed, target)).unwrap();
    stream.flush().unwrap();
    let answer =
        read_frame(&mut stream, &mut BytesMut::new(), 1 << 20).expect("an answer to the hello");
    let reason = match answer.kind {
        FrameKind::PeerRefused => decode_refused(&answer).unwrap(),
        _ => String::new(),
    };
    (answer.kind, reason)
}

#[test]
fn a_peer_must_hold_a_certificate_naming_the_node_it_claims_to_be() {
    let (cluster, pki) = tls_cluster();
    // Node 2's certificate claiming to be node 3: refused, naming both.
    let node2 = pki.issue("node-2-again", &node_names(2, 42), Validity::Current);
    let (kind, reason) = peer_hello(&cluster, &pki, 1, 3, &node2);
    assert_eq!(kind, FrameKind::PeerRefused);
    assert!(
        reason.contains("node-2.cluster-42") && reason.contains("node-3.cluster-42"),
        "{reason}"
    );
    // A client certificate on the peer port: refused too.
    let client = pki.client("ops", Validity::Current);
    let (kind, _) = peer_hello(&cluster, &pki, 1, 2, &client);
    assert_eq!(kind, FrameKind::PeerRefused);
    // The same certificate claiming its own node: accepted.
    let (kind, reason) = peer_hello(&cluster, &pki, 1, 2, &node2);
    assert_eq!(kind, FrameKind::PeerHelloAck, "{reason}");
    // A plaintext peer is told the port needs TLS, in the peer protocol.
    let mut plain = TcpStream::connect(cluster.configs[0].listen.peer).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(&hello(2, 1)).unwrap();
    let refused = read_frame(&mut plain, &mut BytesMut::new(), 1 << 20).expect("a refusal");
    assert_eq!(refused.kind, FrameKind::PeerRefused);
    assert!(decode_refused(&refused).unwrap().contains("requires TLS"));
    let metrics = metrics_addr(&cluster, 0);
    let refused = tls_metric(
        metrics,
        "ringlog_peer_handshakes_refused_total",
        "node",
        &pki.ca_file,
    );
    assert!(refused >= Some(2.0), "{refused:?}");
}

#[test]
fn openssl_s_client_completes_a_handshake_and_shows_the_chain() {
    let (cluster, pki) = tls_cluster();
    let ops = pki.client("ops", Validity::Current);
    let output = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(cluster.client_addr(0))
        .arg("-CAfile")
        .arg(&pki.ca_file)
        .arg("-cert")
        .arg(&ops.0)
        .arg("-key")
        .arg(&ops.1)
        .args(["-showcerts", "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (.ci/run installs Debian's openssl)");
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{text}\n{errors}"
    );
    assert!(text.contains("Certificate chain"), "{text}");
    assert!(text.contains("node-1.cluster-42"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
}

/// Overwrites node `k`'s certificate, key and CA bundle files in place, as a
/// certificate manager renews them, with a certificate of `next` and the bundle
/// `ca_bundle`; then sends SIGHUP.
fn renew(cluster: &mut TestCluster, k: usize, next: &Pki, ca_bundle: &Path) {
    let tls = cluster.configs[k].tls.clone().unwrap();
    let id = cluster.configs[k].node_id;
    let (cert, key) = next.issue(
        &format!("node-{id}-next"),
        &node_names(id, 42),
        Validity::Current,
    );
    replace(&cert, &tls.cert_file);
    replace(&key, &tls.key_file);
    // The CA file is every node's: rewritten in place, a node reloading for its own
    // SIGHUP could read it half written.
    replace(ca_bundle, &tls.ca_file);
    cluster.sighup(k);
}

/// Replaces `to` with a copy of `from` at once (written beside it, then renamed),
/// as certificate managers do.
fn replace(from: &Path, to: &Path) {
    let beside = to.with_extension("new");
    std::fs::copy(from, &beside).unwrap();
    std::fs::rename(&beside, to).unwrap();
}

/// Waits until every node counted `n` reloads with `result`.
fn await_reloads(cluster: &TestCluster, ca_file: &Path, result: &str, n: f64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    let label = format!("result=\"{result}\"");
    for k in 0..cluster.configs.len() {
        while tls_metric(
            metrics_addr(cluster, k),
            "ringlog_tls_reloads_total",
            &label,
            ca_file,
        ) != Some(n)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "node {k} did not reload"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn certificates_rotate_on_sighup_under_load_without_dropping_connections() {
    // Steady: no election or leader transfer makes the load's client open a new
    // connection, which (trusting only the old CA) would fail after the rotation.
    let mut cluster = TestCluster::configure_routed(3, 1, |_, _, addr| addr);
    cluster.with_patient_elections();
    for k in 0..3 {
        cluster.configs[k].raft.leader_balance = false;
    }
    let pki = Pki::new(cluster.dir.path(), "cluster");
    pki.enable(&mut cluster, &[("ops", ALL_ROLES)]);
    cluster.spawn_all();
    // The CA file the nodes read is overwritten by the rotation: clients keep a copy.
    let old_ca = cluster.dir.path().join("old-ca.pem");
    std::fs::copy(&pki.ca_file, &old_ca).unwrap();
    let ops = pki.client("ops", Validity::Current);
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (started, running) = std::sync::mpsc::channel::<()>();
    let load = cluster_support::spawn_on_executor({
        let (addrs, old_ca) = (cluster.client_addrs(), old_ca.clone());
        async move || {
            let client = tls_client(addrs, &old_ca, Some(&ops));
            await_leaders(&client, 1, PATIENCE).await;
            let mut acked = 0u64;
            loop {
                // Any failure is a dropped connection: the client would have to
                // reconnect, and the nodes' new certificates are of a CA it does not
                // trust.
                client
                    .append(0, vec![Bytes::from(format!("record {acked}"))])
                    .await
                    .unwrap_or_else(|e| panic!("append {acked} failed during the rotation: {e}"));
                acked += 1;
                if acked == 100 {
                    started.send(()).unwrap();
                }
                if acked > 100 && stopped.try_recv().is_ok() {
                    return acked;
                }
            }
        }
    });
    running.recv_timeout(PATIENCE).expect("the load started");
    // A new CA: the nodes trust both while clients move over.
    let next = Pki::new(cluster.dir.path(), "next");
    let both = cluster.dir.path().join("both-ca.pem");
    let bundle = [
        std::fs::read(&old_ca).unwrap(),
        std::fs::read(&next.ca_file).unwrap(),
    ]
    .concat();
    std::fs::write(&both, bundle).unwrap();
    for k in 0..3 {
        renew(&mut cluster, k, &next, &both);
    }
    // Scraped trusting both CAs: a node that has not handled its SIGHUP yet still
    // shows the old certificate, and is waited for rather than refused.
    await_reloads(&cluster, &both, "ok", 1.0);
    // New connections see the new chain, and a client of the new CA gets in.
    let next_ops = next.client("ops", Validity::Current);
    let (addrs, next_ca) = (cluster.client_addrs(), next.ca_file.clone());
    on_executor(async move || {
        let client = tls_client(addrs, &next_ca, Some(&next_ops));
        client
            .append(0, vec![Bytes::from_static(b"new chain")])
            .await
            .expect("a client of the new CA after the reload");
    });
    stop.send(()).unwrap();
    let acked = load
        .join()
        .expect("the load ran through the rotation without a failure");
    assert!(acked > 100, "{acked}");
    // A key that does not parse: the reload fails, counted, and the node keeps
    // serving with the certificates it had.
    let tls = cluster.configs[0].tls.clone().unwrap();
    std::fs::write(&tls.key_file, "not a key").unwrap();
    cluster.sighup(0);
    let metrics = metrics_addr(&cluster, 0);
    let deadline = std::time::Instant::now() + PATIENCE;
    while tls_metric(
        metrics,
        "ringlog_tls_reloads_total",
        "result=\"error\"",
        &next.ca_file,
    ) != Some(1.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed reload was not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let next_ops = next.client("ops", Validity::Current);
    let (addr, next_ca) = (cluster.client_addr(0), next.ca_file.clone());
    on_executor(async move || {
        let client = tls_client(vec![addr], &next_ca, Some(&next_ops));
        client
            .metadata()
            .await
            .expect("the node still serves with its previous certificates");
    });
    assert!(cluster.exited_by_itself(0).is_none());
}

#[test]
fn a_node_joins_a_tls_cluster_with_its_own_certificate() {
    let mut cluster = TestCluster::configure_with_spares(3, 1, 1);
    let pki = Pki::new(cluster.dir.path(), "cluster");
    pki.enable(&mut cluster, &[("ops", ALL_ROLES)]);
    for k in 0..3 {
        cluster.spawn(k);
    }
    let ops = pki.client("ops", Validity::Current);
    let (addrs, ca_file) = (cluster.client_addrs(), pki.ca_file.clone());
    on_executor({
        let (addrs, ca_file, ops) = (addrs.clone(), ca_file.clone(), ops.clone());
        async move || {
            await_leaders(
                &tls_client(addrs[..3].to_vec(), &ca_file, Some(&ops)),
                1,
                PATIENCE,
            )
            .await;
        }
    });
    // Node 4 lists the members and asks to be added as itself (every role,
    // since its certificate names it a node of this cluster), over TLS.
    cluster.spawn_joining(3, 0);
    on_executor(async move || {
        let mut config = ringlog::client::ClientConfig::new(addrs[..3].to_vec());
        config.request_timeout_ms = 8_000;
        let identity = (ops.0.as_path(), ops.1.as_path());
        config.tls = Some(ringlog::tls::client_config(&ca_file, Some(identity)).unwrap());
        let admin = Client::new(config);
        cluster_support::members::await_listing(&admin, 1, PATIENCE, |p| {
            cluster_support::members::voters(p) == [1, 2, 3, 4]
        })
        .await;
        // The new member replicates over mutual TLS like the others.
        admin
            .append(0, vec![Bytes::from_static(b"with four")])
            .await
            .expect("an append with four members");
    });
}
