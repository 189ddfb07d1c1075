//! The caller's side of a cluster pool: the dispatcher that publishes the registry's jobs as
//! task messages, and the reader that delivers result messages to their jobs' sinks.
//!
//! The seam is the registry's job queue: every `Pool` method makes jobs exactly as for local
//! workers (with their sinks, callbacks, progress hooks and `imap`'s bound), and this module
//! takes the place of the local drivers. The dispatcher is the registry's one "worker", so the
//! pool never grows local ones. One shortcut: an `apply` that finds nothing queued publishes
//! its job from the caller's own thread (`Dispatcher::publish_here`, through the registry's
//! `direct` hook, where a local pool runs a job on an idle worker from the caller's thread),
//! which saves the hand-off to the dispatcher thread; a job it cannot publish at once goes
//! back to the queue.
//!
//! A job in flight sits in the `in_flight` table from just before its message is published until
//! its first result arrives; the reader removes it there, so a second result for the same job
//! (a redelivered chunk that ran twice) finds nothing and is dropped. That table is the whole
//! exactly-once mechanism on this side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::wire::{self, NodeReport, ResultBody, ResultHeader, TaskHeader, WorkerReport};
use super::{ClusterError, NatsCluster, NatsError, setup};
use crate::api::Settings;
use crate::error::{PoolError, TaskError};
use crate::job::Job;
use crate::registry::{Registry, lock};
use crate::stats::NodeStats;
use crate::task::ResliceRef;
use crate::wire::protocol;

/// How many queued jobs the dispatcher publishes before it waits for their acknowledgements.
const PUBLISH_BATCH: usize = 256;

/// What the dispatcher thread and the reader task share.
struct Shared {
    registry: Arc<Registry>,
    cluster: NatsCluster,
    /// Jobs published and not answered yet, by id.
    in_flight: Mutex<HashMap<u64, Job>>,
    /// Signalled when `in_flight` becomes empty.
    drained: Condvar,
    /// Results dropped as duplicates.
    duplicates: AtomicU64,
    /// Set when the pool stops: the reader ends.
    stopping: AtomicBool,
    tasks_subject: String,
    results_subject: String,
    pool_id: String,
}

/// A name no other pool has: this host's pid, the time and a counter.
fn unique_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a cluster pool: connects, makes the streams, starts the reader and the dispatcher.
pub(crate) fn start(settings: Settings) -> Result<Arc<Registry>, PoolError> {
    let Some(cluster) = settings.cluster.clone() else {
        return Err(ClusterError::Config {
            detail: "no cluster given".to_owned(),
        }
        .into());
    };
    cluster.check()?;
    let rt = super::runtime("pool-cluster", 2)?;
    let pool_id = unique_id();
    let (client, js, streams) = rt.block_on(async {
        let client = setup::connect(&cluster, &format!("pool-caller-{pool_id}")).await?;
        let js = jetstream::new(client.clone());
        let streams = setup::streams(&js, &cluster).await?;
        Ok::<_, ClusterError>((client, js, streams))
    })?;
    let max_payload = client.server_info().max_payload.max(1024);
    let registry = Arc::new(Registry::new(settings));
    let nodes = Arc::new(Mutex::new(HashMap::new()));
    let subscribed = rt.block_on(client.subscribe(format!("pool.{}.nodes", cluster.name)));
    if let Ok(reports) = subscribed {
        rt.spawn(read_reports(reports, nodes.clone()));
    }
    let _ = registry
        .nodes
        .set(Box::new(move || node_stats(&lock(&nodes))));
    let shared = Arc::new(Shared {
        registry: registry.clone(),
        tasks_subject: format!("pool.{}.tasks.{pool_id}", cluster.name),
        results_subject: format!("pool.{}.results.{pool_id}", cluster.name),
        cluster,
        in_flight: Mutex::new(HashMap::new()),
        drained: Condvar::new(),
        duplicates: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        pool_id,
    });
    let reader = rt.spawn(read_results(shared.clone(), streams.results.clone()));
    // Stops with the runtime, when the dispatcher ends (after `close` drained, `terminate`, or
    // drop); a caller that dies stops it with itself, which is what nodes notice.
    rt.spawn(heartbeat(
        client.clone(),
        super::node::alive_subject(&shared.cluster),
        shared.results_subject.clone(),
    ));
    registry.workers.fetch_add(1, Ordering::SeqCst);
    let dispatcher = Arc::new(Dispatcher {
        shared,
        js,
        streams,
        max_payload,
        build: wire::build_id(),
    });
    // Weak: the registry outlives the dispatcher thread, which owns the dispatcher.
    let here = Arc::downgrade(&dispatcher);
    let rt_handle = rt.handle().clone();
    let _ = registry
        .direct
        .set(Box::new(move |job| match here.upgrade() {
            Some(d) => d.publish_here(&rt_handle, job),
            None => Err(job),
        }));
    let handle = std::thread::Builder::new()
        .name("pool-cluster".to_owned())
        .spawn(move || dispatcher.run(rt, reader));
    match handle {
        Ok(h) => {
            lock(&registry.drivers).push(h);
            Ok(registry)
        }
        Err(e) => {
            registry.workers.fetch_sub(1, Ordering::SeqCst);
            Err(PoolError::os("spawning the cluster dispatcher", e))
        }
    }
}

