//! Quick probe (not a benchmark): apply round trip and map throughput.
use std::time::Instant;
fn id(x: u64) -> u64 {
    x
}
fn main() {
    for method in [pool::StartMethod::Fork, pool::StartMethod::ForkServer] {
        let pool = pool::PoolBuilder::new()
            .processes(2)
            .start_method(method)
            .build()
            .unwrap();
        for _ in 0..1000 {
            pool.apply(id, 1).unwrap();
        }
        let n = 20000;
        let t = Instant::now();
        for i in 0..n {
            pool.apply(id, i).unwrap();
        }
        println!(
            "{method:?} apply: {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        let t = Instant::now();
        let v = pool.map(id, 0..1_000_000u64).unwrap();
        println!(
            "{method:?} map 1M: {:.1} M tasks/s ({})",
            1.0 / t.elapsed().as_secs_f64(),
            v.len()
        );
        let t = Instant::now();
        let mut w = pool::PoolBuilder::new()
            .processes(2)
            .start_method(method)
            .build()
            .unwrap();
        let _ = &mut w;
        println!(
            "{method:?} pool start (2 workers): {:.0} us",
            t.elapsed().as_secs_f64() * 1e6
        );
    }
}
