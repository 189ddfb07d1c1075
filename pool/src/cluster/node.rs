//! A cluster node: pulls task chunks from the cluster's work queue and runs them on a local
//! process pool of its own, one result message per chunk.
//!
//! For each chunk, in this order:
//!
//! | step | what                                                             | on failure                     |
//! |------|------------------------------------------------------------------|--------------------------------|
//! | 1    | unframe the header (frame check, one decode limit)                | terminate the message (`AckTerm`): it can never run |
//! | 2    | the reply subject lies inside this cluster's result subjects      | `AckTerm`                      |
//! | 3    | same build as the caller (content hash of the executable)         | result `Refused(BuildMismatch)` |
//! | 4    | delivered at most `max_attempts` times                            | result `Refused(AttemptsExhausted)` |
//! | 5    | the payload is a sequence of exactly `count` arguments            | result `Refused(BadTask)`      |
//! | 6    | run on the local pool (per-task failures are outcomes), sending in-progress acks every `ack_wait / 3` | the pool was cancelled: `AckTerm`, no result |
//! | 7    | publish the result to the result stream, and only then ack         | not acked: redelivered after `ack_wait` |
//!
//! Step 7's order is what makes a node's death lose nothing: a chunk is acknowledged only once
//! its result is stored, so a node that dies earlier leaves it to be redelivered (and a node
//! that dies between the two leaves a duplicate, which the caller drops).
//!
//! Step 6 runs a chunk from the thread that received it when a local worker is idle (in a
//! blocking section of the node's runtime, as a local `apply` runs on its caller's thread;
//! one node-wide ticker sends the in-progress acks of such chunks), and queues it in the local
//! pool otherwise. The first way skips two thread hand-offs (to the local pool's driver
//! thread and back into the runtime), which were most of a lone `apply`'s time on a node. On a
//! node of one local worker, a lone chunk (the node holds no other) enters the blocking
//! section only once it has run for [`LONE_CHUNK_BLOCKS`] (1 ms): entering it hands the
//! runtime to another thread, one more thread switch on every short round trip.
//!
//! # Cancel
//!
//! A caller's `terminate` (or a pool dropped without `close`) publishes its result subject on
//! the cluster's core subject `pool.<name>.cancel`. Every node listens there: it marks the pool
//! cancelled (remembered for the cluster's `ttl`) and cancels the local jobs of the pool's
//! chunks, which kills the local workers running them (the local pool's cancel; the workers
//! are replaced as after any cancel). A chunk of a cancelled pool, running, waiting for a local
//! worker or delivered later, is terminated (`AckTerm`) with no result: nobody reads it.
//!
//! # A caller that dies
//!
//! A caller SIGKILLed (or cut off) cannot publish a cancel, so a live pool publishes its result
//! subject on the cluster's core subject `pool.<name>.alive` every [`HEARTBEAT_EVERY`] (1 s)
//! instead, and every node remembers when it last heard each pool (a pool is first "heard"
//! when the node takes its first chunk, so a node that never heard a heartbeat still gives it a
//! whole window). A pool silent for [`SILENT_AFTER`] (5 s) is stopped like a cancelled one:
//! its running chunks' local workers are killed and its held and later chunks dropped, but
//! each with a `Refused(CallerSilent)` result instead of none, so a caller that was only cut
//! off from the server for that long gets a typed error rather than waiting for ever; and a
//! heartbeat that comes back makes its later chunks run again. The window counts only time
//! this node was itself in touch with the server (its clock restarts after each of its own
//! disconnections, and after any [`ECHO_LOST`] in which its own report did not come back to it
//! through the server, as in a partition the client has not noticed yet), so a server restart
//! or a cut of the node's own link does not make every pool look dead.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;

use super::wire::{
    self, BuildId, NodeReport, Refusal, ResultBody, ResultHeader, Segment, TaskHeader, WireError,
    WorkerReport,
};
use super::{ClusterError, NatsCluster, setup};
use crate::driver::Blocking;
use crate::error::TaskError;
use crate::job::CancelToken;
use crate::registry::lock;
use crate::result::Sink;
use crate::task::SameBuild;
use crate::wire::protocol;
use crate::{Pool, PoolBuilder};

