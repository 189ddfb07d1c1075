//! The pool on a NATS JetStream cluster (`pool` feature `nats`), against the real server: each
//! test starts `nats-server -js` on a free loopback port with a temporary store directory, and
//! nodes that are this test binary re-run in node mode (children of the harness, under its
//! watchdog, killed on drop).
//!
//! Without `nats-server` on PATH (or in /usr/sbin) these tests fail when `CI` is set, and
//! otherwise print loudly that they were skipped and why.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ipc_shm::os;
use ipc_tests::{ChildCommand, ChildProcess, child, child_entry};
use pool::cluster::{ClusterError, NatsCluster, NodeBuilder};
use pool::{Pool, PoolBuilder, PoolError, TaskError};

/// A `nats-server -js` on a free loopback port with its own store directory; killed and its
/// directory removed on drop.
struct NatsServer {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Where `nats-server` is, if installed.
fn nats_server_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsServer {
    /// Starts a server, or `None` (after saying so loudly) when `nats-server` is missing
    /// outside CI. Under CI (`CI` set) a missing server fails the test.
    fn start(label: &str) -> Option<NatsServer> {
        let Some(bin) = nats_server_binary() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "nats-server is not installed, and CI is set: the cluster tests must run \
                     (.ci/run installs it with apt-get install nats-server)"
                );
            }
            eprintln!(
                "\n**********\nSKIPPED cluster test `{label}`: nats-server is not on PATH. \
                 Install it (apt-get install nats-server) to run the cluster tests.\n**********\n"
            );
            return None;
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pool-nats-{}-{label}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a store directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = NatsServer {
            bin,
            port,
            dir,
            child: None,
        };
        server.spawn();
        Some(server)
    }

    /// Runs the server and waits until it logs that it is ready.
    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(&self.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        os::command_dies_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting nats-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(Ok(()));
                }
                log.push(line);
            }
            let _ = tx.send(Err(log.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => self.child = Some(child),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server did not become ready: {other:?}");
            }
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Ends the server with `signal` (SIGTERM: a clean shutdown, which keeps the store; SIGKILL:
    /// a crash, whatever it had not written to its store is lost) and starts it again on the
    /// same port and store.
    fn restart_after(&mut self, signal: os::Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = os::kill(child.id(), signal);
            let _ = child.wait();
        }
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How many messages the stream `stream` holds now (read with the NATS client itself).
fn stream_messages(server: &NatsServer, stream: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("the stream");
        stream.info().await.expect("its info").state.messages
    })
}

/// A cluster name unique to this test process and test.
fn cluster_name(label: &str) -> String {
    format!("t{}_{label}", std::process::id())
}

