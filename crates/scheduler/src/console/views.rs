//! The JSON the console (and dfctl, and scripts) read: hosts with what they moved, tasks with
//! their peers and byte sources, and one task's flow of pieces, parent → child.

use serde_json::{json, Value};
use std::time::SystemTime;

use crate::model::{Host, OriginReason, Peer, Task};
use crate::state::{FlowEdge, State};

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn reason_json(reason: Option<&OriginReason>) -> Value {
    reason.map_or(
        Value::Null,
        |r| json!({ "code": r.code(), "text": r.to_description() }),
    )
}

fn host_type(host: Option<&Host>) -> &'static str {
    match host {
        Some(h) if h.host_type.is_seed() => "seed",
        Some(_) => "normal",
        None => "unknown",
    }
}

pub fn hosts_json(state: &State) -> Value {
    Value::Array(state.hosts().into_iter().map(host_json).collect())
}

fn host_json(h: &Host) -> Value {
    let a = &h.announced;
    let disk = a.disk.as_ref();
    let network = a.network.as_ref();
    json!({
        "id": &*h.id,
        "type": host_type(Some(h)),
        "hostname": a.hostname,
        "ip": a.ip,
        "port": a.port,
        "download_port": a.download_port,
        "idc": network.and_then(|n| n.idc.clone()),
        "location": network.and_then(|n| n.location.clone()),
        "max_tx_bandwidth": h.max_tx_bandwidth(),
        "max_rx_bandwidth": network.map(|n| n.max_rx_bandwidth),
        "tx_bandwidth": network.and_then(|n| n.tx_bandwidth),
        "rx_bandwidth": network.and_then(|n| n.rx_bandwidth),
        "assigned_tx_bandwidth": h.assigned_tx_bandwidth,
        "active_children": h.active_children,
        "cpu_percent": a.cpu.as_ref().map(|c| c.percent),
        "disk_total": disk.map(|d| d.total),
        "disk_used": disk.map(|d| d.used),
        "peers": h.peers.len(),
        "bytes_in_from_peers": h.traffic.in_from_peers,
        "bytes_in_from_origin": h.traffic.in_from_origin,
        "bytes_out_to_peers": h.traffic.out_to_peers,
        "seconds_since_announce": h.last_announce.elapsed().as_secs(),
    })
}

pub fn tasks_json(state: &State) -> Value {
    Value::Array(
        state
            .tasks()
            .into_iter()
            .map(|t| task_json(state, t))
            .collect(),
    )
}

/// A task with its peers and where its bytes came from.
pub fn task_json(state: &State, t: &Task) -> Value {
    let peers: Vec<Value> = t
        .peers
        .iter()
        .filter_map(|id| state.peer(id))
        .map(|p| peer_json(state, t, p))
        .collect();
    json!({
        "id": &*t.id,
        "url": t.url,
        "state": t.state.name(),
        "content_length": t.content_length,
        "piece_length": t.piece_length,
        "piece_count": t.piece_count,
        "peers": peers,
        "bytes_from_origin": t.flow.from_origin,
        "bytes_from_seeds": t.flow.from_seeds,
        "bytes_from_peers": t.flow.from_peers,
        "origin_bytes_saved": t.flow.origin_bytes_saved(),
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
    })
}

fn peer_json(state: &State, t: &Task, p: &Peer) -> Value {
    let host = state.host(&p.host_id);
    let announced = host.map(|h| &h.announced);
    json!({
        "id": &*p.id,
        "host_id": &*p.host_id,
        "host_type": host_type(host),
        "ip": announced.map(|h| h.ip.clone()),
        "hostname": announced.map(|h| h.hostname.clone()),
        "state": p.state.name(),
        "back_to_source": t.back_to_source_peers.contains(&p.id),
        "origin_reason": reason_json(p.origin_reason.as_ref()),
        "bytes_from_origin": p.flow.from_origin,
        "finished_pieces": p.finished_pieces.len(),
    })
}

/// One task and its flow: every parent → child edge with its bytes, biggest first.
pub fn task_flow_json(state: &State, task_id: &str) -> Option<Value> {
    let task = state.task(task_id)?;
    let mut edges = state.flow_edges(task_id);
    edges.sort_by(|a, b| {
        (b.bytes.cmp(&a.bytes)).then_with(|| (a.parent, a.child).cmp(&(b.parent, b.child)))
    });
    let edges: Vec<Value> = edges
        .into_iter()
        .map(
            |FlowEdge {
                 parent,
                 child,
                 bytes,
             }| {
                let end = |peer_id: &str| {
                    let host = state.peer(peer_id).and_then(|p| state.host(&p.host_id));
                    json!({
                        "peer_id": peer_id,
                        "host_id": host.map(|h| h.id.to_string()),
                        "hostname": host.map(|h| h.announced.hostname.clone()),
                        "ip": host.map(|h| h.announced.ip.clone()),
                        "type": host_type(host),
                    })
                };
                json!({ "parent": end(parent), "child": end(child), "bytes": bytes })
            },
        )
        .collect();
    let mut value = task_json(state, task);
    value["edges"] = Value::Array(edges);
    Some(value)
}