/// Serves as a node of a cluster: its local pool's size, how quickly a lost node's chunks go to
/// another node, and how many chunks it holds at once.
///
/// ```no_run
/// use std::time::Duration;
/// use pool::cluster::{NatsCluster, NodeBuilder};
///
/// let cluster = NatsCluster::new("nats://10.0.0.1:4222").credentials_file("/etc/pool/node.creds");
/// let err = NodeBuilder::new(cluster)
///     .processes(16)
///     .ack_wait(Duration::from_secs(3))
///     .serve()
///     .unwrap_err(); // serves until the process is killed, or fails
/// eprintln!("{err}");
/// ```
#[derive(Debug, Clone)]
#[must_use = "a node builder does nothing until `serve` is called"]
pub struct NodeBuilder {
    cluster: NatsCluster,
    processes: Option<usize>,
    ack_wait: Duration,
    max_in_flight: Option<usize>,
}

impl NodeBuilder {
    /// A node of `cluster`, with one local worker per CPU and an `ack_wait` of 5 s.
    pub fn new(cluster: NatsCluster) -> NodeBuilder {
        NodeBuilder {
            cluster,
            processes: None,
            ack_wait: Duration::from_secs(5),
            max_in_flight: None,
        }
    }

    /// How many local workers the node's pool has (default: the CPUs it may use).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n.max(1));
        self
    }

    /// JetStream's `AckWait` for the nodes' shared consumer, when this node is the one that
    /// creates it (default 5 s): a node lost without a word has its chunks redelivered after
    /// this. Running chunks send in-progress acks three times per `ack_wait`, so long tasks are
    /// not affected.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(300));
        self
    }

    /// How many chunks the node holds at once, running or waiting for a local worker, fixed.
    ///
    /// By default the node adapts: it holds four chunks per local worker (at least 8) while
    /// chunks are slow, so that one node does not take work another could start, and up to
    /// 64 per worker while they are short (about 20 ms of work), which hides the round trips
    /// to the server and the hand-offs to the local workers.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n.max(1));
        self
    }

    /// Connects and serves until the process is killed; returns only if the node cannot start
    /// (no server, refused credentials, no local pool).
    pub fn serve(self) -> Result<Infallible, ClusterError> {
        self.cluster.check()?;
        let processes = self
            .processes
            .unwrap_or_else(ipc_shm::os::available_cpus)
            .max(1);
        let name = node_name();
        let local = PoolBuilder::new()
            .processes(processes)
            .build()
            .map_err(|e| ClusterError::Node {
                node: name.clone(),
                message: e.to_string(),
            })?;
        let rt = super::runtime("pool-node", 1)?;
        let capacity = match self.max_in_flight {
            Some(n) => Capacity::fixed(n),
            None => Capacity::adaptive(processes),
        };
        rt.block_on(async move {
            let client = setup::connect(&self.cluster, &format!("pool-node-{name}")).await?;
            let js = jetstream::new(client.clone());
            // Subscribed before the first chunk is pulled, so no cancel is missed; the client
            // subscribes again by itself after a reconnection.
            let cancels = client
                .subscribe(cancel_subject(&self.cluster))
                .await
                .map_err(|e| ClusterError::jetstream("subscribing to the cancel subject", e))?;
            let heartbeats = client
                .subscribe(alive_subject(&self.cluster))
                .await
                .map_err(|e| ClusterError::jetstream("subscribing to the alive subject", e))?;
            let echoes = client
                .subscribe(format!("pool.{}.nodes", self.cluster.name))
                .await
                .map_err(|e| ClusterError::jetstream("subscribing to the nodes subject", e))?;
            let node = Arc::new(Node {
                client,
                cancels: Mutex::new(Cancels::default()),
                remember_cancels: self.cluster.ttl,
                nodes_subject: format!("pool.{}.nodes", self.cluster.name),
                in_flight: AtomicU64::new(0),
                chunks_ran: AtomicU64::new(0),
                results_prefix: format!("pool.{}.results.", self.cluster.name),
                name,
                build: wire::build_id(),
                js,
                processes,
                pools: Mutex::new(HashMap::from([(None, Arc::new(local))])),
                ack_wait: self.ack_wait,
                progress: Progress::default(),
                held: AtomicUsize::new(0),
            });
            tokio::spawn(node.clone().listen_for_cancels(cancels));
            tokio::spawn(node.clone().listen_for_heartbeats(heartbeats));
            tokio::spawn(node.clone().stop_silent_pools());
            tokio::spawn(node.clone().listen_for_echoes(echoes));
            tokio::spawn(node.clone().send_progress());
            let reporter = node.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(REPORT_EVERY);
                loop {
                    every.tick().await;
                    reporter.report().await;
                }
            });
            // The pull loop runs on the runtime's worker, not on this thread (`block_on`'s):
            // there, a message's arrival wakes it and the chunk's task starts with no thread
            // switch (the client's connection task, the loop and the chunk's task take turns
            // on one thread), where from here each message cost two (a wake-up of this thread,
            // and one of the worker for the spawned task).
            match tokio::spawn(node.pull(self.cluster.clone(), capacity)).await {
                Ok(r) => r,
                Err(e) => Err(ClusterError::Runtime(super::NatsError::new(e))),
            }
        })
    }
}

