//! A prefork TCP echo server: N workers accept on one listening socket (127.0.0.1) and answer
//! each client with the line it sent and their pid. Many clients at once are served by exactly
//! N distinct pids.
//!
//! Run: `cargo run --release -p pool --example prefork_echo -- [workers] [clients]`
//!
//! The listener is inherited through `fork`, so this example uses the `Fork` start method
//! (a fork server or spawned worker would need the descriptor passed explicitly).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;

use pool::{PoolBuilder, StartMethod};

static LISTENER: OnceLock<TcpListener> = OnceLock::new();

/// Runs in a worker: serve clients until one says QUIT; returns how many were served.
fn serve(_: ()) -> u32 {
    let listener = LISTENER
        .get()
        .expect("the listener is inherited from the parent");
    let mut served = 0;
    loop {
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        if line.trim() == "QUIT" {
            return served;
        }
        served += 1;
        let _ = writeln!(&stream, "{} {}", line.trim(), std::process::id());
    }
}

fn ask(addr: std::net::SocketAddr, msg: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    writeln!(stream, "{msg}")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let clients: usize = args.next().map_or(Ok(200), |a| a.parse())?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    LISTENER.set(listener).map_err(|_| "listener already set")?;

    let pool = PoolBuilder::new()
        .processes(workers)
        .start_method(StartMethod::Fork)
        .build()?;
    let servers: Vec<_> = (0..workers).map(|_| pool.apply_async(serve, ())).collect();

    // Many clients at once.
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| s.spawn(move || ask(addr, &format!("hello-{i}"))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect::<Result<_, _>>()
    })?;
    let pids: HashSet<&str> = answers
        .iter()
        .filter_map(|a| a.split_whitespace().nth(1))
        .collect();
    for i in 0..workers {
        let _ = ask(addr, "QUIT").map_err(|e| eprintln!("quit {i}: {e}"));
    }
    let served: u32 = servers
        .into_iter()
        .map(|s| s.get())
        .collect::<Result<Vec<u32>, _>>()?
        .iter()
        .sum();
    println!(
        "{clients} clients answered by {} distinct worker pids ({workers} workers); served {served}",
        pids.len()
    );
    assert_eq!(served as usize, clients);
    assert!(pids.len() <= workers);
    Ok(())
}
