//! Quick start: squares with `map`, `apply_async`, and a lazy `imap`.
//!
//! Run: `cargo run --release -p pool --example quickstart`

use pool::PoolBuilder;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    pool::init(); // with the default `ctor` feature this already ran; calling it is harmless

    let pool = PoolBuilder::new().build()?; // one worker per usable CPU
    println!(
        "{} workers: {:?}",
        pool.workers(),
        pool.stats()
            .workers
            .iter()
            .map(|w| w.pid)
            .collect::<Vec<_>>()
    );

    let squares = pool.map(square, 1..=10u64)?;
    println!("map:         {squares:?}");

    let pending: Vec<_> = (1..=3u64)
        .map(|x| pool.apply_async(square, x * 100))
        .collect();
    let results: Result<Vec<u64>, _> = pending.into_iter().map(|r| r.get()).collect();
    println!("apply_async: {:?}", results?);

    let firsts: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(5)
        .collect::<Result<_, _>>()?;
    println!("imap (endless input, first 5): {firsts:?}");
    Ok(())
}