/// The cluster's core subject on which callers announce that a pool was terminated (the payload
/// is the pool's result subject).
pub(crate) fn cancel_subject(cluster: &NatsCluster) -> String {
    format!("pool.{}.cancel", cluster.name)
}

/// The cluster's core subject on which live pools publish their heartbeat (the payload is the
/// pool's result subject).
pub(crate) fn alive_subject(cluster: &NatsCluster) -> String {
    format!("pool.{}.alive", cluster.name)
}

/// How often a live pool publishes its heartbeat.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a pool's heartbeat may be silent (while the node is connected) before the node
/// stops the pool's chunks: five heartbeats.
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(5);

/// A node whose own report (published every [`REPORT_EVERY`]) has not come back to it through
/// the server for this long counts itself cut off, whatever its client says.
pub(crate) const ECHO_LOST: Duration = Duration::from_millis(2500);

/// The pools whose chunks this node holds (one cancel token each, shared by their chunks'
/// local jobs) and the pools cancelled lately, by result subject.
#[derive(Default)]
struct Cancels {
    /// A pool's token and how many of its chunks hold it.
    tokens: HashMap<String, (Arc<CancelToken>, usize)>,
    /// Cancelled pools and when the cancel arrived.
    cancelled: HashMap<String, Instant>,
    /// When each pool was last heard (its heartbeat, or the node taking its first chunk).
    heard: HashMap<String, Instant>,
    /// The last time this node saw itself disconnected from the server (silence is counted
    /// from then at the earliest).
    offline_at: Option<Instant>,
    /// When this node's own report last came back to it through the server.
    echo_at: Option<Instant>,
}

/// What [`Node::enter`] decided for a chunk.
enum Entry {
    /// Run it, with the pool's cancel token.
    Run(Arc<CancelToken>),
    /// The pool was cancelled: drop the chunk without a result.
    Cancelled,
    /// The pool's heartbeat has been silent this long: refuse the chunk.
    Silent(Duration),
}

impl Cancels {
    /// How long pool `reply` has been silent beyond [`SILENT_AFTER`], if it has (silence counts
    /// from its last heartbeat or first chunk, and from this node's last disconnection).
    fn silence(&self, reply: &str) -> Option<Duration> {
        let heard = *self.heard.get(reply)?;
        let since = self.offline_at.map_or(heard, |off| off.max(heard));
        let silent = since.elapsed();
        (silent >= SILENT_AFTER).then_some(silent)
    }

    /// Remembers that `reply` was heard now, forgetting pools unheard for `remember` and the
    /// oldest beyond [`MAX_CANCELLED`].
    fn hear(&mut self, reply: &str, remember: Duration) {
        if let Some(at) = self.heard.get_mut(reply) {
            *at = Instant::now();
            return;
        }
        remember_bounded(&mut self.heard, reply, remember);
    }
}

/// Inserts `key` at now in `map`, first dropping entries older than `remember` and, at
/// [`MAX_CANCELLED`] entries, the oldest.
fn remember_bounded(map: &mut HashMap<String, Instant>, key: &str, remember: Duration) {
    map.retain(|_, at| at.elapsed() < remember);
    if map.len() >= MAX_CANCELLED
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
    map.insert(key.to_owned(), Instant::now());
}

/// The most cancelled pools, and the most heard pools, a node remembers (the oldest is
/// forgotten first).
const MAX_CANCELLED: usize = 4096;

