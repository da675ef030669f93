//! Preheat jobs in the scheduler's memory: what each job fetches on which host, and how far
//! it got. No database: a restart forgets them, as it forgets hosts and peers. The store is
//! bounded ([`MAX_PREHEAT_JOBS`]) and finished jobs expire after [`PREHEAT_JOB_TTL`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::SchedulerError;

/// Jobs kept at most; a new job evicts the oldest finished one, and is refused when every
/// kept job is still running (a client looping on POST cannot grow the scheduler's memory).
pub const MAX_PREHEAT_JOBS: usize = 1024;
/// How long a finished job stays queryable.
pub const PREHEAT_JOB_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A job's life, with Dragonfly's job state names on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Created, downloads not started yet.
    Pending,
    /// Seeds are downloading.
    Started,
    Succeeded,
    Failed(String),
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Started => "STARTED",
            JobState::Succeeded => "SUCCESS",
            JobState::Failed(_) => "FAILURE",
        }
    }

    fn is_finished(&self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed(_))
    }
}

/// One task of a job on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    Pending,
    Running,
    Succeeded,
    Failed(String),
}

impl TargetState {
    fn name(&self) -> &'static str {
        match self {
            TargetState::Pending => "PENDING",
            TargetState::Running => "RUNNING",
            TargetState::Succeeded => "SUCCESS",
            TargetState::Failed(_) => "FAILURE",
        }
    }
}

/// The host a task is fetched on.
#[derive(Debug, Clone, Serialize)]
pub struct TargetHost {
    pub host_id: String,
    pub hostname: String,
    pub ip: String,
    /// `http://ip:port` of its upload (DfdaemonUpload) server.
    #[serde(skip)]
    pub endpoint: String,
}

#[derive(Debug, Clone)]
struct Target {
    host: TargetHost,
    state: TargetState,
    finished_bytes: u64,
    content_length: Option<u64>,
}

/// One URL of a job (a file, or an image's layer or config).
#[derive(Debug, Clone)]
pub struct JobTask {
    pub url: String,
    pub task_id: String,
    targets: Vec<Target>,
}

impl JobTask {
    pub fn new(url: String, task_id: String, hosts: Vec<TargetHost>) -> Self {
        let targets = hosts
            .into_iter()
            .map(|host| Target {
                host,
                state: TargetState::Pending,
                finished_bytes: 0,
                content_length: None,
            })
            .collect();
        Self {
            url,
            task_id,
            targets,
        }
    }

    /// The hosts the task is fetched on, in target order.
    pub fn hosts(&self) -> Vec<TargetHost> {
        self.targets.iter().map(|t| t.host.clone()).collect()
    }
}

#[derive(Debug, Clone)]
struct Job {
    id: String,
    kind: &'static str,
    url: String,
    state: JobState,
    created_at: SystemTime,
    updated_at: SystemTime,
    finished: Option<Instant>,
    tasks: Vec<JobTask>,
}

/// How one (task, host) download went, reported by the runner.
pub enum Progress {
    Started { content_length: u64 },
    Piece { length: u64 },
    Finished(Result<(), String>),
}

/// The job store.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<BTreeMap<String, Job>>,
}

impl Jobs {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Job>) -> R) -> R {
        let mut guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Adds a job in state PENDING and returns its ID.
    pub fn create(
        &self,
        kind: &'static str,
        url: &str,
        tasks: Vec<JobTask>,
    ) -> Result<String, SchedulerError> {
        let id = format!("{:032x}", rand::random::<u128>());
        let now = SystemTime::now();
        let job = Job {
            id: id.clone(),
            kind,
            url: url.to_string(),
            state: JobState::Pending,
            created_at: now,
            updated_at: now,
            finished: None,
            tasks,
        };
        self.with(|jobs| {
            make_room(jobs, Instant::now())?;
            jobs.insert(id.clone(), job);
            Ok(id)
        })
    }

    pub fn set_state(&self, id: &str, state: JobState) {
        self.with(|jobs| {
            if let Some(job) = jobs.get_mut(id) {
                if state.is_finished() {
                    job.finished = Some(Instant::now());
                }
                job.state = state;
                job.updated_at = SystemTime::now();
            }
        });
    }

