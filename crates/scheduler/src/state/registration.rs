//! Registration: a peer joins a task, and the priority rules of a first download.

use super::*;

/// Why a prefetch nobody can feed goes to the origin itself (an `OriginReason::Forced` cause).
pub(super) const PREFETCH_SOURCE: &str = "a prefetch (its host holds the ranges it read)";

/// How the first download of a task is done, from the peer's priority (Dragonfly semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstDownload {
    /// LEVEL0 and LEVEL4–6: a seed peer fetches it first when one is known.
    SeedFirst,
    /// LEVEL3: this peer goes to the origin itself.
    BackToSource,
}

/// LEVEL1 forbids the download; LEVEL2 refuses a first download that would need the origin.
fn first_download_rule(priority: i32, task_id: &str) -> Result<FirstDownload, Status> {
    match pb::Priority::try_from(priority) {
        Ok(pb::Priority::Level1) => Err(Status::failed_precondition(format!(
            "priority LEVEL1 forbids downloading task {task_id}"
        ))),
        Ok(pb::Priority::Level2) => Err(Status::not_found(format!(
            "task {task_id} is not in the P2P network and priority LEVEL2 forbids a first download from the origin"
        ))),
        Ok(pb::Priority::Level3) => Ok(FirstDownload::BackToSource),
        _ => Ok(FirstDownload::SeedFirst),
    }
}

/// The host a registering peer runs on.
#[derive(Clone, Copy)]
struct Requester<'a> {
    host_id: &'a str,
    is_seed: bool,
}

impl State {
    /// Creates the task (or refreshes it) and the peer, and decides whether this peer must go
    /// to the origin or a seed peer should be triggered.
    pub fn register(
        &mut self,
        host_id: &str,
        task_id: &str,
        peer_id: &str,
        download: pb::Download,
        now: Instant,
    ) -> Result<Registered, Status> {
        let (host_key, host_type) = self
            .hosts
            .get(host_id)
            .map(|h| (h.id.clone(), h.host_type))
            .ok_or_else(|| not_found_host(host_id))?;
        if download.r#type != pb::TaskType::Standard as i32 {
            return Err(Status::invalid_argument(format!(
                "RegisterPeerRequest: task type {} is not served by AnnouncePeer; only STANDARD tasks are",
                download.r#type
            )));
        }
        if self.peers.contains_key(peer_id) {
            // A re-registration (the daemon retried on a new stream) starts the peer afresh.
            self.remove_peer(peer_id);
        }
        if download.metadata_only {
            self.remove_host_peers_of_task(host_id, task_id);
        }
        let wall = SystemTime::now();
        let Some(task) = self.task_entry(task_id, wall) else {
            return Err(not_found_task(task_id));
        };
        task.update_from(&download, wall);
        let scope = SizeScope::classify(task.content_length, task.piece_count);

        let mut peer = Peer::new(peer_id, task.id.clone(), host_key, &download, wall, now);
        peer.state = peer
            .state
            .on(PeerEvent::Register(scope))
            .map_err(|e| Status::internal(e.to_string()))?;

        let seed_job = if scope == SizeScope::Empty || download.metadata_only {
            // A metadata-only peer already holds the whole task (a daemon telling a restarted
            // scheduler what it has): nothing to fetch, so no seed and no origin.
            None
        } else {
            let requester = Requester {
                host_id,
                is_seed: host_type.is_seed(),
            };
            self.first_source(&mut peer, requester, task_id, &download, now)?
        };
        if host_type.is_seed() {
            self.note_seed_registered(task_id, host_id);
        }
        self.link_peer(peer, host_type.is_seed());
        Ok(Registered { scope, seed_job })
    }

    /// The task, created (its id interned) when new.
    fn task_entry(&mut self, task_id: &str, wall: SystemTime) -> Option<&mut Task> {
        if !self.tasks.contains_key(task_id) {
            let key = Id::from(task_id);
            self.tasks.insert(key.clone(), Task::new(key, wall));
        }
        self.tasks.get_mut(task_id)
    }

    /// Enters a registered peer in its task's and its host's lists.
    fn link_peer(&mut self, peer: Peer, on_seed_host: bool) {
        if let Some(task) = self.tasks.get_mut(&*peer.task_id) {
            task.state = task.state.on(TaskEvent::Download);
            task.peers.insert(peer.id.clone(), on_seed_host);
        }
        if let Some(host) = self.hosts.get_mut(&*peer.host_id) {
            host.peers.insert(peer.id.clone());
        }
        self.peers.insert(peer.id.clone(), Box::new(peer));
    }

    /// Who fetches the task's bytes first: this peer from the origin (forced, a seed host, or
    /// no seed to ask), or a seed peer the returned job triggers.
    fn first_source(
        &mut self,
        peer: &mut Peer,
        requester: Requester<'_>,
        task_id: &str,
        download: &pb::Download,
        now: Instant,
    ) -> Result<Option<SeedJob>, Status> {
        if requester.is_seed {
            peer.need_back_to_source = Some(OriginReason::SeedPeer);
            return Ok(None);
        }
        if download.need_back_to_source {
            peer.need_back_to_source = Some(OriginReason::Forced {
                by: "the download request (need_back_to_source)".into(),
            });
            return Ok(None);
        }
        // A ranged peer (a lazy read) wants a few pieces now: scheduling sends it to peers
        // holding them, else straight to the origin for just those; it never triggers a seed
        // for the whole task (see `ranges.rs`).
        if download.range.is_some() || !self.task_needs_source(task_id) {
            return Ok(None);
        }
        match first_download_rule(download.priority, task_id) {
            Err(status) => {
                self.drop_task_if_unused(task_id);
                Err(status)
            }
            Ok(FirstDownload::BackToSource) => {
                peer.need_back_to_source = Some(OriginReason::Forced {
                    by: "priority LEVEL3".into(),
                });
                Ok(None)
            }
            // A prefetch completes a task its host started with ranged reads, which fetched
            // their pieces from the origin: a seed fetching the whole task again would cost the
            // origin those pieces twice. With nobody to provide the task, the prefetching host
            // is its source, for the pieces it lacks only.
            Ok(FirstDownload::SeedFirst) if download.is_prefetch => {
                peer.need_back_to_source = Some(OriginReason::Forced {
                    by: PREFETCH_SOURCE.into(),
                });
                Ok(None)
            }
            Ok(FirstDownload::SeedFirst) => {
                let seed_job = self.plan_seed(task_id, requester.host_id, download, now);
                if seed_job.is_none() && !self.seed_on_its_way(task_id, now) {
                    // No seed to fetch it: this first peer is the task's source.
                    peer.need_back_to_source = Some(self.unseeded_reason(task_id));
                }
                Ok(seed_job)
            }
        }
    }

    /// A host re-announcing what it holds replaces its earlier peers of that task, so a link
    /// that broke without a restart does not leave the host listed twice.
    fn remove_host_peers_of_task(&mut self, host_id: &str, task_id: &str) {
        let stale: Vec<Id> = self
            .hosts
            .get(host_id)
            .map(|host| {
                host.peers
                    .iter()
                    .filter(|id| self.peers.get(*id).is_some_and(|p| &*p.task_id == task_id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for peer_id in stale {
            self.remove_peer(&peer_id);
        }
    }

    fn drop_task_if_unused(&mut self, task_id: &str) {
        if self.tasks.get(task_id).is_some_and(|t| t.peers.is_empty()) {
            self.tasks.remove(task_id);
        }
    }
}
