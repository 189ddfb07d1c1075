#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Boxed {
    b: Box<u64>,
}

fn main() {}
