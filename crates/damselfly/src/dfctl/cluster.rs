//! `dfctl host ls` and `dfctl task ls --scheduler`: the cluster as the scheduler sees it, from
//! its JSON API.

use anyhow::Context as _;
use serde_json::Value;

use super::table::{render, size};
use super::{api_base, Output};

/// `GET {scheduler}/api/v1/{what}` as JSON; an error answer becomes the error.
pub async fn get(scheduler: &str, what: &str) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1/{what}", api_base(scheduler));
    let response = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    answer(response, &url).await
}

/// The JSON of an answer; a non-2xx status is an error carrying the API's message.
pub async fn answer(response: reqwest::Response, url: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("reading {url}"))?;
    let value: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{url} answered {status} with no JSON"))?;
    if !status.is_success() {
        let message = value["error"].as_str().unwrap_or("no message");
        anyhow::bail!("{url}: {status}: {message}");
    }
    Ok(value)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rows(list: &Value, cells: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array()
        .map(|items| items.iter().map(cells).collect())
        .unwrap_or_default()
}

pub fn print_hosts(hosts: &Value, output: Output) -> anyhow::Result<String> {
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(hosts)?);
    }
    let rows = rows(hosts, |h| {
        vec![
            text(&h["id"]),
            text(&h["type"]),
            text(&h["hostname"]),
            text(&h["ip"]),
            text(&h["port"]),
            text(&h["peers"]),
            h["disk_used"].as_u64().map_or("-".into(), size),
        ]
    });
    Ok(render(
        &["ID", "TYPE", "HOSTNAME", "IP", "PORT", "PEERS", "DISK USED"],
        &rows,
    ))
}

pub fn print_tasks(tasks: &Value, output: Output) -> anyhow::Result<String> {
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(tasks)?);
    }
    let rows = rows(tasks, |t| {
        let peers = t["peers"].as_array().map_or(0, Vec::len);
        vec![
            text(&t["id"]),
            text(&t["url"]),
            t["content_length"].as_u64().map_or("-".into(), size),
            text(&t["state"]),
            text(&t["piece_count"]),
            peers.to_string(),
            text(&t["updated_at"]),
        ]
    });
    Ok(render(
        &[
            "ID",
            "URL",
            "SIZE",
            "STATE",
            "PIECES",
            "PEERS",
            "LAST ACCESS",
        ],
        &rows,
    ))
}
