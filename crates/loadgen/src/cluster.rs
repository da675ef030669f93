//! The synthetic cluster: hosts as a dfdaemon announces them, tasks as URLs with real task IDs,
//! and which peer of which task runs on which host.
//!
//! Peer `k` runs on host `k / peers_per_host` and downloads task `k % tasks`, so each task's
//! first peer is among the first `tasks` launched (it goes to the origin: there are no seed
//! hosts) and the task's later peers keep joining while the earlier ones download.

use dragonfly_api::common::v2 as pb;

/// Every synthetic host announces this gRPC upload port (the scheduler refuses port 0; it
/// never connects to a normal host).
pub const HOST_PORT: i32 = 4000;
/// And this Vortex piece port.
pub const HOST_DOWNLOAD_PORT: i32 = 4005;
/// Announced upload and download capacity, bits per second (10 Gbit/s NICs).
pub const HOST_BANDWIDTH_BPS: u64 = 10_000_000_000;
/// Hosts per IDC: a cluster spans a few IDCs, so affinity scoring has something to compare.
pub const HOSTS_PER_IDC: usize = 2_500;

/// One task: its URL and the task ID a dfdaemon would compute for it.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub url: String,
    pub id: String,
}

/// What one synthetic peer is: its IDs and its task's shape.
#[derive(Debug, Clone)]
pub struct PeerPlan {
    pub host_id: String,
    pub task_id: String,
    pub peer_id: String,
    pub url: String,
    pub pieces: u32,
    pub piece_length: u64,
    /// Seeds the peer's report times, so a run's schedule is the same every time.
    pub seed: u64,
}

/// Hosts, tasks and the peer assignment.
pub struct Cluster {
    pub hosts: Vec<pb::Host>,
    pub tasks: Vec<TaskSpec>,
    pub peers_per_host: usize,
    pub pieces: u32,
    pub piece_length: u64,
}

impl Cluster {
    pub fn new(hosts: usize, tasks: usize, peers_per_host: usize, pieces: u32) -> Self {
        Self {
            hosts: (0..hosts).map(host).collect(),
            tasks: (0..tasks.max(1)).map(task).collect(),
            peers_per_host,
            pieces,
            piece_length: damselfly_core::MIN_PIECE_LENGTH,
        }
    }

    pub fn peer_count(&self) -> usize {
        self.hosts.len() * self.peers_per_host
    }

    /// Peer `k` (see the module doc); `None` past the last one.
    pub fn peer(&self, k: usize) -> Option<PeerPlan> {
        let host = self.hosts.get(k / self.peers_per_host.max(1))?;
        let task = self.tasks.get(k % self.tasks.len())?;
        Some(PeerPlan {
            host_id: host.id.clone(),
            task_id: task.id.clone(),
            peer_id: damselfly_core::peer_id(&host.ip, &host.hostname, false),
            url: task.url.clone(),
            pieces: self.pieces,
            piece_length: self.piece_length,
            seed: k as u64,
        })
    }
}

/// Host `i` on 10.0.0.0/8 (never dialled: the addresses only have to be distinct).
fn host(i: usize) -> pb::Host {
    let ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    let hostname = format!("loadgen-node-{i:05}");
    pb::Host {
        id: damselfly_core::host_id(&ip, &hostname, false),
        r#type: 0,
        hostname,
        ip,
        port: HOST_PORT,
        download_port: HOST_DOWNLOAD_PORT,
        os: "linux".into(),
        platform: "debian".into(),
        platform_family: "debian".into(),
        platform_version: "12".into(),
        kernel_version: "6.1.0".into(),
        cpu: Some(pb::Cpu {
            logical_count: 16,
            physical_count: 8,
            ..Default::default()
        }),
        memory: Some(pb::Memory {
            total: 64 << 30,
            available: 48 << 30,
            ..Default::default()
        }),
        network: Some(pb::Network {
            max_tx_bandwidth: HOST_BANDWIDTH_BPS,
            max_rx_bandwidth: HOST_BANDWIDTH_BPS,
            idc: Some(format!("idc-{}", i / HOSTS_PER_IDC)),
            location: Some("cn|zj|hz".into()),
            ..Default::default()
        }),
        disk: Some(pb::Disk {
            total: 1 << 40,
            free: 1 << 39,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Task `t`: a URL like an artifact or a layer, and its real task ID.
fn task(t: usize) -> TaskSpec {
    let url = format!("http://artifacts.loadgen.invalid/releases/build-{t:04}/bundle.tar.gz");
    let params = damselfly_core::id::default_filtered_query_params();
    let spec = damselfly_core::TaskIdSpec {
        url: &url,
        filtered_query_params: &params,
        ..Default::default()
    };
    // The URL is ours and well formed; a failure would only change the ID's shape.
    let id = spec.task_id().unwrap_or_else(|_| format!("{t:064x}"));
    TaskSpec { url, id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_spread_over_hosts_and_tasks_without_sharing_a_host_per_task() {
        let cluster = Cluster::new(100, 20, 5, 4);
        assert_eq!(cluster.peer_count(), 500);
        assert!(cluster.peer(500).is_none());
        let mut seen = std::collections::HashSet::new();
        for k in 0..cluster.peer_count() {
            let peer = cluster.peer(k).unwrap();
            assert_eq!(peer.task_id.len(), 64);
            assert!(
                seen.insert((peer.host_id.clone(), peer.task_id.clone())),
                "host {} has two peers of one task",
                peer.host_id
            );
        }
        let ids: std::collections::HashSet<_> = cluster.hosts.iter().map(|h| &h.id).collect();
        assert_eq!(ids.len(), 100);
    }
}
