//! The cluster family: our pool on a NATS JetStream cluster of 2 local nodes (this program
//! re-run in node mode), beside the raw `async-nats` JetStream work queue doing the same work
//! with the same batching (the engine's floor, measured in the same run), and beside our local
//! pool. Each contender starts its own `nats-server -js` on a free loopback port with a
//! temporary store; without `nats-server` on PATH the contenders fail to set up and the table
//! says why.
//!
//! The floor's consumers run where our nodes run: in 2 processes of their own (this program
//! re-run in raw-consumer mode, see [`serve_raw_consumer_if_asked`]), so the two are measured
//! under the same placement (`TARGETS.md`). On a 2-vCPU VM that placement matters: a message
//! for another process wakes that process from sleep, while consumers inside the caller's
//! process are often still awake from the caller's own publish acknowledgement (traced: the
//! task's way from publish to consumer took 154 us in-process against 203 us to a node
//! process, and the result's way back 118 us against 170 us). The in-process variant stays
//! beside it in the apply table, as a reference.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use pool::cluster::{NODE_ENV, NatsCluster};
use pool::{Pool, PoolBuilder, StartMethod};

use super::pooled::our_pool;
use super::tasks::{noop, square};
use super::{ContenderSpec, Kind, Metric, Params, Runner, Workload};

/// Set (to the server's URL) in the environment of a raw-consumer process.
const RAW_CONSUMER_ENV: &str = "COMPARE_RAW_CONSUMER";

/// The raw engine's work-queue stream, which its consumer processes look up by name.
const RAW_TASKS: &str = "RAW_TASKS";

/// Tasks per message in the cluster map (ours and the raw engine alike).
const BATCH: usize = 100;