    /// Records the progress of task `task` of job `id` on target `target`.
    pub fn progress(&self, id: &str, task: usize, target: usize, progress: Progress) {
        self.with(|jobs| {
            let Some(job) = jobs.get_mut(id) else { return };
            job.updated_at = SystemTime::now();
            let Some(t) = job
                .tasks
                .get_mut(task)
                .and_then(|t| t.targets.get_mut(target))
            else {
                return;
            };
            match progress {
                Progress::Started { content_length } => {
                    t.state = TargetState::Running;
                    t.content_length = Some(content_length);
                }
                Progress::Piece { length } => t.finished_bytes += length,
                Progress::Finished(Ok(())) => {
                    t.state = TargetState::Succeeded;
                    t.finished_bytes = t.content_length.unwrap_or(t.finished_bytes);
                }
                Progress::Finished(Err(e)) => t.state = TargetState::Failed(e),
            }
        });
    }

    /// The job's final state from its targets: Dragonfly fails a job only when nothing
    /// succeeded; here any failed (task, host) fails the job, so a caller waiting for a warm
    /// cluster learns that some seed is cold.
    pub fn finish(&self, id: &str) -> Option<JobState> {
        let state = self.with(|jobs| {
            let job = jobs.get(id)?;
            let failures: Vec<String> = job
                .tasks
                .iter()
                .flat_map(|t| t.targets.iter().map(move |h| (t, h)))
                .filter_map(|(t, h)| match &h.state {
                    TargetState::Succeeded => None,
                    TargetState::Failed(e) => Some(format!("{} on {}: {e}", t.url, h.host.ip)),
                    _ => Some(format!("{} on {}: not finished", t.url, h.host.ip)),
                })
                .collect();
            Some(match failures.first() {
                None => JobState::Succeeded,
                Some(first) => JobState::Failed(format!(
                    "{} of the downloads failed; first: {first}",
                    failures.len()
                )),
            })
        })?;
        self.set_state(id, state.clone());
        Some(state)
    }

    pub fn view(&self, id: &str) -> Option<JobView> {
        self.with(|jobs| jobs.get(id).map(JobView::of))
    }

    /// Every kept job, newest first.
    pub fn list(&self) -> Vec<JobView> {
        let mut views: Vec<JobView> = self.with(|jobs| jobs.values().map(JobView::of).collect());
        views.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        views
    }
}

/// Drops expired finished jobs; at capacity, evicts the oldest finished one.
fn make_room(jobs: &mut BTreeMap<String, Job>, now: Instant) -> Result<(), SchedulerError> {
    jobs.retain(|_, job| {
        job.finished
            .is_none_or(|at| now.duration_since(at) < PREHEAT_JOB_TTL)
    });
    if jobs.len() < MAX_PREHEAT_JOBS {
        return Ok(());
    }
    let oldest = jobs
        .values()
        .filter(|job| job.finished.is_some())
        .min_by_key(|job| job.finished)
        .map(|job| job.id.clone());
    match oldest {
        Some(id) => {
            jobs.remove(&id);
            Ok(())
        }
        None => Err(SchedulerError::TooManyJobs(MAX_PREHEAT_JOBS)),
    }
}

/// A job as the HTTP API and dfctl show it (Dragonfly's job fields where they exist).
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: &'static str,
    /// `file` or `image`.
    pub preheat_type: &'static str,
    pub url: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub progress: ProgressView,
    pub result: ResultView,
    pub tasks: Vec<TaskView>,
}

/// Totals over every (task, host) download of a job.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    pub downloads_total: usize,
    pub downloads_finished: usize,
    pub downloads_failed: usize,
    /// Bytes landed on the hosts so far, and the sum of the sizes known so far.
    pub finished_bytes: u64,
    pub total_bytes: u64,
}