/// The dispatcher thread's state.
struct Dispatcher {
    shared: Arc<Shared>,
    js: jetstream::Context,
    streams: setup::Streams,
    max_payload: usize,
    build: wire::BuildId,
}

impl Dispatcher {
    /// Publishes jobs until the pool is closed and drained (or terminated), waits for the
    /// results of what is in flight, then cleans up.
    fn run(self: Arc<Self>, rt: tokio::runtime::Runtime, reader: tokio::task::JoinHandle<()>) {
        let registry = self.shared.registry.clone();
        // The dispatcher has no worker of its own to replace: nothing ever nudges it.
        let no_wake = crossbeam_channel::never::<()>();
        loop {
            loop {
                if registry.terminated.load(Ordering::SeqCst) {
                    break;
                }
                let first = match registry.next_job(Some(Duration::from_millis(50)), &no_wake) {
                    None => break,
                    Some(Err(())) => continue,
                    Some(Ok(job)) => job,
                };
                let mut batch = vec![first];
                while batch.len() < PUBLISH_BATCH {
                    match registry.next_job(Some(Duration::ZERO), &no_wake) {
                        Some(Ok(job)) => batch.push(job),
                        _ => break,
                    }
                }
                rt.block_on(self.publish_all(batch));
            }
            // Closed: wait for what is in flight (a `terminate` cuts this short).
            let mut in_flight = lock(&self.shared.in_flight);
            while !in_flight.is_empty() && !registry.terminated.load(Ordering::SeqCst) {
                in_flight = self
                    .shared
                    .drained
                    .wait_timeout(in_flight, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            // A job that a caller's thread failed to publish comes back to the queue (under
            // this lock, see `publish_here`): it is published as any other.
            if registry.jobs_waiting() && !registry.terminated.load(Ordering::SeqCst) {
                continue;
            }
            // Under the lock: no caller's thread puts a job in flight after this.
            self.shared.stopping.store(true, Ordering::SeqCst);
            break;
        }
        reader.abort();
        let left: Vec<Job> = lock(&self.shared.in_flight)
            .drain()
            .map(|(_, j)| j)
            .collect();
        for job in left {
            registry.finish_job_error(&job, &TaskError::Terminated);
        }
        if registry.terminated.load(Ordering::SeqCst) {
            rt.block_on(self.cancel_on_nodes());
        }
        rt.block_on(self.clean_up());
        rt.shutdown_timeout(Duration::from_secs(1));
        registry.workers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Tells the nodes that this pool was terminated, so they stop the chunks of it they run or
    /// hold (bounded like [`Dispatcher::clean_up`]: with the server away, the nodes run them to
    /// their end and nobody reads the results).
    async fn cancel_on_nodes(&self) {
        let client = self.js.client();
        let subject = super::node::cancel_subject(&self.shared.cluster);
        let payload = Bytes::from(self.shared.results_subject.clone());
        let announce = async {
            if client.publish(subject, payload).await.is_ok() {
                let _ = client.flush().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), announce).await;
    }

    /// Removes this pool's messages from both streams (bounded: a server that is down does not
    /// hold up `close`; the streams' `max_age` removes them later then).
    async fn clean_up(&self) {
        let purge = async {
            let _ = self
                .streams
                .tasks
                .purge()
                .filter(self.shared.tasks_subject.clone())
                .await;
            let _ = self
                .streams
                .results
                .purge()
                .filter(self.shared.results_subject.clone())
                .await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), purge).await;
    }

    /// Publishes a lone job from the caller's thread (`apply`), saving the hand-off to the
    /// dispatcher thread and its wake-up; gives the job back, for the queue, when it should
    /// wait its turn or go the dispatcher's way (jobs queued, the pool closed or stopping, a
    /// caller inside an async context, descriptors, a message too large). One attempt: a
    /// job whose publish failed (or whose acknowledgement, awaited on the runtime, reports a
    /// failure) is put back in the queue, and the dispatcher retries it for its own publish
    /// timeout (the stream drops a second copy by its message id).
    fn publish_here(&self, rt: &tokio::runtime::Handle, mut job: Job) -> Result<(), Job> {
        let registry = &self.shared.registry;
        if registry.jobs_waiting()
            || job.fds.is_some()
            || job.count > wire::MAX_TASKS_PER_MESSAGE
            || tokio::runtime::Handle::try_current().is_ok()
        {
            return Err(job);
        }
        let Ok(frame) = self.frame(&job) else {
            return Err(job);
        };
        if frame.len() > self.max_payload {
            return Err(job);
        }
        let id = job.id;
        let count = job.count;
        // The arguments now live in the message; kept aside in case it must be queued.
        let args = job.take_args();
        {
            let mut in_flight = lock(&self.shared.in_flight);
            if self.shared.stopping.load(Ordering::SeqCst)
                || registry.terminated.load(Ordering::SeqCst)
            {
                job.args = args;
                return Err(job);
            }
            registry.count_submitted(count);
            in_flight.insert(id, job);
        }
        let headers = self.message_headers(id);
        let sent = rt.block_on(self.js.publish_with_headers(
            self.shared.tasks_subject.clone(),
            headers,
            frame.into(),
        ));
        match sent {
            // The server's acknowledgement is awaited on the runtime, not here: the caller's
            // thread goes straight to waiting for the result, and sleeps once per round trip
            // instead of twice (the acknowledgement comes first, and its wake-up was one more
            // thread switch on the round trip's path). The job stays in flight meanwhile, so
            // the dispatcher's close-drain waits for it as before.
            Ok(ack) => {
                let shared = self.shared.clone();
                rt.spawn(async move {
                    if ack.await.is_err() {
                        shared.requeue(id, args);
                    }
                });
            }
            Err(_) => self.shared.requeue(id, args),
        }
        Ok(())
    }

    /// The headers of job `id`'s message: its id, so the stream drops a copy published twice.
    fn message_headers(&self, id: u64) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}-{id}", self.shared.pool_id).as_str(),
        );
        headers
    }

    /// Publishes a batch of jobs, splitting those too large for one message, and fails the
    /// tasks of those that could not be published.
    async fn publish_all(&self, batch: Vec<Job>) {
        let mut pending = batch;
        let mut sends = Vec::new();
        while let Some(mut job) = pending.pop() {
            if job.fds.is_some() {
                // Descriptors do not cross machines: a handle (a queue, a pipe end, a segment)
                // in a cluster task's argument is refused here, before anything is published.
                let e = TaskError::Unsendable(crate::HandleError::new(
                    ipc_shm::transfer::TransferError::NotTransferable {
                        kind: "IPC handle",
                        reason: "descriptors do not travel to cluster nodes on other machines",
                    },
                ));
                self.shared.registry.finish_job_error(&job, &e);
                continue;
            }
            let frame = match self.frame(&job) {
                Ok(f) => f,
                Err(e) => {
                    self.shared.registry.finish_job_error(&job, &e);
                    continue;
                }
            };
            if frame.len() > self.max_payload || job.count > wire::MAX_TASKS_PER_MESSAGE {
                if job.count <= 1 {
                    let e = ClusterError::TooLarge {
                        len: frame.len(),
                        max: self.max_payload,
                    };
                    self.shared.registry.finish_job_error(&job, &e.into());
                    continue;
                }
                let mid = job.first + job.count / 2;
                let end = job.first + job.count;
                match (job.slice(job.first, mid), job.slice(mid, end)) {
                    (Some(mut a), Some(mut b)) => {
                        a.id = self.shared.registry.next_job_id();
                        b.id = self.shared.registry.next_job_id();
                        pending.push(a);
                        pending.push(b);
                    }
                    _ => {
                        let e = TaskError::Argument("the chunk could not be split".to_owned());
                        self.shared.registry.finish_job_error(&job, &e);
                    }
                }
                continue;
            }
            let id = job.id;
            // The arguments now live in the message; the job keeps its sink.
            drop(job.take_args());
            lock(&self.shared.in_flight).insert(id, job);
            sends.push(self.publish_one(id, Bytes::from(frame)));
        }
        for (id, result) in futures_util::future::join_all(sends).await {
            if let Err(source) = result {
                let job = lock(&self.shared.in_flight).remove(&id);
                if let Some(job) = job {
                    let e = ClusterError::Publish { source };
                    self.shared.registry.finish_job_error(&job, &e.into());
                    self.shared.notify_if_drained();
                }
            }
        }
    }

    /// The task message of `job`.
    fn frame(&self, job: &Job) -> Result<Vec<u8>, TaskError> {
        let header = TaskHeader {
            job: job.id,
            task: job.task,
            reslice: ResliceRef::new(job.reslice_fn()),
            count: job.count,
            build: self.build,
            max_attempts: self.shared.cluster.max_attempts,
            timeout_ms: self
                .shared
                .registry
                .settings
                .task_timeout
                .map(|t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
            reply: self.shared.results_subject.clone(),
        };
        let args = job.args_bytes();
        let mut out = Vec::with_capacity(args.len() + 128);
        protocol::frame(&header, &args, &mut out)
            .map_err(|e| TaskError::Argument(e.to_string()))?;
        Ok(out)
    }

    /// Publishes one message until the server acknowledges it or the publish timeout passes.
    /// The message id lets the stream drop a copy that a retry published twice.
    async fn publish_one(&self, id: u64, frame: Bytes) -> (u64, Result<(), NatsError>) {
        let deadline = Instant::now() + self.shared.cluster.publish_timeout;
        let headers = self.message_headers(id);
        let mut delay = Duration::from_millis(50);
        loop {
            let sent = self
                .js
                .publish_with_headers(
                    self.shared.tasks_subject.clone(),
                    headers.clone(),
                    frame.clone(),
                )
                .await;
            let error = match sent {
                Ok(ack) => match ack.await {
                    Ok(_) => return (id, Ok(())),
                    Err(e) => NatsError::new(e),
                },
                Err(e) => NatsError::new(e),
            };
            if Instant::now() >= deadline || self.shared.registry.terminated.load(Ordering::SeqCst)
            {
                return (id, Err(error));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

impl Shared {
    /// Puts job `id`, whose publish from a caller's thread failed, back in the queue with its
    /// arguments `args`, for the dispatcher to publish. Under the `in_flight` lock, so the
    /// dispatcher sees the job queued before it sees it gone from `in_flight`. Gone already:
    /// its result came (the message was stored after all), or a `terminate` failed it.
    fn requeue(&self, id: u64, args: Vec<u8>) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(mut job) = in_flight.remove(&id) {
            job.args = args;
            // Fails the job itself if the pool was terminated.
            let _ = self.registry.tx_requeue(job);
        }
        drop(in_flight);
        self.notify_if_drained();
    }

    fn notify_if_drained(&self) {
        if lock(&self.in_flight).is_empty() {
            self.drained.notify_all();
        }
    }

    /// Delivers one result message to its job (the first for that job; later ones are dropped).
    fn on_result(&self, bytes: &[u8]) {
        let (header, payload) = match protocol::unframe::<ResultHeader>(bytes) {
            Ok(v) => v,
            // A frame that does not decode names no job: nothing to deliver it to. (Its job, if
            // any, stays in flight until a well-formed result arrives.)
            Err(_) => return,
        };
        let Some(job) = lock(&self.in_flight).remove(&header.job) else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let registry = &self.registry;
        match header.body {
            ResultBody::Refused(refusal) => {
                let error: TaskError = match refusal {
                    wire::Refusal::BuildMismatch { .. } => ClusterError::BuildMismatch {
                        node: header.node.clone(),
                    },
                    wire::Refusal::AttemptsExhausted { attempts } => {
                        ClusterError::AttemptsExhausted { attempts }
                    }
                    wire::Refusal::BadTask { detail } => ClusterError::BadFrame {
                        peer: "this caller (as the node saw it)".to_owned(),
                        detail,
                    },
                    wire::Refusal::NodePool { message } => ClusterError::Node {
                        node: header.node.clone(),
                        message,
                    },
                    wire::Refusal::CallerSilent { silent_ms } => ClusterError::CallerSilent {
                        node: header.node.clone(),
                        silent: Duration::from_millis(silent_ms),
                    },
                }
                .into();
                registry.finish_job_error(&job, &error);
            }
            ResultBody::Ran(segments) => {
                match wire::validate(&segments, job.count, payload.len()) {
                    Err(detail) => {
                        let e = ClusterError::BadFrame {
                            peer: format!("node {}", header.node),
                            detail,
                        };
                        registry.finish_job_error(&job, &e.into());
                    }
                    Ok(offsets) => {
                        let tally = |ok: u64, failed: u64| registry.tally(ok, failed);
                        for (segment, offset) in segments.into_iter().zip(offsets) {
                            match segment {
                                wire::Segment::Outcomes { first, count, len } => {
                                    let bytes = &payload[offset..offset + len as usize];
                                    job.sink.deliver_encoded(
                                        job.first + first,
                                        count,
                                        bytes,
                                        &tally,
                                    );
                                }
                                wire::Segment::Failed { index, error } => {
                                    let e = error.into_task_error(&header.node);
                                    registry.deliver_error(&job, job.first + index, e);
                                }
                            }
                        }
                    }
                }
            }
        }
        self.notify_if_drained();
    }
}

/// Publishes this pool's result subject on the cluster's alive subject every
/// [`HEARTBEAT_EVERY`](super::node::HEARTBEAT_EVERY), so nodes can tell a live caller from a
/// dead one (best effort: the nodes allow five missed heartbeats).
async fn heartbeat(client: async_nats::Client, subject: String, results_subject: String) {
    let payload = Bytes::from(results_subject);
    let mut every = tokio::time::interval(super::node::HEARTBEAT_EVERY);
    loop {
        every.tick().await;
        let _ = client.publish(subject.clone(), payload.clone()).await;
    }
}

/// The latest report of every node, and when it arrived.
type NodeTable = HashMap<String, (Instant, NodeReport)>;

/// Keeps the latest report of every node.
async fn read_reports(mut reports: async_nats::Subscriber, nodes: Arc<Mutex<NodeTable>>) {
    while let Some(msg) = reports.next().await {
        if let Ok((report, rest)) = protocol::unframe::<NodeReport>(&msg.payload)
            && rest.is_empty()
        {
            let mut table = lock(&nodes);
            table.retain(|_, (at, _)| at.elapsed() < STALE);
            table.insert(report.node.clone(), (Instant::now(), report));
        }
    }
}

/// A node whose last report is older than this is left out of `stats` (it reports every second).
const STALE: Duration = Duration::from_secs(3);

/// The nodes that reported recently, for `Pool::stats`.
fn node_stats(table: &NodeTable) -> Vec<NodeStats> {
    let mut nodes: Vec<NodeStats> = table
        .values()
        .filter(|(at, _)| at.elapsed() < STALE)
        .map(|(at, r)| NodeStats {
            name: r.node.clone(),
            workers: r.workers.iter().map(WorkerReport::stats).collect(),
            in_flight: r.in_flight,
            done: r.done,
            failed: r.failed,
            last_seen: at.elapsed(),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// Reads this pool's results through an ordered consumer, re-created from the last sequence
/// seen whenever it fails (a server restart), until the pool stops.
async fn read_results(shared: Arc<Shared>, results: stream::Stream) {
    let mut next_sequence = 0u64;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let deliver_policy = if next_sequence == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next_sequence,
            }
        };
        let created = results
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: shared.results_subject.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await;
        let messages = match created {
            Ok(c) => c.messages().await.ok(),
            Err(_) => None,
        };
        if let Some(mut messages) = messages {
            while let Some(item) = messages.next().await {
                match item {
                    Ok(msg) => {
                        if let Ok(info) = msg.info() {
                            next_sequence = info.stream_sequence + 1;
                        }
                        shared.on_result(&msg.payload);
                    }
                    Err(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
