//! A preheat request in one shape, whether it came over gRPC (`PreheatImage`, `PreheatFile`)
//! or as the JSON body of `POST /api/v1/jobs` (Dragonfly manager's job `args`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use dragonfly_api::scheduler::v2::{PreheatFileRequest, PreheatImageRequest};
use serde::Deserialize;

use crate::SchedulerError;

/// Downloads run at once per job (Dragonfly's `concurrent_task_count` default).
pub const DEFAULT_CONCURRENT_TASK_COUNT: usize = 8;
/// Upper bound on `concurrent_task_count` (Dragonfly's).
pub const MAX_CONCURRENT_TASK_COUNT: usize = 100;
/// A job's whole budget when the request names none (what Dragonfly's Go scheduler uses).
pub const DEFAULT_PREHEAT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Image preheats name blob tasks by digest, as Damselfly's mirror does by default
/// (`proxy.registryMirror.enableTaskIDBasedBlobDigest`), so a pull finds the preheated task.
pub const DEFAULT_BLOB_DIGEST_TASK_ID: bool = true;

/// Which hosts fetch (Dragonfly's `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One seed peer per task, picked by task ID so a task sticks to one seed.
    #[default]
    SingleSeedPeer,
    AllSeedPeers,
    AllPeers,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Self, SchedulerError> {
        match text {
            "" | "single_seed_peer" => Ok(Scope::SingleSeedPeer),
            "all_seed_peers" => Ok(Scope::AllSeedPeers),
            "all_peers" => Ok(Scope::AllPeers),
            other => Err(invalid(format!(
                "scope {other:?} is not single_seed_peer, all_seed_peers or all_peers"
            ))),
        }
    }
}

/// For the `all_*` scopes: which of the hosts, in Dragonfly's order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Ips(Vec<String>),
    Count(u32),
    Percentage(u32),
}

/// Platforms of an image index to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    /// The scheduler's own (what a runtime on this machine would pull).
    Host,
    All,
    /// `os/arch[/variant]` entries.
    List(Vec<String>),
}

impl Platforms {
    /// `""` → host, `all` → all, else a comma-separated list.
    pub fn parse(text: &str) -> Self {
        match text.trim() {
            "" => Platforms::Host,
            "all" => Platforms::All,
            list => Platforms::List(
                list.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
        }
    }
}

/// Values that must never reach a log line (`Debug` hides them).
#[derive(Clone, Default)]
pub struct Secrets {
    /// Request headers sent to the origin; may hold `Authorization`.
    pub headers: HashMap<String, String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&String> = self.headers.keys().collect();
        f.debug_struct("Secrets")
            .field("header_names", &names)
            .field("username", &self.username.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What to fetch.
#[derive(Debug, Clone)]
pub enum Target {
    Files(Vec<String>),
    /// A manifest URL `scheme://registry/v2/repo/manifests/ref` (or a reference, see
    /// `registry::manifest_url`).
    Image {
        url: String,
        platforms: Platforms,
    },
}

/// Download fields every task of a job shares; they are part of the task IDs.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    pub piece_length: Option<u64>,
    pub tag: Option<String>,
    pub application: Option<String>,
    pub filtered_query_params: Vec<String>,
    pub priority: i32,
    pub blob_digest_task_id: bool,
    pub certificate_chain: Vec<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

/// One preheat request.
#[derive(Debug, Clone)]
pub struct PreheatSpec {
    pub target: Target,
    pub scope: Scope,
    pub selection: Selection,
    pub task: TaskOptions,
    pub secrets: Secrets,
    pub concurrent_task_count: usize,
    pub timeout: Duration,
}

fn invalid(message: String) -> SchedulerError {
    SchedulerError::InvalidPreheat(message)
}

fn selection(ips: Vec<String>, count: Option<u32>, percentage: Option<u32>) -> Selection {
    if !ips.is_empty() {
        Selection::Ips(ips)
    } else if let Some(count) = count {
        Selection::Count(count)
    } else if let Some(percentage) = percentage {
        Selection::Percentage(percentage)
    } else {
        Selection::All
    }
}

fn concurrency(requested: Option<i64>) -> usize {
    match requested {
        Some(n) if n > 0 => usize::try_from(n)
            .unwrap_or(MAX_CONCURRENT_TASK_COUNT)
            .min(MAX_CONCURRENT_TASK_COUNT),
        _ => DEFAULT_CONCURRENT_TASK_COUNT,
    }
}

fn timeout(requested: Option<&prost_wkt_types::Duration>) -> Duration {
    let positive = requested.and_then(|d| {
        let seconds = u64::try_from(d.seconds).ok()?;
        let nanos = u32::try_from(d.nanos).ok()?;
        Some(Duration::new(seconds, nanos))
    });
    positive
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_PREHEAT_TIMEOUT)
}

/// Dragonfly's default when a request names no filtered query params.
pub(super) fn filtered(params: Vec<String>) -> Vec<String> {
    if params.is_empty() {
        damselfly_core::id::default_filtered_query_params()
    } else {
        params
    }
}

impl PreheatSpec {
    /// Rejects what cannot run; called before a job is created.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        match &self.target {
            Target::Files(urls) if urls.is_empty() => return Err(invalid("no URL".into())),
            Target::Files(urls) => {
                for url in urls {
                    url::Url::parse(url).map_err(|e| invalid(format!("URL {url:?}: {e}")))?;
                }
            }
            Target::Image { url, .. } if url.is_empty() => {
                return Err(invalid("no image URL".into()))
            }
            Target::Image { .. } => {}
        }
        match self.selection {
            Selection::Count(n) if !(1..=200).contains(&n) => {
                Err(invalid(format!("count {n} is not within 1..=200")))
            }
            Selection::Percentage(p) if !(1..=100).contains(&p) => {
                Err(invalid(format!("percentage {p} is not within 1..=100")))
            }
            _ => Ok(()),
        }
    }

