#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
enum State {
    Idle,
    Busy,
}

fn main() {}
