#[repr(C)]
struct Plain {
    n: u64,
}

#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
struct Outer {
    inner: Plain,
}

fn main() {}
