//! Who may announce which host, when the gRPC server runs mTLS.
//!
//! The handshake already refused anyone without a cluster certificate; here the certificate
//! must also speak for the host a call names:
//! - AnnounceHost: the announced hostname or IP is in the certificate, and a seed host type
//!   needs role seed-peer. The host's identity is remembered.
//! - Every later call naming a host id (AnnouncePeer, DeleteTask, DeleteHost, ...) must come
//!   from the identity that announced that host.
//!
//! On a plain-text server every call is allowed, as in Dragonfly.

use crate::model::HostType;
use damselfly_tls::{grpc::peer_identity, Identity, Role};
use dragonfly_api::common::v2::Host;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use tonic::{Request, Status};

/// The proven caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Plain-text server: no identity to check.
    Anonymous,
    /// mTLS: what the client certificate names.
    Proven(Identity),
}

impl Caller {
    /// Reads the caller from the TLS session of `request`.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        match peer_identity(request) {
            None => Ok(Caller::Anonymous),
            Some(Ok(identity)) => Ok(Caller::Proven(identity)),
            Some(Err(e)) => Err(Status::permission_denied(format!(
                "client certificate unreadable: {e}"
            ))),
        }
    }
}

/// Host id to the identity that announced it.
#[derive(Default)]
pub struct Authority {
    bound: Mutex<HashMap<String, Identity>>,
}

impl Authority {
    /// Checks an AnnounceHost and remembers who made it.
    pub fn admit_host(&self, caller: &Caller, host: &Host) -> Result<(), Status> {
        let Caller::Proven(identity) = caller else {
            return Ok(());
        };
        let ip_named = host
            .ip
            .parse::<IpAddr>()
            .is_ok_and(|ip| identity.has_ip(ip));
        if !ip_named && !identity.has_name(&host.hostname) {
            return Err(Status::permission_denied(format!(
                "AnnounceHost refused: host {:?} ({}) is not named in the client certificate ({identity})",
                host.hostname, host.ip
            )));
        }
        let seed = HostType::from_pb(host.r#type).is_seed();
        if seed && identity.role != Role::SeedPeer {
            return Err(Status::permission_denied(format!(
                "AnnounceHost refused: host {:?} announces itself as a seed peer, but its certificate has role {}, not {}",
                host.hostname,
                identity.role,
                Role::SeedPeer
            )));
        }
        self.lock().insert(host.id.clone(), identity.clone());
        Ok(())
    }

    /// Checks that `caller` is the identity that announced `host_id`.
    pub fn check_host(&self, caller: &Caller, host_id: &str) -> Result<(), Status> {
        let Caller::Proven(identity) = caller else {
            return Ok(());
        };
        match self.lock().get(host_id) {
            Some(bound) if bound == identity => Ok(()),
            Some(_) => Err(Status::permission_denied(format!(
                "host {host_id} was announced with another certificate; this client ({identity}) may not act for it"
            ))),
            None => Err(Status::permission_denied(format!(
                "host {host_id} has not been announced by this client ({identity}); AnnounceHost first"
            ))),
        }
    }

    /// Forgets a deleted host.
    pub fn forget(&self, host_id: &str) {
        self.lock().remove(host_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Identity>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