/// Dragonfly's PreheatResponse shape.
#[derive(Debug, Clone, Serialize)]
pub struct ResultView {
    pub success_tasks: Vec<ResultTask>,
    pub failure_tasks: Vec<ResultTask>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResultTask {
    pub url: String,
    pub hostname: String,
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub url: String,
    pub task_id: String,
    pub hosts: Vec<TargetView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    #[serde(flatten)]
    pub host: TargetHost,
    pub state: &'static str,
    pub finished_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl JobView {
    fn of(job: &Job) -> Self {
        let mut progress = ProgressView {
            downloads_total: 0,
            downloads_finished: 0,
            downloads_failed: 0,
            finished_bytes: 0,
            total_bytes: 0,
        };
        let mut result = ResultView {
            success_tasks: Vec::new(),
            failure_tasks: Vec::new(),
        };
        let tasks = job
            .tasks
            .iter()
            .map(|task| TaskView {
                url: task.url.clone(),
                task_id: task.task_id.clone(),
                hosts: task
                    .targets
                    .iter()
                    .map(|t| target_view(task, t, &mut progress, &mut result))
                    .collect(),
            })
            .collect();
        Self {
            id: job.id.clone(),
            job_type: "preheat",
            preheat_type: job.kind,
            url: job.url.clone(),
            state: job.state.name(),
            error: match &job.state {
                JobState::Failed(e) => Some(e.clone()),
                _ => None,
            },
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            progress,
            result,
            tasks,
        }
    }
}

fn target_view(
    task: &JobTask,
    target: &Target,
    progress: &mut ProgressView,
    result: &mut ResultView,
) -> TargetView {
    progress.downloads_total += 1;
    progress.finished_bytes += target.finished_bytes;
    progress.total_bytes += target.content_length.unwrap_or(0);
    let entry = |description| ResultTask {
        url: task.url.clone(),
        hostname: target.host.hostname.clone(),
        ip: target.host.ip.clone(),
        description,
    };
    let error = match &target.state {
        TargetState::Succeeded => {
            progress.downloads_finished += 1;
            result.success_tasks.push(entry(None));
            None
        }
        TargetState::Failed(e) => {
            progress.downloads_failed += 1;
            result.failure_tasks.push(entry(Some(e.clone())));
            Some(e.clone())
        }
        _ => None,
    };
    TargetView {
        host: target.host.clone(),
        state: target.state.name(),
        finished_bytes: target.finished_bytes,
        content_length: target.content_length,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(ip: &str) -> TargetHost {
        TargetHost {
            host_id: format!("{ip}-h"),
            hostname: "h".into(),
            ip: ip.into(),
            endpoint: format!("http://{ip}:4000"),
        }
    }

    #[test]
    fn progress_and_result_follow_the_downloads() {
        let jobs = Jobs::default();
        let tasks = vec![JobTask::new(
            "http://o/f".into(),
            "t".into(),
            vec![host("10.0.0.1"), host("10.0.0.2")],
        )];
        let id = jobs.create("file", "http://o/f", tasks).unwrap();
        assert_eq!(jobs.view(&id).unwrap().state, "PENDING");
        jobs.progress(&id, 0, 0, Progress::Started { content_length: 10 });
        jobs.progress(&id, 0, 0, Progress::Piece { length: 4 });
        let view = jobs.view(&id).unwrap();
        assert_eq!(view.progress.finished_bytes, 4);
        assert_eq!(view.progress.total_bytes, 10);
        jobs.progress(&id, 0, 0, Progress::Finished(Ok(())));
        jobs.progress(&id, 0, 1, Progress::Finished(Err("refused".into())));
        let state = jobs.finish(&id).unwrap();
        assert!(matches!(state, JobState::Failed(ref e) if e.contains("refused")));
        let view = jobs.view(&id).unwrap();
        assert_eq!(view.state, "FAILURE");
        assert_eq!(view.result.success_tasks.len(), 1);
        assert_eq!(view.result.failure_tasks[0].ip, "10.0.0.2");
    }

    #[test]
    fn the_store_is_bounded_by_running_jobs() {
        let jobs = Jobs::default();
        let ids: Vec<String> = (0..MAX_PREHEAT_JOBS)
            .map(|_| jobs.create("file", "u", Vec::new()).unwrap())
            .collect();
        assert!(matches!(
            jobs.create("file", "u", Vec::new()),
            Err(SchedulerError::TooManyJobs(_))
        ));
        jobs.finish(&ids[3]);
        let newest = jobs.create("file", "u", Vec::new()).unwrap();
        assert!(jobs.view(&ids[3]).is_none(), "the finished job made room");
        assert!(jobs.view(&newest).is_some());
    }
}
