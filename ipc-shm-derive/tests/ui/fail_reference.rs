#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Name {
    s: &'static str,
}

fn main() {}
