#[derive(ipc_shm::ShmSafe)]
#[repr(C, packed)]
struct Packed {
    flag: u8,
    n: u64, // at offset 1: an AtomicU64 here could not even be referenced
}

fn main() {}
