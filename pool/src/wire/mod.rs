//! The wire between the pool and its workers: the [`protocol`] (frames and messages), the
//! [`codec`] (the workspace's one codec, `ipc_shm::codec`: bincode over serde with one decode
//! limit; the round trip's two headers are also written and read by hand, in [`header`], to
//! the same bytes), the [`transport`] (an `ipc_pipe` connection behind the `Link` boundary)
//! and the [`bulk`] areas that large arguments take instead of the transport's ring (encoded by
//! the caller straight into an area of their own, [`shared_args`], or into [`recycle`]d buffers
//! of earlier jobs that the driver copies into the seat's area).
//!
//! Everything a data path sends to a worker goes down through here; nothing in this module
//! knows about jobs, drivers or the pool's state.

pub(crate) mod args;
pub(crate) mod bulk;
pub(crate) mod codec;
pub(crate) mod header;
pub(crate) mod outcome;
pub(crate) mod protocol;
pub(crate) mod recycle;
pub(crate) mod shared_args;
pub(crate) mod transport;

#[cfg(test)]
mod garbage_tests;
