//! A duplex pipe of two connections over shared memory, with peer-death detection and poll
//! readiness: Python's `multiprocessing.Pipe` for Rust.
//!
//! [`pipe`] returns two connected [`Connection`]s; each sends to and receives from the other,
//! typically in another process (after `fork`, or passed to an exec'ed child by descriptor).
//! [`channel`] is the one-way form ([`Sender`], [`Receiver`]).
//!
//! - Messages are serde values ([`Connection::send`] / [`Connection::recv`], encoded with
//!   bincode) or raw bytes ([`Connection::send_bytes`], [`Connection::recv_bytes`],
//!   [`Connection::recv_bytes_into`]), of any size up to 1 GiB: a message larger than the ring
//!   is streamed through it while the receiver reads.
//! - Blocking, with a timeout, or not at all: [`Connection::recv_timeout`],
//!   [`Connection::try_recv`], [`Connection::poll`], [`Connection::send_timeout`],
//!   [`Connection::try_send`].
//! - Peer death: when the other end is dropped or closed, or its process dies (even by
//!   `SIGKILL`), receiving returns every message already sent and then
//!   [`RecvError::Disconnected`]; a send that has to wait returns [`SendError::Disconnected`].
//!   Never a hang.
//! - Readiness: after [`Connection::set_pollable`], each end's descriptor
//!   ([`Connection::readiness_fd`]) becomes readable when a message arrives and when the peer
//!   hangs up, for poll/epoll/mio/tokio; [`wait`] waits on several ends like
//!   `multiprocessing.connection.wait`.
//!
//! - Async (feature `tokio`): `recv_async`, `recv_bytes_async`, `send_async` and
//!   `send_bytes_async` await on the readiness fd through `tokio::io::unix::AsyncFd`, with no
//!   thread per waiting task; cancel-safe, and a dead peer ends the await with `Disconnected`
//!   (see `Connection::recv_async`, which has a runnable example).
//!
//! ```
//! use std::time::Duration;
//!
//! let (parent, child) = ipc_pipe::pipe()?;
//! // (In real use `child` goes to another process; a thread shows the same protocol.)
//! let worker = std::thread::spawn(move || {
//!     while let Ok(n) = child.recv::<u64>() {
//!         child.send(&(n * n)).unwrap();
//!     }
//! });
//! parent.send(&12u64)?;
//! assert_eq!(parent.recv_timeout::<u64>(Duration::from_secs(5))?, 144);
//! drop(parent); // the worker's recv returns Disconnected, its loop ends
//! worker.join().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it works
//!
//! One anonymous shared-memory segment (a `memfd`, mode 0600, via `ipc-shm`: nothing to leak
//! after a crash) holds a control block and two single-producer single-consumer byte rings,
//! one per direction (256 KiB each by default, [`PipeBuilder::capacity`]). Messages are framed with
//! the workspace's one frame header (`ipc_shm::codec::FrameHeader`: a `u32` length and its check
//! word) and wrap around the ring; the ring protocol, its state table and its
//! memory ordering are documented in the `ring` module (see the source), and model-checked
//! with loom: the models in `model.rs` drive the real send and receive paths, which are
//! generic over the waiter (`ipc_sync::Waiter`: the shared futex in production, loom's model
//! under `--cfg loom`) like `ipc-queue`'s core.
//!
//! ## Source map
//!
//! A data path reads downward, from the public API to the shared bytes:
//!
//! | file            | concept                                                             |
//! |-----------------|---------------------------------------------------------------------|
//! | `builder.rs`    | [`PipeBuilder`], [`pipe`], [`channel`]: segment + socketpair        |
//! | `connection.rs` | [`Connection`]: attach (validation), close, release, drop           |
//! | `tx.rs`         | send path: `send*` -> framing -> streaming -> wait for space        |
//! | `rx.rs`         | receive path: `recv*` -> wait for a message -> copy out -> free     |
//! | `readiness.rs`  | futex/fd mode switch, readiness fd, `poll`, [`wait`]                |
//! | `async_io.rs`   | feature `tokio`: the async receive and send on `AsyncFd`            |
//! | `channel.rs`    | [`Sender`], [`Receiver`]                                            |
//! | `inherit.rs`    | passing an end across `exec` or as raw descriptors                  |
//! | `transfer.rs`   | an end inside a message (serde through `ipc_shm::transfer`)         |
//! | `end.rs`        | `End<C, M, W, L>`: one end's state, generic over memory and waiter  |
//! |                 | (the bytes are `ipc_shm`'s shared byte ring: `ShmRing`, `LoomRing`)  |
//! | `ring.rs`       | the shared control block and the ring/wake protocol (state table)   |
//! | `os.rs`         | socketpair, `poll`, pids, descriptor records: the production link   |
//! | `model.rs`      | loom models of the real send/receive paths                          |
//!
//! Each end also owns one end of a Unix socketpair. The kernel tracks it: when every copy of
//! the peer's socket is closed, which happens when its process dies whatever the cause, the
//! survivor's socket reports hang-up. That is how `SIGKILL` is detected.
//!
//! Waiting, per end: a spin on the ring counter for an adaptive time budget (the workspace's
//! one `ipc_sync::Backoff`, [`PipeBuilder::spin_max`]; hot peers answer in about the spin round
//! trip), then sleep. Sleep is a shared futex wait in 20 ms slices with a hang-up
//! check between slices (**futex mode**, the default: the cheapest wake-up, and a killed peer
//! is noticed within one slice; a dropped or closed peer wakes the sleeper at once), or, once
//! the end was switched with [`Connection::set_pollable`], `poll(2)` on the socket, to which
//! the sender writes one byte when the receiver is armed (**fd mode**: what makes the fd usable in an event loop;
//! hang-up wakes it at once). Either way the sender makes no system call when the receiver is
//! not asleep: the wake-up is skipped unless the receiver's wait word says it sleeps.
//!
//! | end state          | sender does per message      | receiver does while waiting      |
//! |--------------------|------------------------------|----------------------------------|
//! | receiver hot       | copy + publish (no syscall)  | spins on `tail`                  |
//! | futex mode, asleep | copy + publish + FUTEX_WAKE  | FUTEX_WAIT, 20 ms slices         |
//! | fd mode, armed     | copy + publish + `send` byte | `poll` on its socket (or yours)  |
//! | peer gone          | `Disconnected`               | drains, then `Disconnected`      |
//!
//! # Readiness fd contract
//!
//! The fd of an end in fd mode ([`Connection::set_pollable`], then
//! [`Connection::readiness_fd`]; `as_fd`/`as_raw_fd` do both, a side effect kept for existing
//! callers and deprecated) is readable
//! whenever a message has arrived since this end last found its incoming ring empty, and when
//! the peer hangs up. That is edge-style readiness, as with mio or tokio's `AsyncFd`: after the
//! fd fires, receive with [`Connection::try_recv`] until it returns `Empty` (that drains the fd
//! and re-arms it). Right after registering the fd, drain once the same way (messages may have
//! arrived before). [`wait`] and [`Connection::poll`] follow this contract for you.
//!
//! # One process per end
//!
//! An end is used by one thread of one process at a time (`Send`, not `Sync`). After `fork`,
//! the process that does not use an end drops it (as with Python's `Pipe`, where the parent
//! closes the child's end); otherwise its copy keeps the end's socket open and the peer cannot
//! see the user's death. The segment records which process uses each end: a process that uses
//! a copy claimed by another live process gets `WrongProcess` (checked on slow paths, where a
//! `getpid` is cheap next to sleeping). [`Connection::close`] closes an end for every process;
//! dropping closes only this process's handle.
//!
//! # Handing objects over a pipe, and pipe ends to other processes
//!
//! [`Connection::send`] and [`Connection::recv`] encode and decode in the workspace's transfer
//! context (`ipc_shm::transfer`): a message may contain an `ipc_shm::Segment`, a `SharedValue`
//! or `SharedSlice` (a `Lock` in a segment, say), an `ipc_queue::Queue`, or another pipe end
//! ([`Connection`], [`Sender`], [`Receiver`]). Their descriptors go over this end's socket
//! (`SCM_RIGHTS`) just before the message is published, in a record that names the message's
//! batch id, so a receiver never pairs descriptors with the wrong message; the receiver rebuilds
//! each handle through the validated open path. Messages without handles cost nothing extra.
//! [`Connection::send_bytes_with_fds`] and [`Connection::take_fds`] are the same for protocols
//! that encode their own messages (the pool's).
//!
//! **A pipe end moved into a message is gone from the sender**: it is marked given away, cannot
//! be sent again (`SendError::Transfer`), and dropping it releases it quietly (the peer sees no
//! hang-up: the end lives on in the receiver, which becomes its user). An end cannot be sent
//! over its own pipe. The pool hands ends to `Process`es and workers the same way.
//!
//! # Limits
//!
//! - Sends to a peer killed by `SIGKILL` succeed while its ring has room (the messages are lost
//!   with it, as with a socket's buffer); the first send that has to wait returns
//!   `Disconnected`. Receives are exact: everything published before the death is delivered.
//! - Every receive and send honours its deadline at every wait (`try_*` do not wait). A
//!   message that fits in the ring is consumed only once it is all there: `Timeout`/`Empty`
//!   leave it in the ring. A message larger than the ring must be consumed as it arrives (the
//!   sender needs the space): a receive that times out (or a `try_recv` that finds the ring
//!   empty) half-way keeps what arrived in the end, and the next receive of any kind on that
//!   end resumes it; nothing is handed out before it is complete, and framing is never lost.
//!   The timed and non-blocking sends ([`Connection::send_timeout`], [`Connection::try_send`]
//!   and the bytes forms) write a message only once the ring has room for all of it, so a
//!   timeout leaves nothing behind; they refuse a message larger than the ring with
//!   [`SendError::LargerThanRing`] (only the blocking sends stream).
//! - A send fails with `Disconnected` once the peer's last handle was dropped or closed: each
//!   send loads the peer's drop counter (a read-mostly word) and polls its socket only when
//!   the counter changed since the last check.
//! - Two ends that both send messages larger than their rings to each other without reading
//!   deadlock, as two processes writing to each other's full sockets do.
//! - The shared memory is untrusted: every counter and length read from it is validated, and
//!   a peer that writes garbage produces [`RecvError::Corrupted`] (or a decode error), never
//!   undefined behaviour. A message announcing more than [`PipeBuilder::max_message_size`]
//!   (1 GiB by default, and at most: the shared frame format's `MAX_FRAME_LEN`) ends the
//!   stream with `TooLarge`, before anything is allocated for it; a header whose check word
//!   does not match ends it with `Corrupted`. Decoding is bounded by the shared codec's decode
//!   limit.
//! - Wire format version 2 (the shared frame header): a segment made by a build with the old
//!   `u64` length prefix is refused (`Corrupted` "version", or a segment type-tag error).
//!
//! # Dependencies
//!
//! - `ipc-shm`: the shared segment (memfd, validated header, typed offsets, fd passing); the
//!   workspace's one byte ring (`ShmRing`, `LoomRing`); with feature `codec`, its one frame format,
//!   bincode configuration and decode limit (`ipc_shm::codec`, shared with `ipc-queue` and `pool`);
//!   and the workspace's OS layer [`ipc_shm::os`]: the socketpair, `send`/`recv` of readiness bytes,
//!   `poll`, `getpid` and `kill(pid, 0)`, all without `unsafe` in this crate.
//! - `ipc-sync`: the workspace's one futex wrapper (`ipc_sync::futex`) and, for loom, its futex
//!   model; the workspace's one spin policy (`ipc_sync::Backoff`).
//! - `serde` + `bincode` (2.x, serde mode): the message encoding of `send`/`recv`, through
//!   `ipc_shm::codec`.
//! - `thiserror`: `Display` and `source` of the error enums.
//! - `loom` (only under `--cfg loom`): model checking of the send and receive paths.
//! - `tokio` (only with feature `tokio`, its `net` feature): `AsyncFd` for the async API.
#![deny(unsafe_code)]
// Under `--cfg loom` the crate builds only the protocol (`end`, `tx`, `rx`, `ring`) and
// its models; the test-support self dev-dependency also builds that reduced library without the
// models, where nothing uses it.
#![cfg_attr(loom, allow(dead_code))]

#[cfg(all(feature = "tokio", not(loom)))]
mod async_io;
#[cfg(not(loom))]
mod builder;
#[cfg(not(loom))]
mod channel;
#[cfg(not(loom))]
mod connection;
mod end;
mod error;
#[cfg(not(loom))]
mod inherit;
#[cfg(all(test, loom))]
mod model;
#[cfg(not(loom))]
mod os;
#[cfg(not(loom))]
mod readiness;
mod ring;
mod rx;
mod sync;
#[cfg(not(loom))]
mod transfer;
mod tx;

#[cfg(not(loom))]
pub use builder::{PipeBuilder, channel, pipe};
#[cfg(not(loom))]
pub use channel::{Receiver, Sender};
#[cfg(not(loom))]
pub use connection::Connection;
pub use error::{
    Corruption, OpenError, PassError, PipeError, PollError, RecvError, RecvIntoError,
    RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
#[cfg(not(loom))]
pub use readiness::{Waitable, wait};

// The README's code blocks are compiled and run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
