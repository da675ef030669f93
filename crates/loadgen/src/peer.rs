//! One synthetic peer: an AnnouncePeer stream the way a Damselfly dfdaemon drives it.
//!
//! Register, wait for the decision (the measured latency), report Started (or
//! BackToSourceStarted), then one piece report per `piece_interval`, each naming one of the
//! parents it was given (round robin, pushed mesh parents included), then Finished, and wait
//! for the scheduler to close the stream, which it does only after handling every report.

use std::time::{Duration, Instant};

use dragonfly_api::common::v2 as pb;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::announce_peer_response::Response as PeerResponse;
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::*;
use futures::FutureExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::cluster::PeerPlan;

/// Requests queued on one stream before `send` waits (HTTP/2 flow control does the rest).
pub const REQUEST_BUFFER: usize = 4;
/// Pieces a peer fetches at once, as it tells the scheduler (the client's default).
pub const CONCURRENT_PIECES: u32 = 8;
/// What each piece "took": 4 MiB in 40 ms, about 800 Mbit/s.
pub const PIECE_COST: Duration = Duration::from_millis(40);

/// When a downloading peer's piece reports are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrivals {
    /// Exponential gaps with the piece interval as their mean: peers that download on their
    /// own links finish pieces independently, so together they offer a Poisson stream.
    Poisson,
    /// Exactly one piece interval apart, counted from Started. Peers that start together
    /// (the first wave, and those replacing them as they finish) stay in step, so the
    /// scheduler gets every peer's report in one burst per interval: a worst case.
    Lockstep,
}

/// How a peer paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Mean pause before each piece report (its download).
    pub piece_interval: Duration,
    pub arrivals: Arrivals,
    /// The whole stream, register to close.
    pub timeout: Duration,
}

impl Pace {
    /// The pause before the next report; `uniform` is a draw from [0, 1).
    pub fn gap(&self, uniform: f64) -> Duration {
        match self.arrivals {
            Arrivals::Lockstep => self.piece_interval,
            // Inverse transform sampling; 1 - u is in (0, 1], so the logarithm is finite.
            Arrivals::Poisson => self.piece_interval.mul_f64(-(1.0 - uniform).ln()),
        }
    }
}

/// What the scheduler decided for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decided {
    #[default]
    Nothing,
    Parents,
    BackToSource,
}

/// One peer's run, for the totals.
#[derive(Debug, Default)]
pub struct Outcome {
    pub decision_latency: Option<Duration>,
    /// One of the peers that registered together at the start (the generator opens
    /// `--concurrency` streams at once), not one that replaced a finished peer.
    pub first_wave: bool,
    pub decided: Decided,
    pub reports: u64,
    pub pushes: u64,
    /// Per report: how late the generator woke for it (its own runtime's queueing).
    pub wake_lags: Vec<Duration>,
    /// Per report: how late it was handed to the stream (the wake plus the stream's
    /// backpressure, i.e. the scheduler not reading).
    pub send_lags: Vec<Duration>,
    pub error: Option<String>,
}

/// Runs one peer to its end (or its timeout); never fails, the outcome says what went wrong.
pub async fn run(client: SchedulerClient<Channel>, plan: PeerPlan, pace: Pace) -> Outcome {
    let mut outcome = Outcome::default();
    let result = tokio::time::timeout(pace.timeout, drive(client, &plan, pace, &mut outcome)).await;
    outcome.error = match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some(format!("timed out after {:?}", pace.timeout)),
    };
    outcome
}

/// The stream's requests go through `Sender`; its responses come back on `responses`.
struct Stream<'a> {
    plan: &'a PeerPlan,
    tx: mpsc::Sender<AnnouncePeerRequest>,
    responses: Streaming<AnnouncePeerResponse>,
}

async fn drive(
    mut client: SchedulerClient<Channel>,
    plan: &PeerPlan,
    pace: Pace,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
    let started = Instant::now();
    tx.send(message(
        plan,
        PeerRequest::RegisterPeerRequest(register(plan)),
    ))
    .await
    .map_err(|_| "request stream closed".to_string())?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        damselfly_core::extensions::FEATURES_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(
            damselfly_core::extensions::FEATURE_PARENT_PUSH,
        ),
    );
    let responses = client
        .announce_peer(request)
        .await
        .map_err(|s| format!("AnnouncePeer: {}", s.message()))?
        .into_inner();
    let mut stream = Stream {
        plan,
        tx,
        responses,
    };
    let first = stream.next_response().await?;
    outcome.decision_latency = Some(started.elapsed());
    let mut parents = match first {
        PeerResponse::NormalTaskResponse(normal) => {
            outcome.decided = Decided::Parents;
            normal.candidate_parents.into_iter().map(|p| p.id).collect()
        }
        PeerResponse::NeedBackToSourceResponse(_) => {
            outcome.decided = Decided::BackToSource;
            Vec::new()
        }
        other => return Err(format!("unexpected first response {other:?}")),
    };
    stream.download(&mut parents, pace, outcome).await?;
    stream.finish(parents.is_empty(), outcome).await
}