child_entry! {
    fn cluster_node() {
        let url = std::env::var("TEST_NATS_URL").expect("TEST_NATS_URL");
        let name = std::env::var("TEST_CLUSTER").expect("TEST_CLUSTER");
        let processes = std::env::var("TEST_NODE_PROCESSES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2);
        let err = NodeBuilder::new(NatsCluster::new(url).name(name))
            .processes(processes)
            .ack_wait(Duration::from_secs(1))
            .serve()
            .unwrap_err();
        panic!("node stopped: {err}");
    }
}

/// A node process (this binary in node mode) of cluster `name`, with 2 local workers.
fn start_node(server: &NatsServer, name: &str) -> ChildProcess {
    start_node_at(&server.url(), name, "node")
}

/// [`start_node`] with `processes` local workers.
fn start_node_of(server: &NatsServer, name: &str, processes: usize) -> ChildProcess {
    node_command(&server.url(), name, "node")
        .env("TEST_NODE_PROCESSES", processes.to_string())
        .spawn()
}

/// A node of cluster `name` that reaches the server at `url`; its workers see `tag` in
/// `TEST_NODE_TAG`.
fn start_node_at(url: &str, name: &str, tag: &str) -> ChildProcess {
    node_command(url, name, tag).spawn()
}

/// The command of a node of cluster `name` at `url` (see [`start_node_at`]), under a watchdog.
fn node_command(url: &str, name: &str, tag: &str) -> ChildCommand {
    child!(cluster_node)
        .env("TEST_NATS_URL", url)
        .env("TEST_CLUSTER", name)
        .env("TEST_NODE_TAG", tag)
        .watchdog(Duration::from_secs(600))
}

/// A TCP forwarder on a free loopback port to the server's port: a real network path between a
/// node and the server that the test can cut. After [`Forwarder::cut`] every byte either way is
/// read and dropped and new connections are accepted and never answered, as in a network
/// partition where packets vanish (no reset, no close: neither end is told).
struct Forwarder {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Every socket of the path (both sides of each connection), shut down on drop.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Forwarder {
    fn start(to: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, sockets2) = (cut.clone(), sockets.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let keep = client.try_clone().expect("clone");
                sockets2.lock().unwrap().push(keep);
                if cut2.load(Ordering::SeqCst) {
                    continue; // accepted, never answered
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                sockets2
                    .lock()
                    .unwrap()
                    .push(server.try_clone().expect("clone"));
                for (from, to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let cut = cut2.clone();
                    std::thread::spawn(move || forward(from, to, &cut));
                }
            }
        });
        Forwarder { port, cut, sockets }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// From now on nothing passes, either way.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; drops what it reads once `cut` is set.
fn forward(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !cut.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for s in self.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn cluster_pool(server: &NatsServer, name: &str, builder: PoolBuilder) -> Pool {
    builder
        .cluster(NatsCluster::new(server.url()).name(name))
        .build()
        .expect("a cluster pool")
}

fn double(x: u64) -> u64 {
    x * 2
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn byte_sum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

fn pid_of_worker(_: u32) -> u32 {
    os::pid()
}

fn slow_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x * 2
}

fn crash(how: String) -> u64 {
    match how.as_str() {
        "panic" => panic!("boom"),
        "segv" => loop {
            // The first SIGSEGV may meet std's stack-overflow handler, which restores the
            // default action and returns; the next one kills.
            os::kill(os::pid(), os::Signal::SIGSEGV).expect("kill");
        },
        "sleep" => {
            std::thread::sleep(Duration::from_secs(30));
            1
        }
        _ => 7,
    }
}

/// `x * 2`, after 5 ms, and the tag of the node it ran on.
fn slow_double_where(x: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(5));
    (x * 2, std::env::var("TEST_NODE_TAG").unwrap_or_default())
}

/// Marks `<dir>/started-<pid>`, runs 60 s, then marks `<dir>/finished-<pid>`.
fn long_marked(dir: String) -> u32 {
    let pid = os::pid();
    std::fs::write(format!("{dir}/started-{pid}"), b"").expect("mark the start");
    std::thread::sleep(Duration::from_secs(60));
    std::fs::write(format!("{dir}/finished-{pid}"), b"").expect("mark the end");
    pid
}

/// Whether process `pid` has ended (gone, or a zombie not reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// The pids in the `<prefix>-<pid>` marks in `dir`.
fn marks(dir: &std::path::Path, prefix: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(dir)
        .expect("the marks' directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix(&format!("{prefix}-"))?.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The parent process id of `pid` (from /proc).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Kills the node this task runs on (the ancestor whose command line names the node entry).
fn kill_my_node(_: u32) -> u32 {
    let mut pid = os::pid();
    while let Some(parent) = parent_of(pid) {
        pid = parent;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("cluster_node") {
            os::kill(pid, os::Signal::SIGKILL).expect("kill the node");
            std::thread::sleep(Duration::from_secs(30));
        }
        if pid <= 1 {
            break;
        }
    }
    panic!("no node above this worker");
}

#[test]
fn an_unreachable_server_is_a_typed_error_at_build() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let r = PoolBuilder::new()
        .cluster(NatsCluster::new(format!("nats://127.0.0.1:{port}")))
        .build();
    let Err(PoolError::Cluster(ClusterError::Connect { url, source })) = r else {
        panic!("{r:?}");
    };
    assert!(url.ends_with(&port.to_string()));
    assert!(
        std::error::Error::source(&source).is_some(),
        "the client's error is kept"
    );
    let bad_name = PoolBuilder::new()
        .cluster(NatsCluster::new("nats://127.0.0.1:1").name("a.b"))
        .build();
    assert!(
        matches!(
            bad_name,
            Err(PoolError::Cluster(ClusterError::Config { .. }))
        ),
        "{bad_name:?}"
    );
    fn setup(_: u32) {}
    let with_initializer = PoolBuilder::new()
        .initializer(setup, 1)
        .cluster(NatsCluster::new("nats://127.0.0.1:1"))
        .build();
    assert!(
        matches!(
            with_initializer,
            Err(PoolError::Cluster(ClusterError::Config { .. }))
        ),
        "{with_initializer:?}"
    );
}

#[test]
fn the_pool_api_on_two_nodes() {
    let _watchdog = ipc_tests::watchdog("the_pool_api_on_two_nodes", Duration::from_secs(240));
    let Some(server) = NatsServer::start("api") else {
        return;
    };
    let name = cluster_name("api");
    let _nodes = [start_node(&server, &name), start_node(&server, &name)];
    let pool = cluster_pool(&server, &name, PoolBuilder::new());

    assert_eq!(pool.apply(double, 21), Ok(42));
    assert_eq!(pool.apply_async(double, 4).get(), Ok(8));
    let (tx, rx) = mpsc::channel();
    let result = pool.apply_async_with(double, 5, move |r| tx.send(*r).unwrap(), |_| {});
    assert_eq!(result.get(), Ok(10));
    assert_eq!(rx.recv(), Ok(10), "the callback ran");
    // Handles (issue 11) travel to local workers, not to other machines: refused at submit.
    fn counter_value(v: ipc_shm::SharedValue<std::sync::atomic::AtomicU64>) -> u64 {
        v.load(std::sync::atomic::Ordering::Relaxed)
    }
    let counter = ipc_shm::SharedValue::<std::sync::atomic::AtomicU64>::new_anonymous()
        .expect("a shared counter");
    assert!(
        matches!(
            pool.apply(counter_value, counter),
            Err(TaskError::Unsendable(_))
        ),
        "a handle in a cluster task's argument must be refused at submit"
    );

    let expected: Vec<u64> = (0..2000).map(|x| x * 2).collect();
    assert_eq!(pool.map(double, 0..2000u64).as_ref(), Ok(&expected));
    assert_eq!(
        pool.map_chunked(double, 0..2000u64, 7).as_ref(),
        Ok(&expected)
    );
    assert_eq!(
        pool.starmap(add, (0..100u64).map(|i| (i, i))),
        Ok((0..100).map(|i| 2 * i).collect())
    );
    let ordered: Vec<u64> = pool
        .imap(double, 0..300u64)
        .map(|r| r.expect("a result"))
        .collect();
    assert_eq!(ordered, (0..300).map(|x| x * 2).collect::<Vec<_>>());
    let mut seen: Vec<u64> = pool
        .imap_unordered(double, 0..300u64)
        .map(|r| r.expect("a result"))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..300).map(|x| x * 2).collect::<Vec<_>>());

    let (ptx, prx) = mpsc::channel();
    let out = pool.map_with_progress(double, 0..500u64, move |done, total| {
        let _ = ptx.send((done, total));
    });
    assert_eq!(out.map(|v| v.len()), Ok(500));
    let last = prx.try_iter().last().expect("progress was reported");
    assert_eq!(last, (500, 500));

    // Large arguments leave as messages like any others (a local pool would encode them into
    // bulk areas once it has seen large ones; a cluster pool never does: the second and later
    // ones here are the case that matters).
    let large: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 300 << 10]).collect();
    let sums: Vec<u64> = large.iter().cloned().map(byte_sum).collect();
    assert_eq!(pool.apply(byte_sum, large[0].clone()), Ok(sums[0]));
    assert_eq!(pool.apply(byte_sum, large[1].clone()), Ok(sums[1]));
    assert_eq!(pool.map_chunked(byte_sum, large, 1), Ok(sums));

    // Tasks ran in several worker processes.
    let pids: HashSet<u32> = pool
        .map_chunked(pid_of_worker, 0..400u32, 1)
        .expect("pids")
        .into_iter()
        .collect();
    assert!(pids.len() >= 2, "{pids:?}");

    let stats = pool.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert!(stats.done >= 2000 * 2 + 100 + 600 + 500 + 6, "{stats:?}");
    // Nodes report themselves every second: wait for both (each with its two workers) and for
    // reports that count every task this pool ran (a node may have run a few twice).
    let started = Instant::now();
    let counted = |nodes: &[pool::NodeStats]| nodes.iter().map(|n| n.done).sum::<u64>();
    let mut nodes = pool.stats().nodes;
    while (nodes.len() < 2 || counted(&nodes) < stats.done)
        && started.elapsed() < Duration::from_secs(20)
    {
        let _ = pool
            .apply_async(double, 0)
            .wait_timeout(Duration::from_millis(100));
        nodes = pool.stats().nodes;
    }
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(counted(&nodes) >= stats.done, "{nodes:?}");
    assert_eq!(pool.workers(), 4, "two nodes of two workers");
    for node in &nodes {
        assert_eq!(node.workers.len(), 2, "{node:?}");
        assert!(node.last_seen < Duration::from_secs(3), "{node:?}");
    }
    let results_stream = format!("POOL_{name}_RESULTS");
    assert!(
        stream_messages(&server, &results_stream) > 0,
        "results are stored"
    );
    pool.close();
    assert!(
        pool.join_timeout(Duration::from_secs(30)),
        "close and join finish"
    );
    // Closing removed the pool's messages from both streams.
    assert_eq!(stream_messages(&server, &results_stream), 0);
    assert_eq!(stream_messages(&server, &format!("POOL_{name}_TASKS")), 0);
    assert_eq!(
        pool.apply(double, 1),
        Err(TaskError::Pool(PoolError::Closed))
    );
}