/// This node's name: host name and pid.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// About how much work (in time) an adaptive node holds beyond what its workers run.
pub(crate) const QUEUE_TIME: Duration = Duration::from_millis(20);

/// How many chunks a node holds in steps 1-6: between `floor` and `ceiling`, by Little's law
/// the rate at which chunks complete times [`QUEUE_TIME`].
#[derive(Debug, Clone, Copy)]
struct Capacity {
    floor: usize,
    ceiling: usize,
}

impl Capacity {
    fn fixed(n: usize) -> Capacity {
        Capacity {
            floor: n,
            ceiling: n,
        }
    }

    fn adaptive(processes: usize) -> Capacity {
        Capacity {
            floor: (processes * 4).max(8),
            ceiling: (processes * 64).max(64),
        }
    }

    /// Every [`ADAPT_EVERY`], sets `permits` (whose total starts at `floor`) to the chunks
    /// completed per second (up at once, down by [`DECAY`] per tick) times [`QUEUE_TIME`],
    /// within `floor..=ceiling`.
    async fn adapt(self, permits: Arc<tokio::sync::Semaphore>, node: Arc<Node>) {
        let mut every = tokio::time::interval(ADAPT_EVERY);
        let mut current = self.floor;
        let mut rate = 0.0f64;
        let mut last = node.chunks_ran.load(Ordering::Relaxed);
        loop {
            every.tick().await;
            let now = node.chunks_ran.load(Ordering::Relaxed);
            let window = (now - last) as f64 / ADAPT_EVERY.as_secs_f64();
            last = now;
            // Up at once, down slowly: a map's first chunks find the room its last ones had.
            rate = window.max(rate * DECAY);
            let target =
                ((rate * QUEUE_TIME.as_secs_f64()).ceil() as usize).clamp(self.floor, self.ceiling);
            if target > current {
                permits.add_permits(target - current);
                current = target;
            } else if target < current {
                // Only permits not held can be taken back; the rest on a later tick.
                current -= permits.forget_permits(current - target);
            }
        }
    }
}

/// How much of the completion rate an adaptive node remembers per [`ADAPT_EVERY`] (its room
/// halves in about 1.3 s once chunks stop or slow down).
const DECAY: f64 = 0.95;

/// How often an adaptive node resizes what it holds.
const ADAPT_EVERY: Duration = Duration::from_millis(100);

/// How many chunks a node may have in step 7 (its result being stored) per chunk it may hold
/// in steps 1-6.
const STORING_PER_HELD: usize = 4;

/// How often a node reports itself on `pool.<name>.nodes` (for callers' `stats`).
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A running node.
struct Node {
    client: async_nats::Client,
    cancels: Mutex<Cancels>,
    /// How long a cancelled pool is remembered (the cluster's `ttl`: its chunks are gone then).
    remember_cancels: Duration,
    nodes_subject: String,
    /// Tasks held: running, or waiting for a local worker.
    in_flight: AtomicU64,
    /// Chunks run so far (for [`Capacity::adapt`]).
    chunks_ran: AtomicU64,
    name: String,
    build: BuildId,
    js: jetstream::Context,
    processes: usize,
    /// The local pools, by task timeout in milliseconds (a pool enforces one timeout).
    pools: Mutex<HashMap<Option<u64>, Arc<Pool>>>,
    ack_wait: Duration,
    results_prefix: String,
    /// The chunks that threads of this node run inline on a local worker.
    progress: Progress,
    /// Chunks held: received and not yet run (see [`Held`]).
    held: AtomicUsize,
}

/// A chunk this node holds, from its receipt until it ran: its room in the node's capacity,
/// and its place in [`Node::held`].
struct Held {
    _room: tokio::sync::OwnedSemaphorePermit,
    node: Arc<Node>,
}

