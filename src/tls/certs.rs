//! Making certificates: a cluster CA and the certificates it signs, for
//! `ringlog dev --tls` and for tests. Production clusters bring their own (see
//! `docs/security.md` for what each must name).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::peer_name;

/// A certificate authority that signs certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When an issued certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for ten years.
    Current,
    /// Ended yesterday.
    Expired,
}

fn rcgen_error(e: rcgen::Error) -> String {
    format!("cannot make a certificate: {e}")
}

impl Authority {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Authority, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = name(common_name);
        set_validity(&mut params, Validity::Current);
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(rcgen_error)?;
        Ok(Authority { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses; the first is also its
    /// common name), usable by a server and by a client.
    pub fn issue(&self, names: &[String], validity: Validity) -> Result<Issued, String> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(rcgen_error)?;
        params.distinguished_name = name(names.first().map_or("", String::as_str));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let day = time::Duration::days(1);
    let now = time::OffsetDateTime::now_utc();
    let (from, to) = match validity {
        Validity::Current => (now - day, now + day * 3650),
        Validity::Expired => (now - day * 30, now - day),
    };
    params.not_before = from;
    params.not_after = to;
}

/// The names a node's certificate carries: its peer name and the hosts clients dial.
pub fn node_names(node_id: u32, cluster_id: u64) -> Vec<String> {
    vec![
        peer_name(node_id, cluster_id),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ]
}

/// Files of a development PKI, written by [`write_dev_pki`].
pub struct DevPki {
    pub ca_file: PathBuf,
    /// Per node: (certificate file, key file).
    pub nodes: Vec<(u32, PathBuf, PathBuf)>,
    /// The client certificate (principal `admin`, every role).
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

/// The principal of the client certificate `ringlog dev --tls` makes.
pub const DEV_PRINCIPAL: &str = "admin";

/// Writes `filename` in `dir` with `text`; keys are readable by their owner only.
fn write_file(dir: &Path, filename: &str, text: &str, private: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(filename);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Makes a CA, a certificate per node and an `admin` client certificate in `dir`.
pub fn write_dev_pki(dir: &Path, cluster_id: u64, node_ids: &[u32]) -> Result<DevPki, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca = Authority::new(&format!("ringlog dev CA, cluster {cluster_id}"))?;
    let ca_file = write_file(dir, "ca.pem", &ca.cert_pem(), false)?;
    let mut nodes = Vec::new();
    for &id in node_ids {
        let issued = ca.issue(&node_names(id, cluster_id), Validity::Current)?;
        let cert = write_file(dir, &format!("node-{id}.pem"), &issued.cert_pem, false)?;
        let key = write_file(dir, &format!("node-{id}.key"), &issued.key_pem, true)?;
        nodes.push((id, cert, key));
    }
    let client = ca.issue(&[DEV_PRINCIPAL.to_string()], Validity::Current)?;
    let client_cert_file = write_file(dir, "client.pem", &client.cert_pem, false)?;
    let client_key_file = write_file(dir, "client.key", &client.key_pem, true)?;
    Ok(DevPki {
        ca_file,
        nodes,
        client_cert_file,
        client_key_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn issued_certificates_name_their_principal_and_peer() {
        let ca = Authority::new("test CA").unwrap();
        let node = ca.issue(&node_names(2, 99), Validity::Current).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        assert_eq!(super::super::check_peer(Some(&der), 2, 99), Ok(()));
        let other = super::super::check_peer(Some(&der), 3, 99).unwrap_err();
        assert!(other.contains("node-2.cluster-99"), "{other}");
        assert!(other.contains("node-3.cluster-99"), "{other}");
        let client = ca.issue(&["alice".to_string()], Validity::Current).unwrap();
        let der = CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap();
        let parsed = webpki::EndEntityCert::try_from(&der).unwrap();
        assert_eq!(
            super::super::principal_of(&parsed).as_deref(),
            Some("alice")
        );
        assert!(super::super::check_peer(None, 1, 99).is_err());
    }
}