#[test]
fn failures_stay_with_their_task_and_the_node_lives_on() {
    let _watchdog = ipc_tests::watchdog("failures_stay_with_their_task", Duration::from_secs(240));
    let Some(server) = NatsServer::start("failures") else {
        return;
    };
    let name = cluster_name("failures");
    let _node = start_node(&server, &name);
    let pool = cluster_pool(&server, &name, PoolBuilder::new());
    let args = ["ok", "panic", "ok", "segv", "ok"].map(String::from);
    let outcomes: Vec<Result<u64, TaskError>> = pool.imap(crash, args.clone()).collect();
    assert_eq!(outcomes.len(), 5);
    for (how, outcome) in args.iter().zip(outcomes) {
        match how.as_str() {
            "ok" => assert_eq!(outcome, Ok(7)),
            "panic" => assert!(
                matches!(&outcome, Err(TaskError::Panicked { message, .. }) if message == "boom"),
                "{outcome:?}"
            ),
            _ => assert!(
                matches!(
                    outcome,
                    Err(TaskError::WorkerLost {
                        exit: pool::Exit::Signal(11),
                        ..
                    })
                ),
                "{outcome:?}"
            ),
        }
    }
    // A chunk with a crash in the middle: the other tasks of the chunk still get their results.
    let mixed = ["ok", "segv", "ok", "ok"].map(String::from);
    let chunk: Vec<_> = pool.imap_chunked(crash, mixed, 4).collect();
    // (The first task's result may be lost with its worker, as locally: a result of a task
    // shorter than 50 us finished just before the crash is not sent yet.)
    assert!(
        matches!(chunk[0], Ok(7) | Err(TaskError::WorkerLost { .. })),
        "{chunk:?}"
    );
    assert!(
        matches!(chunk[1], Err(TaskError::WorkerLost { .. })),
        "{chunk:?}"
    );
    assert_eq!(
        chunk[2..],
        [Ok(7), Ok(7)],
        "the rest of the chunk ran elsewhere"
    );
    assert_eq!(pool.apply(double, 3), Ok(6), "the node lives on");

    let timed = cluster_pool(
        &server,
        &name,
        PoolBuilder::new().task_timeout(Duration::from_millis(500)),
    );
    let start = Instant::now();
    let r = timed.apply(crash, "sleep".to_owned());
    assert!(
        matches!(r, Err(TaskError::Timeout { limit }) if limit == Duration::from_millis(500)),
        "{r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(timed.apply(double, 4), Ok(8), "the node lives on");
}

#[test]
fn a_killed_node_loses_no_work_and_each_result_arrives_once() {
    let _watchdog = ipc_tests::watchdog("a_killed_node_loses_no_work", Duration::from_secs(240));
    let Some(server) = NatsServer::start("kill") else {
        return;
    };
    let name = cluster_name("kill");
    let victim = start_node(&server, &name);
    let _other = start_node(&server, &name);
    let pool = cluster_pool(&server, &name, PoolBuilder::new());
    let n = 600u64;
    let mut seen = HashSet::new();
    let mut victim = Some(victim);
    for r in pool.imap_unordered(slow_double, 0..n) {
        let v = r.expect("a result");
        assert!(v % 2 == 0 && v < 2 * n, "{v}");
        assert!(seen.insert(v / 2), "result {v} arrived twice");
        if seen.len() == n as usize / 4 {
            let v = victim.take().expect("the victim");
            v.kill();
            let outcome = v.wait();
            assert_eq!(outcome.signal(), Some(9), "{outcome:?}");
        }
    }
    assert_eq!(seen.len(), n as usize, "every result arrived");
    assert!(victim.is_none(), "the node was killed mid-map");
}

#[test]
fn a_node_cut_off_from_the_server_loses_no_work() {
    let _watchdog = ipc_tests::watchdog("a_node_cut_off", Duration::from_secs(240));
    let Some(server) = NatsServer::start("cut") else {
        return;
    };
    let name = cluster_name("cut");
    // The victim reaches the server through a forwarder the test cuts: its process lives on,
    // with the chunks it holds, but nothing it sends arrives (no result, no ack, no progress
    // ack) and nothing reaches it.
    let path = Forwarder::start(server.port);
    let _victim = start_node_at(&path.url(), &name, "victim");
    let _other = start_node_at(&server.url(), &name, "other");
    let pool = cluster_pool(&server, &name, PoolBuilder::new());
    // Both nodes serve before the map starts (the victim, behind the forwarder, may come up
    // later; the other would otherwise run the whole first quarter alone): wait for both
    // nodes' reports, which they publish once connected and then every second.
    let ready = Instant::now();
    while pool.stats().nodes.len() < 2 || pool.stats().in_flight > 0 {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "the nodes did not report"
        );
        let _ = pool
            .apply_async(double, 0)
            .wait_timeout(Duration::from_millis(100));
    }
    // The tasks of that wait (all ended), counted apart.
    let before = pool.stats().done;
    let n = 800u64;
    // One task per chunk: the victim holds several chunks (running or queued) when it is cut.
    let result = pool.map_async(slow_double_where, 0..n, Some(1));
    let started = Instant::now();
    while !result.ready() && pool.stats().done < before + n / 4 {
        result.wait_timeout(Duration::from_millis(10));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress before the cut"
        );
    }
    assert!(!result.ready(), "the map ended before the cut");
    path.cut();
    let values = match result.get_timeout(Duration::from_secs(120)) {
        Ok(v) => v.expect("every task has a result"),
        Err(_) => panic!("work held by the cut-off node was lost: the map never ended"),
    };
    assert_eq!(values.len(), n as usize);
    for (i, (v, _)) in values.iter().enumerate() {
        assert_eq!(*v, i as u64 * 2, "result {i}");
    }
    let by_victim = values.iter().filter(|(_, tag)| tag == "victim").count();
    assert!(by_victim > 0, "the victim ran nothing before the cut");
    // Exactly one result per task: the caller counted each task once (a second result of a
    // redelivered chunk, had the victim's arrived, would have been dropped, not counted).
    let stats = pool.stats();
    assert_eq!((stats.done - before, stats.failed), (n, 0), "{stats:?}");
    eprintln!("cut: {by_victim} of {n} results from the victim (before the cut)");
}