impl Held {
    fn new(room: tokio::sync::OwnedSemaphorePermit, node: Arc<Node>) -> Held {
        node.held.fetch_add(1, Ordering::Relaxed);
        Held { _room: room, node }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.node.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a node's runtime thread waits for a lone chunk it runs inline before it steps
/// aside (`block_in_place`) for the rest of the wait (see [`Node::run`]).
const LONE_CHUNK_BLOCKS: Duration = Duration::from_millis(1);

/// The messages of the chunks run inline (see [`Node::run`]), whose in-progress acks the
/// node's one ticker ([`Node::send_progress`]) sends while their threads wait for the local
/// worker.
#[derive(Default)]
struct Progress {
    next: AtomicU64,
    running: Mutex<HashMap<u64, jetstream::Message>>,
}

impl Progress {
    /// Starts acking `msg` in progress; returns the key to [`Progress::end`] it with.
    fn start(&self, msg: &jetstream::Message) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(key, msg.clone());
        key
    }

    fn end(&self, key: u64) {
        lock(&self.running).remove(&key);
    }
}

impl Node {
    /// Pulls chunks, at most `capacity` at once, forever; re-creates the consumer after the
    /// server went away.
    async fn pull(
        self: Arc<Self>,
        cluster: NatsCluster,
        capacity: Capacity,
    ) -> Result<Infallible, ClusterError> {
        let permits = Arc::new(tokio::sync::Semaphore::new(capacity.floor));
        let storing = Arc::new(tokio::sync::Semaphore::new(
            capacity.ceiling * STORING_PER_HELD,
        ));
        if capacity.ceiling > capacity.floor {
            tokio::spawn(capacity.adapt(permits.clone(), self.clone()));
        }
        let mut first = true;
        loop {
            let consumer = async {
                let streams = setup::streams(&self.js, &cluster).await?;
                setup::node_consumer(&streams.tasks, self.ack_wait).await
            }
            .await;
            let consumer = match consumer {
                Ok(c) => c,
                // At start, a server that refuses is the caller's error to see.
                Err(e) if first => return Err(e),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            first = false;
            let messages = consumer
                .stream()
                .max_messages_per_batch(capacity.floor)
                .expires(Duration::from_secs(4))
                .heartbeat(Duration::from_secs(1))
                .messages()
                .await;
            let Ok(mut messages) = messages else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            loop {
                // The semaphore is never closed.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                match messages.next().await {
                    Some(Ok(msg)) => {
                        let held = Held::new(permit, self.clone());
                        let storing = storing.clone();
                        tokio::spawn(self.clone().handle(msg, held, storing));
                    }
                    Some(Err(_)) | None => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Steps 1-7 of the module docs for one message. `held` (one of the node's capacity)
    /// is given back once the chunk ran (steps 1-6), after a permit of `storing` is taken for
    /// step 7: the local workers go on with the next chunks while this result's store waits
    /// for the server's round trip, and a server that is slow to store still bounds what the
    /// node holds.
    async fn handle(
        self: Arc<Self>,
        msg: jetstream::Message,
        held: Held,
        storing: Arc<tokio::sync::Semaphore>,
    ) {
        let delivered = msg
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1)
            .max(1);
        let Ok((header, args)) = protocol::unframe::<TaskHeader>(&msg.payload) else {
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        if !self.is_result_subject(&header.reply) {
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let (body, payload) = match self.check(&header, args, delivered) {
            Err(refusal) => (ResultBody::Refused(refusal), Vec::new()),
            Ok(same) => {
                // A chunk of a cancelled pool is dropped: its caller is gone. One of a silent
                // pool is refused: its caller is most likely gone too.
                match self.enter(&header.reply) {
                    Entry::Cancelled => {
                        let _ = msg.ack_with(AckKind::Term).await;
                        return;
                    }
                    Entry::Silent(silent) => silent_refusal(silent),
                    Entry::Run(token) => {
                        self.in_flight.fetch_add(header.count, Ordering::Relaxed);
                        let ran = self.run(&msg, &header, args, &same, &token).await;
                        self.in_flight.fetch_sub(header.count, Ordering::Relaxed);
                        self.chunks_ran.fetch_add(1, Ordering::Relaxed);
                        let stopped = self.leave(&header.reply, &token);
                        match stopped {
                            None => ran,
                            Some(Entry::Silent(silent)) => silent_refusal(silent),
                            Some(_) => {
                                let _ = msg.ack_with(AckKind::Term).await;
                                return;
                            }
                        }
                    }
                }
            }
        };
        let result = ResultHeader {
            job: header.job,
            node: self.name.clone(),
            attempt: delivered,
            body,
        };
        let mut frame = Vec::with_capacity(payload.len() + 64);
        if protocol::frame(&result, &payload, &mut frame).is_err() {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        // The semaphore is never closed.
        let Ok(_storing) = storing.acquire_owned().await else {
            return;
        };
        drop(held);
        if self.publish(header.reply, Bytes::from(frame)).await {
            let _ = msg.ack().await;
        }
        // Not stored: no ack, so the chunk is redelivered after `ack_wait`.
    }

    /// The cancel token of the pool whose result subject is `reply`, for one more chunk of it,
    /// unless that pool was cancelled or is silent. A pool not heard before is heard now.
    fn enter(&self, reply: &str) -> Entry {
        let mut c = lock(&self.cancels);
        if c.cancelled.contains_key(reply) {
            return Entry::Cancelled;
        }
        if let Some(silent) = c.silence(reply) {
            return Entry::Silent(silent);
        }
        if !c.heard.contains_key(reply) {
            c.hear(reply, self.remember_cancels);
        }
        let entry = c
            .tokens
            .entry(reply.to_owned())
            .or_insert_with(|| (CancelToken::new(), 0));
        // A token cancelled for a silence that has ended (the heartbeat is back) is not reused.
        if entry.0.is_cancelled() {
            entry.0 = CancelToken::new();
        }
        entry.1 += 1;
        Entry::Run(entry.0.clone())
    }

    /// One chunk of the pool `reply` is done with `token`; why it was stopped if `token` was
    /// cancelled (`Cancelled`, or `Silent` with the silence as it is now).
    fn leave(&self, reply: &str, token: &CancelToken) -> Option<Entry> {
        let mut c = lock(&self.cancels);
        if let Some(entry) = c.tokens.get_mut(reply) {
            entry.1 -= 1;
            if entry.1 == 0 {
                c.tokens.remove(reply);
            }
        }
        if !token.is_cancelled() {
            return None;
        }
        if c.cancelled.contains_key(reply) {
            return Some(Entry::Cancelled);
        }
        Some(Entry::Silent(c.silence(reply).unwrap_or(SILENT_AFTER)))
    }

    /// Every `ack_wait / 3`, sends an in-progress ack for every chunk run inline (a chunk
    /// waiting in the local pool's queue sends its own, in [`Node::run`]): the first one at
    /// most `ack_wait / 3` after the chunk started, as for the others.
    async fn send_progress(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.ack_wait / 3);
        every.tick().await;
        loop {
            every.tick().await;
            let running: Vec<jetstream::Message> =
                lock(&self.progress.running).values().cloned().collect();
            for msg in running {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }

    /// Remembers when each pool was last heard on the alive subject.
    async fn listen_for_heartbeats(self: Arc<Self>, mut heartbeats: async_nats::Subscriber) {
        while let Some(msg) = heartbeats.next().await {
            let Ok(reply) = std::str::from_utf8(&msg.payload) else {
                continue;
            };
            if self.is_result_subject(reply) {
                lock(&self.cancels).hear(reply, self.remember_cancels);
            }
        }
    }

    /// Notes when this node's own report comes back to it (the proof that its link to the
    /// server works both ways).
    async fn listen_for_echoes(self: Arc<Self>, mut reports: async_nats::Subscriber) {
        while let Some(msg) = reports.next().await {
            if let Ok((report, _)) = protocol::unframe::<NodeReport>(&msg.payload)
                && report.node == self.name
            {
                lock(&self.cancels).echo_at = Some(Instant::now());
            }
        }
    }

    /// Every [`HEARTBEAT_EVERY`]: notes whether this node is cut off, and stops the chunks
    /// of every pool silent for [`SILENT_AFTER`] (see "A caller that dies" in the module docs).
    async fn stop_silent_pools(self: Arc<Self>) {
        let mut every = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            every.tick().await;
            let connected =
                self.client.connection_state() == async_nats::connection::State::Connected;
            let mut c = lock(&self.cancels);
            let echoed = c.echo_at.is_some_and(|at| at.elapsed() < ECHO_LOST);
            if !connected || !echoed {
                c.offline_at = Some(Instant::now());
                continue;
            }
            for (reply, (token, _)) in &c.tokens {
                if !token.is_cancelled() && c.silence(reply).is_some() {
                    // Kills the local workers running the pool's chunks, as a cancel does.
                    token.cancel();
                }
            }
        }
    }

    /// Cancels the pools announced on the cancel subject (see "Cancel" in the module docs).
    async fn listen_for_cancels(self: Arc<Self>, mut cancels: async_nats::Subscriber) {
        while let Some(msg) = cancels.next().await {
            let Ok(reply) = std::str::from_utf8(&msg.payload) else {
                continue;
            };
            if !self.is_result_subject(reply) {
                continue;
            }
            let mut c = lock(&self.cancels);
            remember_bounded(&mut c.cancelled, reply, self.remember_cancels);
            if let Some((token, _)) = c.tokens.get(reply) {
                // Kills the local workers running the pool's chunks; its queued chunks fail
                // with `Cancelled` without running.
                token.cancel();
            }
        }
    }

    /// Whether `subject` is one pool's result subject in this cluster.
    fn is_result_subject(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.results_prefix.as_str())
            .is_some_and(|id| {
                !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
    }

    /// Publishes this node's [`NodeReport`] (best effort: a lost report only makes the node
    /// look idle for a second).
    async fn report(&self) {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        let mut report = NodeReport {
            node: self.name.clone(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            done: 0,
            failed: 0,
            workers: Vec::new(),
        };
        for pool in pools {
            let stats = pool.stats();
            report.done += stats.done;
            report.failed += stats.failed;
            report
                .workers
                .extend(stats.workers.iter().map(WorkerReport::new));
        }
        let mut frame = Vec::new();
        if protocol::frame(&report, &[], &mut frame).is_ok() {
            let _ = self
                .client
                .publish(self.nodes_subject.clone(), Bytes::from(frame))
                .await;
        }
    }

    /// Steps 3-5: whether this node may run the chunk.
    fn check(
        &self,
        header: &TaskHeader,
        args: &[u8],
        delivered: u32,
    ) -> Result<SameBuild, Refusal> {
        let Some(same) = SameBuild::matching(&self.build, &header.build) else {
            return Err(Refusal::BuildMismatch {
                node_build: self.build,
            });
        };
        if delivered > header.max_attempts {
            return Err(Refusal::AttemptsExhausted {
                attempts: delivered - 1,
            });
        }
        if header.count == 0
            || header.count > wire::MAX_TASKS_PER_MESSAGE
            || ipc_shm::codec::sequence_len(args) != Some(header.count)
        {
            return Err(Refusal::BadTask {
                detail: format!("the payload does not hold {} arguments", header.count),
            });
        }
        Ok(same)
    }

    /// Step 6: runs the chunk on the local pool for its timeout, with in-progress acks.
    async fn run(
        &self,
        msg: &jetstream::Message,
        header: &TaskHeader,
        args: &[u8],
        same: &SameBuild,
        token: &Arc<CancelToken>,
    ) -> (ResultBody, Vec<u8>) {
        let refuse = |message: String| {
            (
                ResultBody::Refused(Refusal::NodePool { message }),
                Vec::new(),
            )
        };
        // The pool exists but for a chunk with a new timeout; only making one blocks.
        let existing = lock(&self.pools).get(&header.timeout_ms).cloned();
        let pool = match existing.map_or_else(
            || tokio::task::block_in_place(|| self.pool_for(header.timeout_ms)),
            Ok,
        ) {
            Ok(p) => p,
            Err(message) => return refuse(message),
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let sink = Arc::new(NodeSink(Mutex::new(SinkState {
            segments: Vec::new(),
            payload: Vec::new(),
            left: header.count,
            done: Some(tx),
        })));
        // With a local worker idle, this thread runs the chunk on it itself (as a local
        // `apply` does on the caller's thread), in a blocking section: the worker's answer
        // comes straight to the thread that goes on to publish it, with no hand-off through
        // the local pool's driver thread and back into the runtime (a wake-up from outside
        // the runtime that cost up to a millisecond per chunk). The node-wide ticker sends its
        // in-progress acks meanwhile. Otherwise the chunk waits in the local pool's queue.
        //
        // On a node of one local worker, a lone chunk (none other held) enters the blocking
        // section only if it runs longer than [`LONE_CHUNK_BLOCKS`]: entering it hands the
        // runtime to another thread, a wake-up and a thread switch on the round trip of every
        // short `apply` (traced on a 2-vCPU VM: the node's part of a cluster `apply` 64 -> 47
        // us, its thread switches per chunk 2.2 -> 1.05), while the runtime has nothing else
        // to do for that while: no other chunk could run meanwhile. With other chunks held it
        // enters at once, so their results are stored meanwhile; and on a node of several
        // local workers always, since a runtime held up could not receive the next chunks of a
        // map for the idle workers (chunks shorter than the window would run one at a time).
        let submit = |here: Option<Blocking<'_>>| {
            pool.submit_encoded(
                header.task,
                args.to_vec(),
                header.count,
                header.reslice.resolve(same),
                sink,
                Some(token.clone()),
                here,
            )
        };
        let inline = pool.has_idle_worker();
        let submitted = if inline {
            let key = self.progress.start(msg);
            let r = if self.processes == 1 && self.held.load(Ordering::Relaxed) <= 1 {
                submit(Some(Blocking::Briefly {
                    until: Instant::now() + LONE_CHUNK_BLOCKS,
                    aside: &mut |rest| tokio::task::block_in_place(rest),
                }))
            } else {
                tokio::task::block_in_place(|| submit(Some(Blocking::Freely)))
            };
            self.progress.end(key);
            r
        } else {
            submit(None)
        };
        if let Err(e) = submitted {
            return refuse(e.to_string());
        }
        let outcome = match rx.try_recv() {
            Ok(done) => Ok(done),
            Err(_) => {
                let mut tick = tokio::time::interval(self.ack_wait / 3);
                tick.tick().await;
                loop {
                    tokio::select! {
                        r = &mut rx => break r,
                        _ = tick.tick() => {
                            let _ = msg.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            }
        };
        match outcome {
            Ok((segments, payload)) => (ResultBody::Ran(segments), payload),
            Err(_) => refuse("the local pool dropped the chunk".to_owned()),
        }
    }

    /// The local pool for tasks with this timeout (made on first use).
    fn pool_for(&self, timeout_ms: Option<u64>) -> Result<Arc<Pool>, String> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(&timeout_ms) {
            return Ok(p.clone());
        }
        let mut builder = PoolBuilder::new().processes(self.processes);
        if let Some(ms) = timeout_ms {
            builder = builder.task_timeout(Duration::from_millis(ms.max(1)));
        }
        let pool = Arc::new(builder.build().map_err(|e| e.to_string())?);
        pools.insert(timeout_ms, pool.clone());
        Ok(pool)
    }

    /// Step 7: stores the result, retrying while the server is away (up to a minute).
    async fn publish(&self, subject: String, frame: Bytes) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut delay = Duration::from_millis(50);
        loop {
            if let Ok(ack) = self.js.publish(subject.clone(), frame.clone()).await
                && ack.await.is_ok()
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

/// The result of a chunk of a pool silent for `silent`.
fn silent_refusal(silent: Duration) -> (ResultBody, Vec<u8>) {
    let silent_ms = silent.as_millis().min(u128::from(u64::MAX)) as u64;
    (
        ResultBody::Refused(Refusal::CallerSilent { silent_ms }),
        Vec::new(),
    )
}

/// What a chunk's local job produced so far.
struct SinkState {
    segments: Vec<Segment>,
    payload: Vec<u8>,
    left: u64,
    done: Option<tokio::sync::oneshot::Sender<(Vec<Segment>, Vec<u8>)>>,
}

/// Collects a chunk's outcomes on a node, as they come from its local pool, and hands them over
/// once every task has one.
struct NodeSink(Mutex<SinkState>);

impl NodeSink {
    fn add(&self, segment: Segment, bytes: &[u8], tasks: u64) {
        let mut s = lock(&self.0);
        s.segments.push(segment);
        s.payload.extend_from_slice(bytes);
        s.left = s.left.saturating_sub(tasks);
        if s.left == 0
            && let Some(done) = s.done.take()
        {
            let segments = std::mem::take(&mut s.segments);
            let payload = std::mem::take(&mut s.payload);
            let _ = done.send((segments, payload));
        }
    }
}

impl Sink for NodeSink {
    fn fail(&self, index: u64, error: TaskError) {
        let error = WireError::from(error);
        self.add(Segment::Failed { index, error }, &[], 1);
    }

    fn deliver_encoded(&self, first: u64, count: u64, payload: &[u8], tally: &dyn Fn(u64, u64)) {
        tally(count, 0);
        let len = payload.len() as u64;
        self.add(Segment::Outcomes { first, count, len }, payload, count);
    }
}
