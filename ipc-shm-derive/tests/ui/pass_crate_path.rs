//! `#[shm_safe(crate = "...")]` names ipc_shm when it is reached through another path.

mod reexport {
    pub use ipc_shm as shm;
}

#[derive(ipc_shm::ShmSafe)]
#[shm_safe(crate = "reexport::shm")]
#[repr(C)]
struct Counter {
    n: std::sync::atomic::AtomicU64,
}

fn main() {
    fn needs<T: ipc_shm::ShmSafe>() {}
    needs::<Counter>();
}
