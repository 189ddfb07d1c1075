use std::sync::atomic::AtomicU64;

#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Pair<T> {
    a: T,
    b: AtomicU64,
}

fn main() {
    let mut layout = ipc_shm::Layout::new();
    // Pair<T> is ShmSafe only when T is.
    let _ = layout.add::<Pair<Vec<u8>>>();
}
