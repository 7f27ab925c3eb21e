//! TLS on every port, and who may do what (`docs/security.md`).
//!
//! One cluster CA signs every certificate. A node presents its own on all three
//! ports; peers must present one that names the node id they claim
//! ([`peer_name`]), clients one whose first DNS name is a principal with roles in
//! `[tls.principals]`. Certificates, keys and the CA bundle are read again on
//! SIGHUP ([`TlsContext::reload`]): new handshakes use them, established
//! connections keep the session they have.

pub mod certs;
mod settings;
mod stream;
#[cfg(test)]
mod stream_tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

pub use settings::{Role, Roles, TlsSettings};
pub use stream::{HandshakeError, Stream};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("certificate file {path} is not this node's: {reason}")]
    NotThisNode { path: PathBuf, reason: String },
    #[error("the CA bundle cannot verify certificates: {0}")]
    Verifier(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The name a node's certificate must carry (as a DNS subject alternative name) for
/// peers to accept it as `node_id` of `cluster_id`. A cluster id alone would be an
/// all-numeric last label, which certificate names may not have.
pub fn peer_name(node_id: u32, cluster_id: u64) -> String {
    format!("node-{node_id}.cluster-{cluster_id}")
}

/// Whether `name` is the peer name of some node of `cluster_id`.
fn is_node_name(name: &str, cluster_id: u64) -> bool {
    let Some((node, _)) = name
        .strip_prefix("node-")
        .and_then(|rest| rest.split_once(".cluster-"))
    else {
        return false;
    };
    // Parsed and printed back, so that `node-03` or another cluster's name fails.
    node.parse::<u32>()
        .is_ok_and(|n| peer_name(n, cluster_id) == name)
}

/// Why `cert` may not speak for node `node_id` of `cluster_id`; Ok when it names it.
/// The chain was verified against the CA during the handshake.
pub fn check_peer(
    cert: Option<&CertificateDer<'_>>,
    node_id: u32,
    cluster_id: u64,
) -> Result<(), String> {
    let wanted = peer_name(node_id, cluster_id);
    let cert = cert
        .ok_or_else(|| format!("no client certificate; peers must present one naming {wanted}"))?;
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let name = ServerName::try_from(wanted.as_str()).expect("peer names are DNS names");
    parsed.verify_is_valid_for_subject_name(&name).map_err(|_| {
        let names: Vec<&str> = parsed.valid_dns_names().collect();
        format!(
            "the certificate names {}, not {wanted} (node {node_id} of cluster {cluster_id})",
            if names.is_empty() {
                "no DNS name".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

/// The principal of a client certificate: its first DNS subject alternative name.
fn principal_of(cert: &webpki::EndEntityCert<'_>) -> Option<String> {
    cert.valid_dns_names().next().map(str::to_string)
}

/// ring's TLS 1.3 suites, AES-128-GCM first: with AES instructions it costs about
/// two thirds of AES-256-GCM per byte, and every byte of replication passes through
/// it several times (docs/benchmarks.md, *TLS against plaintext*).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "key file",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA bundle", path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "CA bundle",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The TLS configurations a node uses, built from one reading of its files.
pub struct Configs {
    /// Client and peer ports: a certificate signed by the CA is required.
    pub server: Arc<rustls::ServerConfig>,
    /// The metrics port: no client certificate asked (Prometheus scrapes without one).
    pub metrics: Arc<rustls::ServerConfig>,
    /// Peer links this node opens: it checks the other node's certificate and shows
    /// its own.
    pub peer_client: Arc<rustls::ClientConfig>,
}

impl Configs {
    fn load(settings: &TlsSettings, node_id: u32, cluster_id: u64) -> Result<Configs, TlsError> {
        let roots = read_roots(&settings.ca_file)?;
        let chain = read_certs("certificate file", &settings.cert_file)?;
        // A certificate peers would refuse is refused here, by name, rather than
        // by every peer later.
        check_peer(chain.first(), node_id, cluster_id).map_err(|reason| TlsError::NotThisNode {
            path: settings.cert_file.clone(),
            reason,
        })?;
        let key = read_key(&settings.key_file)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let metrics = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())?;
        let peer_client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Configs {
            server: Arc::new(server),
            metrics: Arc::new(metrics),
            peer_client: Arc::new(peer_client),
        })
    }
}

/// A node's TLS: its settings and the configurations last loaded from its files,
/// shared by every executor.
pub struct TlsContext {
    settings: TlsSettings,
    /// Whose certificate this node must hold.
    node_id: u32,
    cluster_id: u64,
    current: RwLock<Arc<Configs>>,
    /// Reloads that took effect, and that failed (the previous files stay in use).
    pub reloads_ok_total: AtomicU64,
    pub reloads_failed_total: AtomicU64,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    pub fn load(
        settings: &TlsSettings,
        node_id: u32,
        cluster_id: u64,
    ) -> Result<TlsContext, TlsError> {
        Ok(TlsContext {
            node_id,
            cluster_id,
            current: RwLock::new(Arc::new(Configs::load(settings, node_id, cluster_id)?)),
            settings: settings.clone(),
            reloads_ok_total: AtomicU64::new(0),
            reloads_failed_total: AtomicU64::new(0),
        })
    }

    /// The configurations for the next handshake.
    pub fn configs(&self) -> Arc<Configs> {
        self.current.read().expect("never poisoned").clone()
    }

    /// Reads the files again. On error the configurations in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = match Configs::load(&self.settings, self.node_id, self.cluster_id) {
            Ok(fresh) => Arc::new(fresh),
            Err(e) => {
                self.reloads_failed_total.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        *self.current.write().expect("never poisoned") = fresh;
        self.reloads_ok_total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The principal a client certificate names and its roles. A node of this
    /// cluster (its certificate names `node-N.cluster-C`) has every role: it is a
    /// trusted member already, and asks as itself when it joins (`serve --join`).
    pub fn roles_of(&self, cert: Option<&CertificateDer<'_>>) -> (Option<String>, Roles) {
        let parsed = cert.and_then(|c| webpki::EndEntityCert::try_from(c).ok());
        let principal = parsed.as_ref().and_then(principal_of);
        let mut names = parsed.iter().flat_map(|c| c.valid_dns_names());
        let is_node = names.any(|n| is_node_name(n, self.cluster_id));
        let roles = match principal.as_deref() {
            _ if is_node => Roles::ALL,
            Some(p) => self.settings.roles_of(p),
            None => Roles::NONE,
        };
        (principal, roles)
    }
}

/// Whether `e` is the other end refusing this end's certificate (a fatal alert
/// about it). Under TLS 1.3 a client hears of it only on its first read, but the
/// server sent it before reading any request: nothing was acted on.
pub fn certificate_refused(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(refuses_our_certificate)
}

/// Whether `e` is the other end's fatal alert about this end's certificate.
pub fn refuses_our_certificate(e: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    let rustls::Error::AlertReceived(alert) = e else {
        return false;
    };
    matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
    )
}

/// A client's TLS (CLI, bench, client library): the CA to check nodes against and,
/// for nodes that require one, a certificate to show.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(read_roots(ca_file)?);
    let config = match identity {
        Some((cert, key)) => {
            builder.with_client_auth_cert(read_certs("certificate file", cert)?, read_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a client checks a node's certificate against: the host part of the
/// `host:port` it dials (an IP address or a DNS name).
pub fn server_name_of(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is neither an IP address nor a DNS name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_dialled() {
        assert!(matches!(
            server_name_of("127.0.0.1:7400"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name_of("[::1]:7400"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name_of("node-1.example.com:7400"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name_of("not a host:1").is_err());
    }

    #[test]
    fn node_names_are_recognised_only_for_this_cluster() {
        assert!(is_node_name("node-3.cluster-7400", 7400));
        assert!(!is_node_name("node-3.cluster-7401", 7400));
        assert!(!is_node_name("node-03.cluster-7400", 7400));
        assert!(!is_node_name("node-x.cluster-7400", 7400));
        assert!(!is_node_name("ops", 7400));
    }

    #[test]
    fn peer_names_carry_node_and_cluster() {
        assert_eq!(peer_name(3, 7400), "node-3.cluster-7400");
        assert!(ServerName::try_from(peer_name(3, 7400).as_str()).is_ok());
    }
}
