//! A TLS stream over real loopback sockets: both directions at once through split
//! halves, and a session that moves between streams mid-connection.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt, split};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use rustls::pki_types::ServerName;

use super::certs::{Authority, Validity, node_names};
use super::{Stream, TlsContext, TlsSettings, client_config, peer_name};

/// A node's TLS (node 1 of cluster 9) and a client config trusting its CA, with
/// files under `dir`.
fn pki(dir: &Path) -> (Arc<TlsContext>, Arc<rustls::ClientConfig>) {
    let ca = Authority::new("test CA").unwrap();
    let node = ca.issue(&node_names(1, 9), Validity::Current).unwrap();
    let client = ca.issue(&["ops".to_string()], Validity::Current).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let settings = TlsSettings {
        ca_file: write("ca.pem", &ca.cert_pem()),
        cert_file: write("node.pem", &node.cert_pem),
        key_file: write("node.key", &node.key_pem),
        principals: Default::default(),
    };
    let (cert, key) = (
        write("client.pem", &client.cert_pem),
        write("client.key", &client.key_pem),
    );
    let context = Arc::new(TlsContext::load(&settings, 1, 9).unwrap());
    let client = client_config(&settings.ca_file, Some((&cert, &key))).unwrap();
    (context, client)
}

/// A connected pair of TLS streams, server side first.
async fn tls_pair(context: &TlsContext, client: Arc<rustls::ClientConfig>) -> (Stream, Stream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = context.configs().server.clone();
    let accepting = glommio::spawn_local(async move {
        let tcp = listener.accept().await.unwrap();
        Stream::accept_tls(tcp, server, deadline).await.unwrap()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(peer_name(1, 9)).unwrap();
    let dialled = Stream::connect_tls(tcp, client, name, deadline)
        .await
        .unwrap();
    (accepting.await, dialled)
}

fn run(work: impl AsyncFnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .unwrap()
            .run(async move { work().await })
    })
    .join()
    .unwrap();
}

/// Bytes each side sends: many times the socket buffers and the session's limit,
/// so that writers park on full sockets while their readers take records in.
const BYTES_EACH_WAY: usize = 32 * 1024 * 1024;

#[test]
fn both_directions_at_once_through_split_halves_never_stall() {
    let dir = tempfile::tempdir().unwrap();
    let (context, client) = pki(dir.path());
    run(async move || {
        let (a, b) = tls_pair(&context, client).await;
        let mut tasks = Vec::new();
        for stream in [a, b] {
            let (mut reader, mut writer) = split(stream);
            tasks.push(glommio::spawn_local(async move {
                let chunk = vec![7u8; 64 * 1024];
                for _ in 0..BYTES_EACH_WAY / chunk.len() {
                    writer.write_all(&chunk).await.unwrap();
                }
                writer.flush().await.unwrap();
                0
            }));
            tasks.push(glommio::spawn_local(async move {
                let (mut buf, mut total) = (vec![0u8; 100_000], 0);
                while total < BYTES_EACH_WAY {
                    let n = reader.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed after {total} bytes");
                    assert!(buf[..n].iter().all(|b| *b == 7));
                    total += n;
                }
                total
            }));
        }
        let done = futures_lite::future::or(
            async {
                let mut received = 0;
                for task in tasks {
                    received += task.await;
                }
                Some(received)
            },
            async {
                glommio::timer::sleep(Duration::from_secs(30)).await;
                None
            },
        )
        .await;
        assert_eq!(done, Some(2 * BYTES_EACH_WAY), "a direction stalled");
    });
}

#[test]
fn a_session_taken_apart_and_rebuilt_keeps_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (context, client) = pki(dir.path());
    run(async move || {
        let (mut server, mut dialled) = tls_pair(&context, client).await;
        dialled.write_all(b"first frame, then more").await.unwrap();
        dialled.flush().await.unwrap();
        let mut head = [0u8; 5];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"first");
        // What placement does: the socket and the session apart, then together
        // (here on the same executor); what was decrypted and not read travels
        // in the session.
        let (tcp, session) = server.into_parts();
        let mut moved = Stream::from_parts(tcp, session);
        let mut rest = [0u8; 17];
        moved.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b" frame, then more");
        moved.write_all(b"answer").await.unwrap();
        moved.flush().await.unwrap();
        let mut answer = [0u8; 6];
        dialled.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    });
}

#[test]
fn a_node_certificate_must_name_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (context, _) = pki(dir.path());
    // The files name node 1: as node 2 they are refused, by name.
    let error = TlsContext::load(&context.settings, 2, 9).unwrap_err();
    assert!(error.to_string().contains("node-2.cluster-9"), "{error}");
    assert!(context.reload().is_ok());
    std::fs::write(&context.settings.key_file, "not a key").unwrap();
    assert!(context.reload().is_err());
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(context.reloads_ok_total.load(Relaxed), 1);
    assert_eq!(context.reloads_failed_total.load(Relaxed), 1);
}
