//! `[tls]` of a node's TOML: where its certificates are, and what each client
//! principal may do. See `docs/security.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a client principal may do. A request needs one role (`required_role`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Append records.
    Append,
    /// Read records and list members.
    Read,
    /// Trim, transfer leadership, change membership.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Append => "append",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// A set of roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    pub const ALL: Roles = Roles(0b111);
    pub const NONE: Roles = Roles(0);

    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |bits, r| bits | Self::bit(*r)))
    }

    fn bit(role: Role) -> u8 {
        1 << role as u8
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & Self::bit(role) != 0
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM bundle of the certificate authorities whose certificates this node trusts,
    /// for peers and for clients.
    pub ca_file: PathBuf,
    /// PEM chain of this node's certificate, leaf first. Peers require it to name
    /// `node-N.cluster-C` (see [`super::peer_name`]); clients check it against the
    /// host they dial.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// Client principal (the first DNS name of its certificate) -> its roles. A
    /// principal not listed has none.
    #[serde(default)]
    pub principals: BTreeMap<String, Vec<Role>>,
}

impl TlsSettings {
    /// The roles of `principal`.
    pub fn roles_of(&self, principal: &str) -> Roles {
        self.principals
            .get(principal)
            .map_or(Roles::NONE, |r| Roles::of(r))
    }

    /// Checks what can be checked without reading the files.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, path) in [
            ("tls.ca_file", &self.ca_file),
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err((key.into(), "is empty; give the path of a PEM file".into()));
            }
        }
        for name in self.principals.keys() {
            if rustls::pki_types::DnsName::try_from(name.as_str()).is_err() {
                let reason = format!(
                    "{name:?} is not a DNS name; a principal is the first DNS name of a client certificate"
                );
                return Err(("tls.principals".into(), reason));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_a_set() {
        let some = Roles::of(&[Role::Append, Role::Read]);
        assert!(some.contains(Role::Append) && some.contains(Role::Read));
        assert!(!some.contains(Role::Admin));
        assert!(Roles::ALL.contains(Role::Admin));
        assert!(!Roles::NONE.contains(Role::Read));
    }

    #[test]
    fn principals_map_names_to_roles_and_unknown_names_have_none() {
        let settings: TlsSettings = toml::from_str(
            r#"
            ca_file = "ca.pem"
            cert_file = "node.pem"
            key_file = "node.key"
            [principals]
            writer = ["append"]
            ops = ["append", "read", "admin"]
            "#,
        )
        .unwrap();
        assert_eq!(settings.roles_of("writer"), Roles::of(&[Role::Append]));
        assert_eq!(settings.roles_of("ops"), Roles::ALL);
        assert_eq!(settings.roles_of("stranger"), Roles::NONE);
        assert!(settings.validate().is_ok());
        let bad: Result<TlsSettings, _> = toml::from_str(
            "ca_file = \"a\"\ncert_file = \"b\"\nkey_file = \"c\"\n[principals]\nx = [\"root\"]",
        );
        assert!(bad.is_err());
    }

    #[test]
    fn a_principal_must_be_a_dns_name() {
        let mut settings = TlsSettings {
            ca_file: "a".into(),
            cert_file: "b".into(),
            key_file: "c".into(),
            principals: BTreeMap::new(),
        };
        settings.principals.insert("not a name".into(), vec![]);
        assert_eq!(settings.validate().unwrap_err().0, "tls.principals");
        settings.principals.clear();
        settings.ca_file = PathBuf::new();
        assert_eq!(settings.validate().unwrap_err().0, "tls.ca_file");
    }
}
