use std::sync::atomic::AtomicU64;

#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Counted {
    n: AtomicU64,
}

impl Drop for Counted {
    fn drop(&mut self) {}
}

fn main() {}