/// A `nats-server -js` and the nodes started for one contender; all killed on drop.
struct Cluster {
    children: Vec<Child>,
    dir: std::path::PathBuf,
    url: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a server on a free loopback port and waits until it is ready.
fn start_server() -> Result<Cluster, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!("compare-nats-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("nats-server");
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    ipc_shm::os::command_dies_with_parent(&mut cmd);
    let mut server = cmd
        .spawn()
        .map_err(|e| format!("nats-server is not on PATH ({e}): apt-get install nats-server"))?;
    let stderr = server.stderr.take().ok_or("no stderr")?;
    let cluster = Cluster {
        children: vec![server],
        dir,
        url: format!("nats://127.0.0.1:{port}"),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Server is ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .map_err(|_| "nats-server did not start".to_owned())?;
    Ok(cluster)
}

/// A server, two nodes of one worker each, and a pool on them.
fn our_cluster() -> Result<(Cluster, Pool), String> {
    let mut cluster = start_server()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    for _ in 0..2 {
        let mut cmd = Command::new(&exe);
        cmd.env(NODE_ENV, &cluster.url)
            .env("POOL_CLUSTER_PROCESSES", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        ipc_shm::os::command_dies_with_parent(&mut cmd);
        cluster
            .children
            .push(cmd.spawn().map_err(|e| e.to_string())?);
    }
    let pool = PoolBuilder::new()
        .cluster(NatsCluster::new(&cluster.url).expected_workers(2))
        .build()
        .map_err(|e| format!("cluster pool: {e}"))?;
    // Warm up: both nodes connected and their local workers started.
    pool.map_chunked(noop, 0..64u64, 1)
        .map_err(|e| e.to_string())?;
    Ok((cluster, pool))
}

/// Where the raw engine's two consumers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Consumers {
    /// In 2 processes of their own, as our nodes: the floor our targets are set against.
    Processes,
    /// As tasks in the caller's own process (its runtime), for reference.
    InProcess,
}

/// In a process started as one of the raw engine's consumers (its environment names the
/// server), serves the raw work queue until killed and never returns; otherwise returns at
/// once. [`crate::init`] calls it first.
pub fn serve_raw_consumer_if_asked() {
    let Ok(url) = std::env::var(RAW_CONSUMER_ENV) else {
        return;
    };
    let code = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async move {
            let consumer = async {
                let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
                let js = jetstream::new(client);
                let stream = js.get_stream(RAW_TASKS).await.map_err(|e| e.to_string())?;
                let consumer: consumer::PullConsumer = stream
                    .get_consumer("raw")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((js, consumer))
            };
            match consumer.await {
                Ok((js, consumer)) => {
                    consume(js, consumer).await;
                    0
                }
                Err(e) => {
                    eprintln!("raw consumer: {e}");
                    1
                }
            }
        }),
        Err(e) => {
            eprintln!("raw consumer: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// One raw consumer: squares each batch it pulls, publishes it to the result stream, waits for
/// the server's acknowledgement and only then acks the task (as our nodes do).
async fn consume(js: jetstream::Context, consumer: consumer::PullConsumer) {
    let Ok(mut messages) = consumer.messages().await else {
        return;
    };
    while let Some(Ok(msg)) = messages.next().await {
        let mut w = words(&msg.payload);
        let index = w.next().unwrap_or(0);
        let out = encode(index, w.map(square));
        if let Ok(ack) = js.publish("raw.results", out).await {
            let _ = ack.await;
        }
        let _ = msg.ack().await;
    }
}

/// The raw engine: a work-queue stream, two consumers (each on its own connection, see
/// [`Consumers`]) that square the batch they pull and publish it to a result stream, and a
/// caller that publishes batches and reads results through an ordered consumer.
struct Raw {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    /// The caller's one ordered consumer of the result stream, made once (as ours keeps one
    /// per pool), so a round trip does not pay for making a consumer.
    /// (Dropped inside the runtime: the client needs one to stop it.)
    reader: tokio::sync::Mutex<Option<consumer::pull::Ordered>>,
    _cluster: Cluster,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _runtime = self.rt.enter();
        drop(self.reader.get_mut().take());
    }
}

/// A batch: its index, then its values, all little-endian `u64`s.
fn encode(index: u64, values: impl Iterator<Item = u64>) -> bytes::Bytes {
    let mut out = index.to_le_bytes().to_vec();
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.into()
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
}

impl Raw {
    fn start(consumers: Consumers) -> Result<Raw, String> {
        let mut cluster = start_server()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let url = cluster.url.clone();
        let (js, reader) = rt.block_on(async {
            let e = |e: &dyn std::fmt::Display| e.to_string();
            let client = async_nats::connect(&url).await.map_err(|x| e(&x))?;
            let js = jetstream::new(client);
            let tasks = js
                .get_or_create_stream(stream::Config {
                    name: RAW_TASKS.into(),
                    subjects: vec!["raw.tasks".into()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    ..Default::default()
                })
                .await
                .map_err(|x| e(&x))?;
            let results = js
                .get_or_create_stream(stream::Config {
                    name: "RAW_RESULTS".into(),
                    subjects: vec!["raw.results".into()],
                    ..Default::default()
                })
                .await
                .map_err(|x| e(&x))?;
            let consumer = tasks
                .get_or_create_consumer(
                    "raw",
                    consumer::pull::Config {
                        durable_name: Some("raw".into()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|x| e(&x))?;
            for _ in 0..2 {
                match consumers {
                    Consumers::InProcess => {
                        let client = async_nats::connect(&url).await.map_err(|x| e(&x))?;
                        tokio::spawn(consume(jetstream::new(client), consumer.clone()));
                    }
                    Consumers::Processes => {
                        let exe = std::env::current_exe().map_err(|x| e(&x))?;
                        let mut cmd = Command::new(exe);
                        cmd.env(RAW_CONSUMER_ENV, &url)
                            .stdin(Stdio::null())
                            .stdout(Stdio::null());
                        ipc_shm::os::command_dies_with_parent(&mut cmd);
                        cluster.children.push(cmd.spawn().map_err(|x| e(&x))?);
                    }
                }
            }
            let reader = results
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|x| e(&x))?
                .messages()
                .await
                .map_err(|x| e(&x))?;
            Ok::<_, String>((js, reader))
        })?;
        let raw = Raw {
            rt,
            js,
            reader: tokio::sync::Mutex::new(Some(reader)),
            _cluster: cluster,
        };
        // Warm up: both consumers connected (a consumer process that failed to start leaves
        // the round trip unanswered: an error, not a hang).
        for _ in 0..16 {
            let warm = raw.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), raw.map_async(1, 1)).await
            });
            warm.map_err(|_| "the raw consumers did not answer within 20 s".to_owned())??;
        }
        Ok(raw)
    }

    /// Squares `0..n` in batches of `batch`; returns the results in order.
    fn map(&self, n: u64, batch: usize) -> Result<Vec<u64>, String> {
        self.rt.block_on(self.map_async(n, batch))
    }

    /// [`Raw::map`], awaited (the warm-up runs it under a time limit).
    async fn map_async(&self, n: u64, batch: usize) -> Result<Vec<u64>, String> {
        let js = self.js.clone();
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut reader = self.reader.lock().await;
        let reader = reader.as_mut().ok_or("no result reader")?;
        let batches = n.div_ceil(batch as u64);
        // Acknowledgements are awaited in windows, as ours does (the client lets only so
        // many stay pending).
        let mut acks = Vec::new();
        for b in 0..batches {
            let lo = b * batch as u64;
            let hi = (lo + batch as u64).min(n);
            let ack = js
                .publish("raw.tasks", encode(b, lo..hi))
                .await
                .map_err(|x| e(&x))?;
            acks.push(ack.into_future());
            if acks.len() == 256 || b + 1 == batches {
                for r in futures_util::future::join_all(acks.drain(..)).await {
                    r.map_err(|x| e(&x))?;
                }
            }
        }
        let mut out = vec![0u64; n as usize];
        for _ in 0..batches {
            let msg = reader
                .next()
                .await
                .ok_or("results ended")?
                .map_err(|x| e(&x))?;
            let mut w = words(&msg.payload);
            let lo = w.next().unwrap_or(0) as usize * batch;
            for (slot, v) in out.iter_mut().skip(lo).zip(w) {
                *slot = v;
            }
        }
        Ok(out)
    }
}

/// The raw engine's row with its consumers in processes of their own (the targets' floor).
pub const RAW_PROCESSES: &str = "raw JetStream, consumers in 2 processes";

/// The raw engine's row with its consumers in the caller's process (a reference).
const RAW_IN_PROCESS: &str = "raw JetStream, consumers in the caller's process";

/// The raw engine's `apply`-like round trip: one task of one value.
fn raw_apply(name: &'static str, consumers: Consumers) -> ContenderSpec {
    ContenderSpec::new(name, Kind::Floor, move || {
        let raw = Raw::start(consumers)?;
        Ok(Runner::new(1, move |iters| {
            let start = Instant::now();
            for _ in 0..iters {
                raw.map(1, 1)?;
            }
            Ok(start.elapsed())
        }))
    })
}

/// The cluster family for `p`: `apply` round trip and `map` throughput.
pub fn cluster(p: &Params) -> Vec<Workload> {
    let n = p.map_tasks;
    let local = p.pool_workers;
    let apply = Workload::new(
        "cluster_apply",
        "cluster: apply round trip, one trivial task",
        Metric::Latency,
    )
    .with(ContenderSpec::new(
        "pool apply on NATS (2 nodes)",
        Kind::Ours,
        || {
            let (cluster, pool) = our_cluster()?;
            Ok(Runner::new(1, move |iters| {
                let _keep = &cluster;
                let start = Instant::now();
                for i in 0..iters {
                    pool.apply(noop, i).map_err(|e| e.to_string())?;
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .with(raw_apply(RAW_PROCESSES, Consumers::Processes))
    .with(raw_apply(RAW_IN_PROCESS, Consumers::InProcess))
    .with(ContenderSpec::new(
        "pool apply (local, forkserver)",
        Kind::Ours,
        move || {
            let pool = our_pool(local, StartMethod::ForkServer)?;
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for i in 0..iters {
                    pool.apply(noop, i).map_err(|e| e.to_string())?;
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .note("each NATS contender starts its own nats-server -js on loopback (file store); ours: 2 nodes of 1 worker each, this program in node mode; raw: the same round trip on async-nats alone (publish to a work queue, a consumer publishes the result to a stream, one long-lived ordered consumer reads it); both wait for the task's PubAck and store the result before acking the task. The target is set against the raw consumers in 2 processes of their own, the placement of our nodes; consumers in the caller's process are shown for reference (a message to another process wakes it from sleep)");
    let map = Workload::new(
        "cluster_map",
        format!("cluster: map of {n} trivial tasks (x*x), {BATCH} per message"),
        Metric::Throughput,
    )
    .with(ContenderSpec::new(
        "pool map on NATS (2 nodes)",
        Kind::Ours,
        move || {
            let (cluster, pool) = our_cluster()?;
            Ok(Runner::new(n, move |iters| {
                let _keep = &cluster;
                let start = Instant::now();
                for _ in 0..iters {
                    let v = pool
                        .map_chunked(square, 0..n, BATCH)
                        .map_err(|e| e.to_string())?;
                    std::hint::black_box(v);
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .with(ContenderSpec::new(
        RAW_PROCESSES,
        Kind::Floor,
        move || {
            let raw = Raw::start(Consumers::Processes)?;
            Ok(Runner::new(n, move |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(raw.map(n, BATCH)?);
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .with(ContenderSpec::new(
        "pool map (local, forkserver)",
        Kind::Ours,
        move || {
            let pool = our_pool(local, StartMethod::ForkServer)?;
            Ok(Runner::new(n, move |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let v = pool.map(square, 0..n).map_err(|e| e.to_string())?;
                    std::hint::black_box(v);
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .note(format!("same batching for ours and the raw engine ({BATCH} tasks per message, results in order); the local pool picks its own chunks; target: ours within 1.5x of the raw engine"));
    vec![apply, map]
}
