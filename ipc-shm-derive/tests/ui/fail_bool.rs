// bool has invalid bit patterns (2..=255): a peer could write one.
#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Flags {
    on: bool,
}

fn main() {}