    pub fn from_image_request(r: PreheatImageRequest) -> Result<Self, SchedulerError> {
        let spec = Self {
            target: Target::Image {
                url: r.url,
                platforms: Platforms::parse(r.platform.as_deref().unwrap_or_default()),
            },
            scope: Scope::parse(&r.scope)?,
            selection: selection(r.ips, r.count, r.percentage),
            task: TaskOptions {
                piece_length: r.piece_length,
                tag: r.tag,
                application: r.application,
                filtered_query_params: filtered(r.filtered_query_params),
                priority: r.priority,
                // Go clients never set field 20; the mirror's default decides (see the const).
                blob_digest_task_id: r.enable_task_id_based_blob_digest
                    || DEFAULT_BLOB_DIGEST_TASK_ID,
                certificate_chain: r.certificate_chain,
                insecure_skip_verify: r.insecure_skip_verify,
            },
            secrets: Secrets {
                headers: r.header,
                username: r.username,
                password: r.password,
            },
            concurrent_task_count: concurrency(r.concurrent_task_count),
            timeout: timeout(r.timeout.as_ref()),
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_file_request(r: PreheatFileRequest) -> Result<Self, SchedulerError> {
        let spec = Self {
            target: Target::Files(vec![r.url]),
            scope: Scope::parse(&r.scope)?,
            selection: selection(r.ips, r.count, r.percentage),
            task: TaskOptions {
                piece_length: r.piece_length,
                tag: r.tag,
                application: r.application,
                filtered_query_params: filtered(r.filtered_query_params),
                priority: r.priority,
                blob_digest_task_id: false,
                certificate_chain: r.certificate_chain,
                insecure_skip_verify: r.insecure_skip_verify,
            },
            secrets: Secrets {
                headers: r.header,
                ..Default::default()
            },
            concurrent_task_count: concurrency(r.concurrent_task_count),
            timeout: timeout(r.timeout.as_ref()),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// The body of `POST /api/v1/jobs`: Dragonfly manager's `{"type":"preheat","args":{…}}`.
#[derive(Deserialize)]
pub struct JobRequest {
    #[serde(rename = "type")]
    pub job_type: String,
    pub args: JobArgs,
}

/// Dragonfly manager's preheat `args` (snake_case), plus `urls` for several files at once.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct JobArgs {
    /// `image` or `file`.
    #[serde(rename = "type")]
    pub preheat_type: String,
    pub url: String,
    pub urls: Vec<String>,
    pub piece_length: Option<u64>,
    pub tag: Option<String>,
    pub application: Option<String>,
    /// `&`-joined, as Dragonfly's manager takes it.
    pub filtered_query_params: Option<String>,
    pub headers: HashMap<String, String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `os/arch[/variant]`, a comma-separated list, or `all`.
    pub platform: Option<String>,
    pub scope: String,
    pub ips: Vec<String>,
    pub count: Option<u32>,
    pub percentage: Option<u32>,
    pub concurrent_task_count: Option<i64>,
    /// Nanoseconds, as Dragonfly's manager takes it.
    pub timeout: Option<u64>,
    /// Damselfly: name blob tasks by digest (default [`DEFAULT_BLOB_DIGEST_TASK_ID`]).
    pub task_id_based_blob_digest: Option<bool>,
    pub insecure_skip_verify: bool,
}

impl JobRequest {
    pub fn into_spec(self) -> Result<PreheatSpec, SchedulerError> {
        if self.job_type != "preheat" {
            return Err(invalid(format!(
                "job type {:?} is not supported (only \"preheat\")",
                self.job_type
            )));
        }
        let a = self.args;
        let target = match a.preheat_type.as_str() {
            "image" => Target::Image {
                url: a.url,
                platforms: Platforms::parse(a.platform.as_deref().unwrap_or_default()),
            },
            "file" => {
                let mut urls = a.urls;
                if !a.url.is_empty() {
                    urls.insert(0, a.url);
                }
                Target::Files(urls)
            }
            other => return Err(invalid(format!("args.type {other:?} is not image or file"))),
        };
        let is_image = matches!(target, Target::Image { .. });
        let params = a
            .filtered_query_params
            .map(|p| p.split('&').map(str::to_string).collect())
            .unwrap_or_default();
        let spec = PreheatSpec {
            target,
            scope: Scope::parse(&a.scope)?,
            selection: selection(a.ips, a.count, a.percentage),
            task: TaskOptions {
                piece_length: a.piece_length,
                tag: a.tag,
                application: a.application,
                filtered_query_params: filtered(params),
                priority: 0,
                blob_digest_task_id: is_image
                    && a.task_id_based_blob_digest
                        .unwrap_or(DEFAULT_BLOB_DIGEST_TASK_ID),
                certificate_chain: Vec::new(),
                insecure_skip_verify: a.insecure_skip_verify,
            },
            secrets: Secrets {
                headers: a.headers,
                username: a.username,
                password: a.password,
            },
            concurrent_task_count: concurrency(a.concurrent_task_count),
            timeout: a
                .timeout
                .filter(|ns| *ns > 0)
                .map_or(DEFAULT_PREHEAT_TIMEOUT, Duration::from_nanos),
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_job_bodies_parse() {
        let body = r#"{"type":"preheat","args":{"type":"image","url":"http://r/v2/a/manifests/v1",
            "platform":"linux/amd64,linux/arm64","scope":"all_seed_peers","count":2,
            "headers":{"Authorization":"Bearer x"},"password":"p","timeout":1000000000}}"#;
        let request: JobRequest = serde_json::from_str(body).unwrap();
        let spec = request.into_spec().unwrap();
        assert_eq!(spec.scope, Scope::AllSeedPeers);
        assert_eq!(spec.selection, Selection::Count(2));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert!(spec.task.blob_digest_task_id);
        let Target::Image { platforms, .. } = &spec.target else {
            panic!("not an image")
        };
        assert_eq!(
            platforms,
            &Platforms::List(vec!["linux/amd64".into(), "linux/arm64".into()])
        );
        let shown = format!("{spec:?}");
        assert!(
            !shown.contains("Bearer x") && !shown.contains("\"p\""),
            "{shown}"
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let parse = |body: &str| {
            serde_json::from_str::<JobRequest>(body)
                .unwrap()
                .into_spec()
                .unwrap_err()
                .to_string()
        };
        assert!(parse(r#"{"type":"sync","args":{}}"#).contains("sync"));
        assert!(parse(r#"{"type":"preheat","args":{"type":"file"}}"#).contains("no URL"));
        let scope = r#"{"type":"preheat","args":{"type":"file","url":"http://a/b","scope":"x"}}"#;
        assert!(parse(scope).contains("scope"));
        let count = r#"{"type":"preheat","args":{"type":"file","url":"http://a/b","count":0}}"#;
        assert!(parse(count).contains("count"));
    }
}