#[test]
fn terminate_stops_the_chunks_running_on_nodes() {
    let _watchdog = ipc_tests::watchdog("terminate_on_nodes", Duration::from_secs(240));
    let Some(server) = NatsServer::start("terminate") else {
        return;
    };
    let name = cluster_name("terminate");
    let _node = start_node(&server, &name);
    let marks_dir = server.dir.join("marks");
    std::fs::create_dir_all(&marks_dir).expect("a directory for the marks");
    let dir = marks_dir.to_string_lossy().into_owned();
    let pool = cluster_pool(&server, &name, PoolBuilder::new());
    // Two 60 s tasks, one per worker of the node, and a third that waits for a worker.
    let result = pool.map_async(long_marked, vec![dir.clone(); 3], Some(1));
    let started = Instant::now();
    while marks(&marks_dir, "started").len() < 2 {
        result.wait_timeout(Duration::from_millis(20));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the tasks did not start"
        );
    }
    let running = marks(&marks_dir, "started");
    pool.terminate();
    match result.get_timeout(Duration::from_secs(10)) {
        Ok(r) => assert_eq!(r, Err(TaskError::Terminated)),
        Err(_) => panic!("terminate did not settle the map"),
    }
    // The workers running the pool's tasks on the node are stopped well before their tasks'
    // 60 s (without the cancel, they would run to the end).
    let stopping = Instant::now();
    while !running.iter().all(|&pid| ended(pid)) {
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "the node still runs the terminated pool's tasks: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(marks(&marks_dir, "finished"), Vec::<u32>::new());
    // The queued third task never started, and the node lives on for other pools.
    let other = cluster_pool(&server, &name, PoolBuilder::new());
    assert_eq!(other.apply(double, 21), Ok(42));
    assert_eq!(marks(&marks_dir, "started"), running);
}

