#[derive(ipc_shm::ShmSafe)]
#[repr(C)]
union Word {
    a: u32,
    b: f32,
}

fn main() {}
