//! The same `map` on a NATS JetStream cluster: starts a local `nats-server -js` and two nodes
//! (this program again, in node mode), then maps a million small tasks across them.
//!
//! Run: `cargo run --release -p pool --features nats --example cluster_map`
//!
//! It needs `nats-server` on PATH (Debian: `apt-get install nats-server`); without it, set
//! `POOL_CLUSTER_URL=nats://host:4222` to use a running server whose nodes you started yourself
//! (`POOL_CLUSTER_NODE=nats://host:4222 ./cluster_map` on each node machine).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pool::PoolBuilder;
use pool::cluster::{NODE_ENV, NatsCluster};

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Kills the processes this example started when it ends.
struct Started(Vec<Child>, Option<std::path::PathBuf>);

impl Drop for Started {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts `nats-server -js` on a free loopback port; returns its URL once it is ready.
fn start_server(started: &mut Started) -> Result<String, Box<dyn std::error::Error>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("cluster_map-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    started.1 = Some(dir.clone());
    let mut server = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = server.stderr.take().ok_or("no stderr")?;
    started.0.push(server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Server is ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .map_err(|_| "nats-server did not start")?;
    Ok(format!("nats://127.0.0.1:{port}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A node started below (POOL_CLUSTER_NODE set) never gets here: `init`, run before `main`
    // by the default `ctor` feature, makes it serve instead.
    pool::init();

    let mut started = Started(Vec::new(), None);
    let url = match std::env::var("POOL_CLUSTER_URL") {
        Ok(url) => url,
        Err(_) => {
            let on_path = Command::new("nats-server")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !on_path {
                println!(
                    "nats-server is not on PATH: install it (apt-get install nats-server), or set \
                     POOL_CLUSTER_URL to a running server with nodes attached"
                );
                return Ok(());
            }
            let url = start_server(&mut started)?;
            for _ in 0..2 {
                started.0.push(
                    Command::new(std::env::current_exe()?)
                        .env(NODE_ENV, &url)
                        .env("POOL_CLUSTER_PROCESSES", "2")
                        .spawn()?,
                );
            }
            println!("started nats-server at {url} and two nodes of two workers each");
            url
        }
    };

    let pool = PoolBuilder::new()
        .cluster(NatsCluster::new(&url).expected_workers(4))
        .build()?;

    let t = Instant::now();
    assert_eq!(pool.apply(square, 12)?, 144);
    println!("first apply (nodes warming up): {:?}", t.elapsed());
    let t = Instant::now();
    for i in 0..100u64 {
        assert_eq!(pool.apply(square, i)?, i * i);
    }
    println!("apply round trip:               {:?}", t.elapsed() / 100);

    let n = 1_000_000u64;
    let t = Instant::now();
    let squares = pool.map_chunked(square, 0..n, 4096)?;
    let elapsed = t.elapsed();
    assert_eq!(squares.len(), n as usize);
    assert_eq!(squares[999], 999 * 999);
    println!(
        "map of {n} tasks (4096 per message): {elapsed:?}, {:.0} tasks/s",
        n as f64 / elapsed.as_secs_f64()
    );
    let stats = pool.stats();
    println!(
        "done {} failed {} in flight {}",
        stats.done, stats.failed, stats.in_flight
    );
    pool.close();
    pool.join();
    Ok(())
}
