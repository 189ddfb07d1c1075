#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Node {
    value: u64,
    next: *const Node,
}

fn main() {}
