//! A test cluster's PKI: a CA, a certificate per node, client certificates on
//! demand, and TLS clients (the library's, and a blocking one for raw checks).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ringlog::client::{Client, ClientConfig};
use ringlog::tls::certs::{Authority, Issued, Validity, node_names};
use ringlog::tls::{Role, TlsSettings};

use super::TestCluster;

/// The certificates of a test cluster, in files under its directory.
pub struct Pki {
    pub ca: Authority,
    /// Prefixes every file of this CA, so that two CAs can share a directory.
    name: String,
    pub dir: PathBuf,
    pub ca_file: PathBuf,
}

impl Pki {
    /// A new CA whose files go to `dir/NAME-*`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca = Authority::new(name).unwrap();
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        Pki {
            ca,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            ca_file,
        }
    }

    /// Writes a certificate for `names` as `NAME-FILE.pem` and `NAME-FILE.key`; their
    /// paths.
    pub fn issue(&self, file: &str, names: &[String], validity: Validity) -> (PathBuf, PathBuf) {
        let Issued { cert_pem, key_pem } = self.ca.issue(names, validity).unwrap();
        let cert = self.dir.join(format!("{}-{file}.pem", self.name));
        let key = self.dir.join(format!("{}-{file}.key", self.name));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        (cert, key)
    }

    /// A client certificate whose principal is `principal`.
    pub fn client(&self, principal: &str, validity: Validity) -> (PathBuf, PathBuf) {
        self.issue(
            &format!("client-{principal}-{validity:?}"),
            &[principal.to_string()],
            validity,
        )
    }

    /// Turns TLS on in every node's config (not yet started): a certificate per
    /// node, and `principals` with their roles.
    pub fn enable(&self, cluster: &mut TestCluster, principals: &[(&str, &[Role])]) {
        for k in 0..cluster.configs.len() {
            let config = &cluster.configs[k];
            let names = node_names(config.node_id, config.cluster_id);
            let (cert_file, key_file) = self.issue(
                &format!("node-{}", config.node_id),
                &names,
                Validity::Current,
            );
            cluster.configs[k].tls = Some(TlsSettings {
                ca_file: self.ca_file.clone(),
                cert_file,
                key_file,
                principals: principals
                    .iter()
                    .map(|(name, roles)| (name.to_string(), roles.to_vec()))
                    .collect(),
            });
            cluster.write_config(k);
        }
    }
}

/// A library client that trusts `ca_file` and shows `identity`, failing fast.
pub fn tls_client(
    addrs: Vec<String>,
    ca_file: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Client {
    let mut config = ClientConfig::new(addrs);
    config.retries_max = 50;
    config.retry_backoff_max_ms = 200;
    config.request_timeout_ms = 3_000;
    let identity = identity.map(|(cert, key)| (cert.as_path(), key.as_path()));
    config.tls = Some(ringlog::tls::client_config(ca_file, identity).unwrap());
    Client::new(config)
}

/// A blocking TLS connection to `addr` that trusts `ca_file`, checks the node's
/// certificate against `name` and shows `identity`.
pub fn blocking_tls(
    addr: SocketAddr,
    name: &str,
    ca_file: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let identity = identity.map(|(cert, key)| (cert.as_path(), key.as_path()));
    let config = ringlog::tls::client_config(ca_file, identity).unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let session = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(session, tcp)
}

/// GET `path` over HTTPS, trusting `ca_file`: the status and the body.
pub fn https_get(addr: SocketAddr, path: &str, ca_file: &Path) -> (u16, String) {
    let mut stream = blocking_tls(addr, "127.0.0.1", ca_file, None);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    stream.flush().unwrap();
    let mut text = String::new();
    // The server closes after its answer; a close without close_notify is fine here.
    let _ = stream.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// The value of metric `name` whose labels contain `label`, over HTTPS.
pub fn tls_metric(addr: SocketAddr, name: &str, label: &str, ca_file: &Path) -> Option<f64> {
    let (_, body) = https_get(addr, "/metrics", ca_file);
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Node `k`'s metrics address.
pub fn metrics_addr(cluster: &TestCluster, k: usize) -> SocketAddr {
    cluster.configs[k].listen.metrics
}

/// The roles every operation needs.
pub const ALL_ROLES: &[Role] = &[Role::Append, Role::Read, Role::Admin];

/// The TLS every client and metric scrape of this test binary uses, once a test
/// turned it on for a whole cluster (`RINGLOG_CHAOS_TLS`).
static EVERYWHERE: OnceLock<(Arc<rustls::ClientConfig>, PathBuf)> = OnceLock::new();

/// Makes the helpers' clients (`client`, `patient_client`) show `client` and their
/// metric scrapes speak HTTPS trusting `ca_file`, for the rest of this process.
pub fn use_tls_everywhere(client: Arc<rustls::ClientConfig>, ca_file: PathBuf) {
    let _ = EVERYWHERE.set((client, ca_file));
}

/// The clients' TLS, once `use_tls_everywhere` turned it on.
pub fn client_tls() -> Option<Arc<rustls::ClientConfig>> {
    EVERYWHERE.get().map(|(client, _)| client.clone())
}

/// The CA metric scrapes trust, once `use_tls_everywhere` turned TLS on.
pub fn metrics_ca() -> Option<&'static Path> {
    EVERYWHERE.get().map(|(_, ca)| ca.as_path())
}

/// `GET path` over HTTPS (each step within `timeout`), or the error when the node
/// does not answer.
pub fn try_https_get(
    addr: SocketAddr,
    path: &str,
    ca_file: &Path,
    timeout: Duration,
) -> std::io::Result<String> {
    let config = ringlog::tls::client_config(ca_file, None).map_err(std::io::Error::other)?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let session = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut stream = rustls::StreamOwned::new(session, tcp);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        // The node closes after its answer, without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        other => {
            other?;
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
