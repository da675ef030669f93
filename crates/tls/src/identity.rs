//! Who a verified peer certificate speaks for.
//!
//! A certificate names its host by SAN DNS names and SAN IP addresses, and its Damselfly
//! role by one SAN URI:
//!
//! | SAN URI                        | role        | may                                         |
//! |--------------------------------|-------------|---------------------------------------------|
//! | `damselfly://role/peer`        | peer        | announce itself as a normal host            |
//! | `damselfly://role/seed-peer`   | seed peer   | announce itself as a seed (super/strong/weak)|
//! | `damselfly://role/scheduler`   | scheduler   | ask a daemon to download (seed trigger)     |
//!
//! A certificate without a role URI (one issued for official Dragonfly components) counts as
//! a peer: it may take part in the swarm but neither seed nor trigger downloads.

use crate::{Result, TlsError};
use std::fmt;
use std::net::IpAddr;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Prefix of the SAN URI that carries a role.
pub const ROLE_URI_PREFIX: &str = "damselfly://role/";

/// What a certificate's holder may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Peer,
    SeedPeer,
    Scheduler,
}

impl Role {
    /// The name used in the SAN URI and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::SeedPeer => "seed-peer",
            Role::Scheduler => "scheduler",
        }
    }

    /// The SAN URI that grants this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.name())
    }

    /// Parses a role name (`peer`, `seed-peer`, `scheduler`).
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Peer, Role::SeedPeer, Role::Scheduler]
            .into_iter()
            .find(|role| role.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The names, addresses and role a peer certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub role: Role,
}

impl Identity {
    /// Reads the identity of a DER certificate. The certificate must already be verified
    /// (the TLS handshake did that); this only reads it.
    pub fn from_der(der: &[u8]) -> Result<Identity> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut identity = Identity {
            dns_names: Vec::new(),
            ips: Vec::new(),
            role: Role::Peer,
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
            identity.add(name)?;
        }
        Ok(identity)
    }

    fn add(&mut self, name: &GeneralName<'_>) -> Result<()> {
        match name {
            GeneralName::DNSName(dns) => self.dns_names.push(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => {
                if let Some(ip) = ip_from_san(bytes) {
                    self.ips.push(ip);
                }
            }
            GeneralName::URI(uri) => {
                if let Some(name) = uri.strip_prefix(ROLE_URI_PREFIX) {
                    self.role = Role::from_name(name)
                        .ok_or_else(|| TlsError::Certificate(format!("unknown role URI {uri}")))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the certificate names this host name (case-insensitive, exact match: a
    /// wildcard would let one certificate speak for a whole domain of hosts).
    pub fn has_name(&self, hostname: &str) -> bool {
        self.dns_names
            .iter()
            .any(|name| name.eq_ignore_ascii_case(hostname))
    }

    /// Whether the certificate names this address.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self.ips.iter().map(ToString::to_string).collect();
        write!(
            f,
            "role {} names [{}] ips [{}]",
            self.role,
            self.dns_names.join(", "),
            ips.join(", ")
        )
    }
}

fn ip_from_san(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}
