use std::sync::atomic::AtomicU64;

// align alone does not fix the field order.
#[derive(ipc_shm::ShmSafe)]
#[repr(align(64))]
struct AlignOnly {
    n: AtomicU64,
}

fn main() {}