impl Stream<'_> {
    async fn send(&self, request: PeerRequest) -> Result<(), String> {
        self.tx
            .send(message(self.plan, request))
            .await
            .map_err(|_| "the scheduler closed the stream early".to_string())
    }

    async fn next_response(&mut self) -> Result<PeerResponse, String> {
        match self.responses.message().await {
            Ok(Some(AnnouncePeerResponse {
                response: Some(response),
            })) => Ok(response),
            Ok(Some(_)) => Err("empty AnnouncePeerResponse".into()),
            Ok(None) => Err("stream ended before a decision".into()),
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Started, then one report per piece, from the parents (or the origin without any).
    async fn download(
        &mut self,
        parents: &mut Vec<String>,
        pace: Pace,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let from_origin = parents.is_empty();
        if from_origin {
            self.send(PeerRequest::DownloadPeerBackToSourceStartedRequest(
                DownloadPeerBackToSourceStartedRequest { description: None },
            ))
            .await?;
        } else {
            self.send(PeerRequest::DownloadPeerStartedRequest(
                DownloadPeerStartedRequest {},
            ))
            .await?;
        }
        // Reports are due on a schedule drawn from Started, so a late one (the generator's
        // own core busy, or the stream held back by flow control) does not delay the rest:
        // the offered rate stays one report per mean interval per downloading peer.
        let mut due = tokio::time::Instant::now();
        let mut rng = SmallRng::seed_from_u64(self.plan.seed);
        for number in 0..self.plan.pieces {
            due += pace.gap(rng.random::<f64>());
            tokio::time::sleep_until(due).await;
            outcome.wake_lags.push(due.elapsed());
            outcome.pushes += self.take_pushes(parents)?;
            let request = if from_origin {
                PeerRequest::DownloadPieceBackToSourceFinishedRequest(
                    DownloadPieceBackToSourceFinishedRequest {
                        piece: Some(piece(self.plan, number, None)),
                    },
                )
            } else {
                let parent = parents.get(number as usize % parents.len().max(1));
                PeerRequest::DownloadPieceFinishedRequest(DownloadPieceFinishedRequest {
                    piece: Some(piece(self.plan, number, parent.map(String::as_str))),
                })
            };
            self.send(request).await?;
            outcome.send_lags.push(due.elapsed());
            outcome.reports += 1;
        }
        Ok(())
    }

    /// Mesh parents pushed since the last look (without waiting).
    fn take_pushes(&mut self, parents: &mut Vec<String>) -> Result<u64, String> {
        let mut pushes = 0;
        while let Some(next) = self.responses.message().now_or_never() {
            match next {
                Ok(Some(AnnouncePeerResponse {
                    response: Some(PeerResponse::NormalTaskResponse(normal)),
                })) => {
                    pushes += 1;
                    parents.extend(normal.candidate_parents.into_iter().map(|p| p.id));
                }
                Ok(Some(other)) => return Err(format!("unexpected response {other:?}")),
                Ok(None) => return Err("stream ended in the middle of the download".into()),
                Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
        Ok(pushes)
    }

    /// Finished, then the scheduler's close (late pushes are counted and dropped).
    async fn finish(mut self, from_origin: bool, outcome: &mut Outcome) -> Result<(), String> {
        let request = if from_origin {
            PeerRequest::DownloadPeerBackToSourceFinishedRequest(
                DownloadPeerBackToSourceFinishedRequest {},
            )
        } else {
            PeerRequest::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {})
        };
        self.send(request).await?;
        loop {
            match self.responses.message().await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => outcome.pushes += 1,
                Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    }
}

fn message(plan: &PeerPlan, request: PeerRequest) -> AnnouncePeerRequest {
    AnnouncePeerRequest {
        host_id: plan.host_id.clone(),
        task_id: plan.task_id.clone(),
        peer_id: plan.peer_id.clone(),
        request: Some(request),
    }
}

fn register(plan: &PeerPlan) -> RegisterPeerRequest {
    let length = u64::from(plan.pieces) * plan.piece_length;
    RegisterPeerRequest {
        download: Some(pb::Download {
            url: plan.url.clone(),
            r#type: pb::TaskType::Standard as i32,
            priority: pb::Priority::Level0 as i32,
            filtered_query_params: damselfly_core::id::default_filtered_query_params(),
            output_path: Some(format!("/var/lib/loadgen/{}", plan.peer_id)),
            concurrent_piece_count: Some(CONCURRENT_PIECES),
            actual_content_length: Some(length),
            actual_piece_length: Some(plan.piece_length),
            actual_piece_count: Some(u64::from(plan.pieces)),
            ..Default::default()
        }),
    }
}

fn piece(plan: &PeerPlan, number: u32, parent: Option<&str>) -> pb::Piece {
    let traffic = match parent {
        Some(_) => pb::TrafficType::RemotePeer,
        None => pb::TrafficType::BackToSource,
    };
    pb::Piece {
        number,
        parent_id: parent.map(str::to_string),
        offset: u64::from(number) * plan.piece_length,
        length: plan.piece_length,
        digest: format!("crc32:{:08x}", number.wrapping_mul(0x9e37_79b9)),
        traffic_type: Some(traffic as i32),
        cost: PIECE_COST.try_into().ok(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(arrivals: Arrivals) -> Pace {
        Pace {
            piece_interval: Duration::from_millis(20),
            arrivals,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn lockstep_gaps_are_the_interval() {
        let p = pace(Arrivals::Lockstep);
        assert_eq!(p.gap(0.0), Duration::from_millis(20));
        assert_eq!(p.gap(0.99), Duration::from_millis(20));
    }

    #[test]
    fn poisson_gaps_average_the_interval() {
        let p = pace(Arrivals::Poisson);
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 100_000;
        let total: Duration = (0..n).map(|_| p.gap(rng.random::<f64>())).sum();
        let mean_ms = total.as_secs_f64() * 1e3 / f64::from(n);
        assert!((19.5..=20.5).contains(&mean_ms), "{mean_ms}");
        // An exponential's median is ln 2 of its mean, not the mean.
        assert!(p.gap(0.5) < Duration::from_millis(14), "{:?}", p.gap(0.5));
        assert_eq!(p.gap(0.0), Duration::ZERO);
    }
}
