//! `dfctl preheat`: starts a preheat job on the scheduler's JSON API and, with `--wait`,
//! follows it with a progress bar until it ends.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::api_base;
use super::cluster::answer;

/// How often `--wait` asks for the job's progress.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What to preheat and where (Dragonfly's dfctl flags, as job `args`).
#[derive(Debug, Default)]
pub struct Request {
    pub urls: Vec<String>,
    pub image: Option<String>,
    pub platform: Option<String>,
    pub scope: String,
    pub ips: Vec<String>,
    pub count: Option<u32>,
    pub percentage: Option<u32>,
    pub headers: HashMap<String, String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tag: Option<String>,
    pub application: Option<String>,
    pub piece_length: Option<u64>,
    pub timeout: Option<Duration>,
}

impl Request {
    fn body(&self) -> Value {
        let (kind, url, urls) = match &self.image {
            Some(image) => ("image", image.clone(), Vec::new()),
            None => ("file", String::new(), self.urls.clone()),
        };
        json!({
            "type": "preheat",
            "args": {
                "type": kind,
                "url": url,
                "urls": urls,
                "platform": self.platform,
                "scope": self.scope,
                "ips": self.ips,
                "count": self.count,
                "percentage": self.percentage,
                "headers": self.headers,
                "username": self.username,
                "password": self.password,
                "tag": self.tag,
                "application": self.application,
                "piece_length": self.piece_length,
                "timeout": self.timeout.map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)),
            }
        })
    }
}

/// POSTs the job; returns it as the scheduler answered.
pub async fn create(
    scheduler: &str,
    token: Option<&str>,
    request: &Request,
) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1/jobs", api_base(scheduler));
    let mut post = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(request.body().to_string());
    if let Some(token) = token {
        post = post.bearer_auth(token);
    }
    let response = post.send().await.with_context(|| format!("POST {url}"))?;
    answer(response, &url).await
}

/// Polls the job until it ends, drawing its bytes as a progress bar (hidden when `quiet`).
pub async fn wait(scheduler: &str, id: &str, quiet: bool) -> anyhow::Result<Value> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let job = super::cluster::get(scheduler, &format!("jobs/{id}")).await?;
        let progress = &job["progress"];
        bar.set_length(progress["total_bytes"].as_u64().unwrap_or(0));
        bar.set_position(progress["finished_bytes"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "{}/{} downloads",
            progress["downloads_finished"], progress["downloads_total"]
        ));
        match job["state"].as_str() {
            Some("SUCCESS") | Some("FAILURE") => {
                bar.finish();
                return Ok(job);
            }
            _ => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
