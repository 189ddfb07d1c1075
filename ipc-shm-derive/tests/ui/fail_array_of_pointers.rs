#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Table {
    entries: [*mut u8; 4],
}

fn main() {}
