use std::sync::atomic::AtomicU64;

#[derive(ipc_shm::ShmSafe)]
struct NoRepr {
    n: AtomicU64,
}

fn main() {}
