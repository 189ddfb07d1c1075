//! The atomics this crate uses: `ipc_sync::sync`'s (`std`'s normally, loom's under `--cfg loom`),
//! so the loom build model-checks exactly the code that runs in production.

pub(crate) use ipc_sync::sync::{AtomicU32, AtomicU64, Ordering};
