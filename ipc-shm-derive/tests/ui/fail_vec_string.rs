#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Heap {
    items: Vec<u64>,
    name: String,
}

fn main() {}