child_entry! {
    fn doomed_caller() {
        let url = std::env::var("TEST_NATS_URL").expect("TEST_NATS_URL");
        let name = std::env::var("TEST_CLUSTER").expect("TEST_CLUSTER");
        let dir = std::env::var("TEST_MARKS").expect("TEST_MARKS");
        let pool = PoolBuilder::new()
            .cluster(NatsCluster::new(url).name(name))
            .build()
            .expect("a cluster pool");
        // Two 60 s tasks, one per worker of the node, and a third that waits for a worker;
        // the test SIGKILLs this process while they run.
        let result = pool.map_async(long_marked, vec![dir; 3], Some(1));
        let _ = result.get();
        panic!("the caller outlived its tasks");
    }
}

#[test]
fn a_dead_callers_chunks_stop_on_the_nodes() {
    let _watchdog = ipc_tests::watchdog("dead_caller", Duration::from_secs(240));
    let Some(server) = NatsServer::start("dead_caller") else {
        return;
    };
    let name = cluster_name("dead_caller");
    let _node = start_node(&server, &name);
    let marks_dir = server.dir.join("marks");
    std::fs::create_dir_all(&marks_dir).expect("a directory for the marks");
    let caller = child!(doomed_caller)
        .env("TEST_NATS_URL", server.url())
        .env("TEST_CLUSTER", &name)
        .env("TEST_MARKS", &marks_dir)
        .watchdog(Duration::from_secs(200))
        .spawn();
    let started = Instant::now();
    while marks(&marks_dir, "started").len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the dead caller's tasks did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = marks(&marks_dir, "started");
    // SIGKILL: the caller cannot publish a cancel; only its silence tells the node.
    caller.kill();
    drop(caller);
    // The node's workers running the dead caller's tasks are stopped after its heartbeat's
    // silence window (5 s), well before their tasks' 60 s.
    let stopping = Instant::now();
    while !running.iter().all(|&pid| ended(pid)) {
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "the node still runs the dead caller's tasks: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(marks(&marks_dir, "finished"), Vec::<u32>::new());
    // The node lives on for other pools, and the dead caller's queued third task never ran.
    let other = cluster_pool(&server, &name, PoolBuilder::new());
    assert_eq!(other.apply(double, 21), Ok(42));
    assert_eq!(marks(&marks_dir, "started"), running);
}

#[test]
fn a_chunk_whose_nodes_die_fails_after_max_attempts() {
    let _watchdog = ipc_tests::watchdog("max_attempts", Duration::from_secs(240));
    let Some(server) = NatsServer::start("attempts") else {
        return;
    };
    let name = cluster_name("attempts");
    let _nodes = [start_node(&server, &name), start_node(&server, &name)];
    let pool = PoolBuilder::new()
        .cluster(NatsCluster::new(server.url()).name(&name).max_attempts(1))
        .build()
        .expect("a pool");
    // The first delivery kills its node; with max_attempts(1) the redelivery is not run.
    let r = pool.apply(kill_my_node, 0);
    assert_eq!(
        r,
        Err(TaskError::Pool(PoolError::Cluster(
            ClusterError::AttemptsExhausted { attempts: 1 }
        )))
    );
    assert_eq!(pool.apply(double, 5), Ok(10), "the other node lives on");
}

#[test]
fn a_task_longer_than_ack_wait_is_not_redelivered() {
    long_task_on_nodes_of(2);
}

/// A node of one local worker runs a lone chunk without stepping aside from its runtime at
/// first (`LONE_CHUNK_BLOCKS`): a long one must still step aside, or no in-progress ack is
/// sent and the chunk is redelivered (this test fails if it does not).
#[test]
fn a_task_longer_than_ack_wait_is_not_redelivered_on_nodes_of_one_worker() {
    long_task_on_nodes_of(1);
}

/// A 3.5 s task on two nodes of `processes` local workers each, acked in progress.
fn long_task_on_nodes_of(processes: usize) {
    let _watchdog = ipc_tests::watchdog("long_task", Duration::from_secs(240));
    let label = format!("long{processes}");
    let Some(server) = NatsServer::start(&label) else {
        return;
    };
    let name = cluster_name(&label);
    let _nodes = [
        start_node_of(&server, &name, processes),
        start_node_of(&server, &name, processes),
    ];
    // The nodes' ack_wait is 1 s: without in-progress acks, this 3.5 s task would be redelivered
    // to the other node, whose delivery count (2) exceeds max_attempts(1).
    let pool = PoolBuilder::new()
        .cluster(NatsCluster::new(server.url()).name(&name).max_attempts(1))
        .build()
        .expect("a pool");
    assert_eq!(pool.apply(sleep_ms, 3500), Ok(3500));
}

#[test]
fn a_node_of_another_build_refuses_the_task() {
    let _watchdog = ipc_tests::watchdog("another_build", Duration::from_secs(240));
    let Some(server) = NatsServer::start("build") else {
        return;
    };
    let name = cluster_name("build");
    // Another build: this binary with bytes appended (its content hash differs), started in node
    // mode through the environment (`pool::init` sees POOL_CLUSTER_NODE before `main`).
    //
    // A shell writes the copy, not this process: a file this process held open for writing
    // could not be executed (ETXTBSY, "Text file busy") while any child forked meanwhile by
    // another test's thread still held its inherited copy of that descriptor (until it
    // execs, or for its whole life: a `Fork` pool worker). Seen once in CI.
    let copy = server.dir.join("other-build");
    let exe = std::env::current_exe().expect("this binary");
    let written = Command::new("sh")
        .args([
            "-c",
            r#"cat "$1" > "$2" && printf 'another build' >> "$2" && chmod 755 "$2""#,
            "sh",
        ])
        .arg(&exe)
        .arg(&copy)
        .status()
        .expect("sh");
    assert!(written.success(), "writing the copy: {written}");
    let mut cmd = Command::new(&copy);
    cmd.env(pool::cluster::NODE_ENV, server.url())
        .env("POOL_CLUSTER_NAME", &name)
        .env("POOL_CLUSTER_PROCESSES", "1");
    let _node = ChildCommand::new(cmd, "node of another build")
        .watchdog(Duration::from_secs(600))
        .spawn();
    let pool = cluster_pool(&server, &name, PoolBuilder::new());
    let r = pool.apply(double, 2);
    assert!(
        matches!(
            &r,
            Err(TaskError::Pool(PoolError::Cluster(
                ClusterError::BuildMismatch { .. }
            )))
        ),
        "{r:?}"
    );
}

#[test]
fn the_server_restarted_mid_map_neither_loses_nor_hangs() {
    server_ends_mid_map("restart", os::Signal::SIGTERM);
}

#[test]
fn the_server_killed_mid_map_neither_loses_nor_hangs() {
    server_ends_mid_map("killed", os::Signal::SIGKILL);
}

/// A map across two nodes whose server ends with `signal` a third of the way through and starts
/// again on the same port and store: every result arrives right, or the map fails with a clear
/// cluster error; it never hangs and never returns a wrong result.
fn server_ends_mid_map(tag: &str, signal: os::Signal) {
    let _watchdog = ipc_tests::watchdog(&format!("server_{tag}"), Duration::from_secs(300));
    let Some(mut server) = NatsServer::start(tag) else {
        return;
    };
    let name = cluster_name(tag);
    let _nodes = [start_node(&server, &name), start_node(&server, &name)];
    let pool = cluster_pool(&server, &name, PoolBuilder::new());
    let n = 400u64;
    let result = pool.map_async(slow_double, 0..n, Some(2));
    // End the server once a third of the map is done (watched through the pool's counters).
    let started = Instant::now();
    while !result.ready() && pool.stats().done < n / 3 {
        result.wait_timeout(Duration::from_millis(10));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress before the server ended"
        );
    }
    server.restart_after(signal);
    match result.get_timeout(Duration::from_secs(120)) {
        Ok(Ok(v)) => assert_eq!(v, (0..n).map(|x| x * 2).collect::<Vec<_>>()),
        Ok(Err(e)) => {
            assert!(
                matches!(e, TaskError::Pool(PoolError::Cluster(_))),
                "not a clear cluster error: {e:?}"
            );
        }
        Err(_) => panic!("the map hung after the server ended ({tag})"),
    }
}

