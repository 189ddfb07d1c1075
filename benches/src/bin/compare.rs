//! The comparison runner, the workspace's main job:
//! `cargo run --release -p benches --bin compare [-- OPTIONS]` (see `--help`).
//!
//! It measures our process pool and IPC crates against thread pools (rayon,
//! std::thread + crossbeam-channel, threadpool), process-based peers (procspawn, ipc-channel,
//! a Unix socketpair), Python's multiprocessing (when python3 is present) and the machine's
//! floor, in one interleaved run, and prints the tables (markdown) to stdout.

fn main() {
    // First, before any thread: a pool worker, the fork server or a procspawn child takes its
    // role here and never returns.
    benches::init();
    let cmd = match benches::runner::parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    match cmd {
        benches::runner::Command::Help => print!("{}", benches::runner::USAGE),
        benches::runner::Command::List(cfg) => {
            for w in benches::runner::selected(&cfg) {
                println!("{:<24} {}", w.id, w.title);
            }
        }
        benches::runner::Command::Run(cfg) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if let Err(e) = benches::runner::run(&cfg, &mut out) {
                eprintln!("compare: {e}");
                std::process::exit(1);
            }
        }
    }
}
