//! The task functions every contender runs (plain `fn`s, so our pool and procspawn can find
//! them in a worker), and the calibration of the CPU-bound spin.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Instant;

use serde_bytes::ByteBuf;

/// A trivial task: `x + 1`.
pub fn noop(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// A trivial task for `map`: `x * x`.
pub fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// A deterministic CPU-bound task: `iters` rounds of integer arithmetic (an xorshift and a
/// multiply) that the compiler cannot fold away. Its cost per round is calibrated once by
/// [`spin_rounds_per_us`].
pub fn spin(iters: u64) -> u64 {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15u64 ^ iters);
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    black_box(x)
}

/// Rounds of [`spin`] per microsecond on this machine (measured once, the median of 7 runs
/// of about 2 ms each).
pub fn spin_rounds_per_us() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let probe = 1u64 << 16;
        spin(probe);
        let t = Instant::now();
        spin(probe);
        let once = t.elapsed().as_secs_f64().max(1e-7);
        let rounds = ((2e-3 / once) * probe as f64).max(1024.0) as u64;
        let mut rates: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                spin(rounds);
                rounds as f64 / (t.elapsed().as_secs_f64() * 1e6)
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    })
}

/// The [`spin`] argument that takes about `us` microseconds here.
pub fn spin_rounds_for(us: u64) -> u64 {
    ((us as f64) * spin_rounds_per_us()).round().max(1.0) as u64
}

/// A task that reads its 1 MiB argument (every 4 KiB page, so the copy cannot be skipped) and
/// returns a checksum.
pub fn touch(buf: ByteBuf) -> u64 {
    buf.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>() + buf.len() as u64
}

/// The arena of the zero-copy argument contender, handed to each worker by its initializer.
static ARENA: OnceLock<ipc_sync::ShmArena> = OnceLock::new();

/// The zero-copy contender's initializer: keeps the arena for [`touch_shm`].
pub fn keep_arena(arena: ipc_sync::ShmArena) {
    let _ = ARENA.set(arena);
}

/// [`touch`] on a block of the arena: adopts the token, reads the block in place, and frees it
/// (as `touch` drops its buffer). A token that cannot be adopted counts as an empty argument,
/// which the caller's check of the sums reports.
pub fn touch_shm(token: ipc_sync::ShmToken<u8>) -> u64 {
    let Some(block) = ARENA.get().and_then(|a| a.adopt(token).ok()) else {
        return 0;
    };
    block
        .iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum::<u64>()
        + block.len() as u64
}

/// A task that crashes its process (`abort`, no core dump).
pub fn crash(_: u64) -> u64 {
    crate::proc::abort_without_core()
}

/// A task that panics.
pub fn panics(x: u64) -> u64 {
    panic!("task {x} panicked on purpose")
}