#[test]
fn chaos_nodes_killed_and_restarted_during_a_large_map() {
    let _watchdog = ipc_tests::watchdog("chaos", Duration::from_secs(400));
    let Some(server) = NatsServer::start("chaos") else {
        return;
    };
    let name = cluster_name("chaos");
    let mut nodes: Vec<ChildProcess> = (0..3).map(|_| start_node(&server, &name)).collect();
    // Retry lost chunks however often their nodes are killed: a chunk may meet several victims
    // in a row, and this test is about losing nothing (max_attempts has its own test).
    let pool = PoolBuilder::new()
        .cluster(
            NatsCluster::new(server.url())
                .name(&name)
                .max_attempts(1000),
        )
        .build()
        .expect("a cluster pool");
    let n = 100_000u64;
    let chunk = 250;
    let started = Instant::now();
    let result = pool.map_async(double, 0..n, Some(chunk));
    // Kill a node (round robin, seeded by the clock) each time another twentieth of the map is
    // done, and start a new one in its place. Twentieths, and a short wait between looks: on a
    // busy CI machine this thread can miss most of a fast map (a run saw 2 kills at tenths, the
    // map done in 1.2 s), and the test is only worth its name if several kills happen.
    let mut kills = 0;
    let mut next = n / 20;
    let mut victim = (started.elapsed().subsec_nanos() as usize) % nodes.len();
    while !result.ready() {
        let done = pool.stats().done;
        if done >= next && next < n {
            nodes[victim].kill();
            nodes[victim] = start_node(&server, &name);
            kills += 1;
            victim = (victim + 1) % nodes.len();
            next += n / 20;
        }
        result.wait_timeout(Duration::from_millis(5));
    }
    let values = result.get().expect("every task has a result");
    let elapsed = started.elapsed();
    assert_eq!(values.len(), n as usize);
    assert!(
        values.iter().enumerate().all(|(i, v)| *v == i as u64 * 2),
        "a result is wrong or out of place"
    );
    let stats = pool.stats();
    assert_eq!(stats.done, n, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    eprintln!(
        "chaos: {n} tasks in chunks of {chunk}, {kills} node SIGKILLs and restarts, 0 lost, \
         0 duplicated, {elapsed:?}"
    );
    assert!(kills >= 3, "only {kills} kills happened");
}
