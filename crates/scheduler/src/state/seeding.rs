//! Seed peers: whether a task needs one, which seed host gets the job, and the trigger's outcome.

use super::*;

impl State {
    /// Nobody has, or is fetching, the content (Dragonfly: task pending, failed or left, or
    /// succeeded without an available peer).
    pub(super) fn task_needs_source(&self, task_id: &str) -> bool {
        let Some(task) = self.tasks.get(task_id) else {
            return true;
        };
        match task.state {
            TaskState::Pending | TaskState::Failed | TaskState::Leave => true,
            TaskState::Succeeded => !self.has_provider(task, None),
            TaskState::Running => false,
        }
    }

    /// Some peer of the task (other than `except`) holds the content or is producing it.
    pub(super) fn has_provider(&self, task: &Task, except: Option<&str>) -> bool {
        task.peers
            .iter()
            .filter(|id| Some(&***id) != except)
            .filter_map(|id| self.peer(id))
            .any(|p| self.is_provider(p))
    }

    fn is_provider(&self, peer: &Peer) -> bool {
        // A ranged peer fetches only its range: it never provides the whole task.
        if peer.range.is_some() {
            return false;
        }
        match peer.state {
            PeerState::BackToSource | PeerState::Succeeded => true,
            // Registered and about to be sent to the origin (its session has not run its
            // scheduling round yet): counting it closes the race where two peers registering
            // together would both go back to source.
            PeerState::Received(_) => peer.need_back_to_source.is_some(),
            PeerState::Running => !peer.parents.is_empty() || self.is_seed_host(&peer.host_id),
            _ => false,
        }
    }

    /// Why a task nobody holds goes to the origin through a normal peer: the seed failed it
    /// (recently), or the cluster has no seed to ask (this peer is simply the first).
    pub(super) fn unseeded_reason(&self, task_id: &str) -> OriginReason {
        let seed_failed = self
            .tasks
            .get(task_id)
            .is_some_and(|t| matches!(t.seed, SeedTrigger::Failed { .. }));
        if seed_failed {
            OriginReason::NoSeedPeer
        } else {
            OriginReason::FirstInCluster
        }
    }

    pub(super) fn is_seed_host(&self, host_id: &str) -> bool {
        self.hosts
            .get(host_id)
            .is_some_and(|h| h.host_type.is_seed())
    }

    /// Picks the seed host for the task and marks the trigger in flight, unless one is already
    /// on its way or the seed failed this task recently.
    pub(super) fn plan_seed(
        &mut self,
        task_id: &str,
        requester: &str,
        download: &pb::Download,
        now: Instant,
    ) -> Option<SeedJob> {
        if !self.policy.seed_peer_enable {
            return None;
        }
        let task = self.tasks.get(task_id)?;
        match &task.seed {
            SeedTrigger::InFlight { .. } => return None,
            SeedTrigger::Failed { at } if now.duration_since(*at) < SEED_PEER_FAILED_TIMEOUT => {
                return None
            }
            _ => {}
        }
        let seed = self.pick_seed_host(task_id, requester)?;
        let endpoint = host_endpoint(&seed.announced.ip, seed.announced.port);
        let host_id = seed.id.to_string();
        let mut download = download.clone();
        // The seed fetches from the origin and keeps the content in its cache only.
        download.need_back_to_source = true;
        download.output_path = None;
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.seed = SeedTrigger::InFlight {
                host_id: host_id.clone(),
                since: now,
            };
        }
        Some(SeedJob {
            task_id: task_id.to_string(),
            host_id,
            endpoint,
            download,
        })
    }

    /// Seed hosts sorted by id; the task id hash picks one, so a task sticks to one seed.
    fn pick_seed_host(&self, task_id: &str, requester: &str) -> Option<&Host> {
        let mut seeds: Vec<&Host> = self
            .hosts
            .values()
            .filter(|h| h.host_type.is_seed() && &*h.id != requester)
            .collect();
        if seeds.is_empty() {
            return None;
        }
        seeds.sort_by(|a, b| a.id.cmp(&b.id));
        let index = (stable_hash(task_id) % seeds.len() as u64) as usize;
        seeds.get(index).copied()
    }

    pub(super) fn note_seed_registered(&mut self, task_id: &str, host_id: &str) {
        if let Some(task) = self.tasks.get_mut(task_id) {
            if matches!(&task.seed, SeedTrigger::InFlight { host_id: h, .. } if h == host_id) {
                task.seed = SeedTrigger::Registered {
                    host_id: host_id.to_string(),
                };
            }
        }
    }

    /// A triggered seed peer has not registered yet and the wait budget is not spent.
    pub fn seed_on_its_way(&self, task_id: &str, now: Instant) -> bool {
        self.tasks.get(task_id).is_some_and(|t| match &t.seed {
            SeedTrigger::InFlight { since, .. } => {
                now.duration_since(*since) < self.policy.seed_peer_wait_timeout
            }
            _ => false,
        })
    }

    /// The trigger RPC failed: remember it so peers stop waiting and later ones skip the seed.
    pub fn seed_trigger_failed(&mut self, task_id: &str, host_id: &str, now: Instant) {
        if let Some(task) = self.tasks.get_mut(task_id) {
            let ours = match &task.seed {
                SeedTrigger::InFlight { host_id: h, .. }
                | SeedTrigger::Registered { host_id: h } => h == host_id,
                _ => false,
            };
            if ours {
                task.seed = SeedTrigger::Failed { at: now };
            }
        }
    }

    /// The seed finished its download; a later trigger for this task may happen again.
    pub fn seed_trigger_done(&mut self, task_id: &str, host_id: &str) {
        if let Some(task) = self.tasks.get_mut(task_id) {
            if matches!(&task.seed, SeedTrigger::InFlight { host_id: h, .. } | SeedTrigger::Registered { host_id: h } if h == host_id)
            {
                task.seed = SeedTrigger::Idle;
            }
        }
    }
}
