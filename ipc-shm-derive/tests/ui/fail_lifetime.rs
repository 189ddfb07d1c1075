#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Borrowed<'a> {
    n: &'a u64,
}

fn main() {}
