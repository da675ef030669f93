//! Hosts: announced, listed, deleted.

use super::*;

impl State {
    /// Stores or refreshes a host. Load bookkeeping survives re-announces.
    pub fn announce_host(&mut self, host: pb::Host, now: Instant) -> Result<(), Status> {
        if host.id.is_empty() {
            return Err(Status::invalid_argument("AnnounceHost: host.id is empty"));
        }
        if host.ip.is_empty() {
            return Err(Status::invalid_argument(format!(
                "AnnounceHost: host {} has no ip",
                host.id
            )));
        }
        if !(0..=i32::from(u16::MAX)).contains(&host.port) || host.port == 0 {
            return Err(Status::invalid_argument(format!(
                "AnnounceHost: host {} has invalid port {}",
                host.id, host.port
            )));
        }
        let host_type = HostType::from_pb(host.r#type);
        match self.hosts.get_mut(host.id.as_str()) {
            Some(existing) => {
                existing.host_type = host_type;
                existing.announced = host;
                existing.last_announce = now;
            }
            None => {
                let id = Id::from(host.id.as_str());
                self.hosts.insert(
                    id.clone(),
                    Host {
                        id,
                        host_type,
                        announced: host,
                        last_announce: now,
                        assigned_tx_bandwidth: 0,
                        active_children: 0,
                        peers: BTreeSet::new(),
                        upload: UploadMeter::default(),
                        traffic: HostTraffic::default(),
                    },
                );
            }
        }
        Ok(())
    }

    pub fn host(&self, host_id: &str) -> Option<&Host> {
        self.hosts.get(host_id)
    }

    /// The hosts as announced, except `network.tx_bandwidth`: the upload this scheduler
    /// measured from its children's piece reports, where it has measured one. A rationing
    /// seed peer reads it to give its pieces to the children that can pass them on.
    pub fn list_hosts(&self, host_type: Option<u32>, now: Instant) -> Vec<pb::Host> {
        let mut hosts: Vec<pb::Host> = self
            .hosts
            .values()
            .filter(|h| host_type.is_none_or(|t| h.announced.r#type == t))
            .map(|h| {
                let mut host = h.announced.clone();
                if let Some(measured) = h.upload.bits_per_second(now) {
                    host.network
                        .get_or_insert_with(Default::default)
                        .tx_bandwidth = Some(measured);
                }
                host
            })
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        hosts
    }

    /// Removes a host and every peer on it.
    pub fn delete_host(&mut self, host_id: &str) -> Result<(), Status> {
        let host = self
            .hosts
            .get(host_id)
            .ok_or_else(|| not_found_host(host_id))?;
        let peers: Vec<Id> = host.peers.iter().cloned().collect();
        for peer_id in peers {
            self.remove_peer(&peer_id);
        }
        self.hosts.remove(host_id);
        Ok(())
    }
}
