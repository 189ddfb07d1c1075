//! [`Connection`]: one end of a pipe over a shared segment: attaching it (validating the
//! control block), closing, releasing and dropping it. The send path is in `tx.rs`, the receive
//! path in `rx.rs`, readiness in `readiness.rs`, passing an end to another process in
//! `inherit.rs`.
//!
//! A `Connection` holds the shared segment (an `Arc`, so both ends of a pipe made in one
//! process share one mapping) and its protocol state, an `End` (see `end.rs`) over that
//! segment, the shared futex and its own socket of the pipe's socketpair, with private copies
//! of the counters it owns (the tail of its outgoing ring, the head of its incoming ring).
//!
//! # Waiting
//!
//! A receiver that finds no message first spins on the ring's `tail` (for the adaptive time
//! budget of its `ipc_sync::Backoff`), then sleeps, in one of two ways:
//!
//! - **futex mode** (default): it sets `SLEEP` in the ring's `rx_wait` word and waits on that
//!   word with the shared futex of `ipc_sync::futex`, in slices of `SLICE` (20 ms, `end.rs`);
//!   between slices it checks its socket for hang-up, so a peer killed by `SIGKILL` (which
//!   cannot wake anyone) is noticed within one slice. A clean drop or close of the peer wakes
//!   it at once.
//! - **fd mode** (after [`Connection::set_pollable`], `as_fd`/`as_raw_fd` or
//!   [`wait`](crate::wait)): it sets `ARMED` and sleeps in `poll(2)` on its socket. The sender
//!   writes one byte to the socket when it finds `ARMED`, and the kernel reports hang-up of a
//!   dead peer on the same socket, so no slicing is needed and the fd can be handed to
//!   epoll/mio/tokio.
//!
//! Why both, and why slices: measured on the reference VM (64-byte round trip, both peers
//! asleep, `cargo bench -p benches --bench ipc_pipe_connection`), futex mode took 5.4-6.7 us
//! against 4.7-5.0 us for the raw shared-futex floor, fd mode 6.9 us, a socketpair 9.4-10.1 us.
//! The same futex mode with *untimed* waits matched the floor (4.8 us vs 4.8-4.9 us): the
//! whole gap is the cost of arming and cancelling the slice's timer on a VM, and a 200 ms slice
//! cost the same as 20 ms. An untimed wait cannot notice a `SIGKILL`ed peer (nobody is left to
//! wake it), so the timed slice stays: never hanging is a requirement, the ~0.8 us is not.
//! fd mode is kept for event loops, not for speed.
//!
//! # One process per end
//!
//! An end is single-consumer and single-producer: one thread (it is `Send`, not `Sync`) of one
//! process at a time. After `fork`, the process that keeps using an end must be the only one:
//! the other drops its copy (as with Python's `Pipe`, whose parent closes the child's end). This
//! is checked cheaply on the slow paths: the segment records the pid using each end; a forked
//! copy that starts using it claims it, and a process that then uses a copy claimed by another
//! live process gets `WrongProcess`.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use ipc_shm::{ByteRing, Offset, Segment, ShmRing};
use ipc_sync::Futex;

use crate::builder::control_size;
use crate::end::{End, Settings};
use crate::os::Socket;
use crate::ring::{Control, Corruption, MAGIC, MIN_CAP, VERSION};
use crate::sync::Ordering;

/// The end's view of the control block: the segment, whose payload starts with a [`Control`]
/// (checked once, when the end is attached).
#[derive(Debug)]
pub(crate) struct ShmControl(Arc<Segment>);

impl ShmControl {
    /// `seg`'s control block, if the segment is long enough to hold one.
    fn new(seg: Arc<Segment>) -> Option<ShmControl> {
        seg.get(Offset::<Control>::from_raw(0)).ok()?;
        Some(ShmControl(seg))
    }
}

impl Deref for ShmControl {
    type Target = Control;

    #[inline]
    fn deref(&self) -> &Control {
        // `new` checked that the segment holds a whole `Control` at offset 0, and a segment's
        // length never changes.
        self.0
            .get(Offset::<Control>::from_raw(0))
            .expect("control block validated in ShmControl::new")
    }
}

/// The protocol state of a production end: shared memory, the shared futex, the socket.
pub(crate) type ShmEnd = End<ShmControl, ShmRing<Arc<Segment>>, Futex, Socket>;

/// One end of a duplex pipe: sends to and receives from the other end, possibly in another
/// process.
///
/// Messages are serde values encoded with bincode ([`send`](Connection::send) /
/// [`recv`](Connection::recv)) or raw bytes ([`send_bytes`](Connection::send_bytes) /
/// [`recv_bytes`](Connection::recv_bytes)); the two kinds share one stream of frames. Every
/// method takes `&self`; a `Connection` is `Send` but not `Sync` (one user at a time).
///
/// Dropping it closes this process's handle: once every process holding this end has dropped
/// it or died, the other end gets [`RecvError::Disconnected`](crate::RecvError::Disconnected) (after receiving every message
/// already sent) and [`SendError::Disconnected`](crate::SendError::Disconnected). [`close`](Connection::close) closes the end for
/// every process at once.
///
/// # Passing an end to a child
///
/// Across `fork` the child simply keeps using its copy (and the parent drops it). Across `exec`,
/// [`pass_to_command`](Connection::pass_to_command) and
/// [`from_inherited`](Connection::from_inherited):
///
/// ```no_run
/// use std::process::Command;
/// // Parent:
/// let (mine, theirs) = ipc_pipe::pipe()?;
/// let mut cmd = Command::new("/path/to/worker");
/// theirs.pass_to_command(&mut cmd, "WORKER_PIPE")?;
/// let mut child = cmd.spawn()?;
/// drop((theirs, cmd)); // only the child holds that end now
/// mine.send(&"job")?;
/// // Worker:
/// let conn = ipc_pipe::Connection::from_inherited("WORKER_PIPE")?;
/// let job: String = conn.recv()?;
/// # child.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Connection {
    /// The shared segment (for passing the end on; the protocol reaches it through `end`).
    pub(crate) seg: Arc<Segment>,
    /// The protocol state: send path in `tx.rs`, receive path in `rx.rs`.
    pub(crate) end: ShmEnd,
    /// The encode/decode buffer of `send`/`recv`, kept between calls.
    pub(crate) scratch: Cell<Vec<u8>>,
    /// Set by `release`: drop closes descriptors only.
    pub(crate) released: bool,
    /// Set when the end was serialised into a message (handed to another process, see
    /// `transfer.rs`): it cannot be sent again, and dropping it releases it quietly.
    pub(crate) given_away: Cell<bool>,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.end.side)
            .field("capacity_out", &self.end.tx.cap())
            .field("capacity_in", &self.end.rx.cap())
            .field("fd_mode", &self.end.fd_mode.get())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Builds end `side` over a segment: validates the control block (magic, version, ring
    /// capacities against the segment's length), then attaches the protocol state.
    pub(crate) fn attach(
        seg: Arc<Segment>,
        side: usize,
        sock: OwnedFd,
        settings: Settings,
    ) -> Result<Connection, Corruption> {
        let bad = |what, value| Corruption { what, value };
        if side > 1 {
            return Err(bad("side", side as u64));
        }
        let ctl = ShmControl::new(seg.clone()).ok_or(bad("segment length", seg.len() as u64))?;
        let magic = ctl.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(bad("magic", magic));
        }
        let version = ctl.version.load(Ordering::Acquire);
        if version != VERSION {
            return Err(bad("version", version));
        }
        let mut caps = [0usize; 2];
        for (i, cap) in caps.iter_mut().enumerate() {
            let raw = ctl.cap[i].load(Ordering::Acquire);
            *cap = usize::try_from(raw)
                .ok()
                .filter(|c| *c >= MIN_CAP && c.is_power_of_two())
                .ok_or(bad("ring capacity", raw))?;
        }
        let data0 = control_size();
        let data1 = data0
            .checked_add(caps[0])
            .ok_or(bad("ring capacity", caps[0] as u64))?;
        let ring = |offset, cap: usize| {
            ShmRing::new(seg.clone(), offset, cap).map_err(|_| bad("ring capacity", cap as u64))
        };
        let (s0, s1) = (ring(data0, caps[0])?, ring(data1, caps[1])?);
        let (tx, rx) = if side == 0 { (s0, s1) } else { (s1, s0) };
        let end = End::attach(ctl, side, tx, rx, Futex, Socket::new(sock), settings)?;
        Ok(Connection {
            seg,
            end,
            scratch: Cell::new(Vec::new()),
            released: false,
            given_away: Cell::new(false),
            _not_sync: PhantomData,
        })
    }

    /// This end's socket (readiness and hang-up).
    pub(crate) fn sock(&self) -> BorrowedFd<'_> {
        self.end.link.fd()
    }

    /// Which end of the pipe this is (0 or 1).
    pub fn side(&self) -> usize {
        self.end.side
    }

    /// Closes this end for every process that holds it (a forked copy included): the other end
    /// sees [`RecvError::Disconnected`](crate::RecvError::Disconnected) once it has received
    /// what was sent. Dropping a `Connection` instead closes only this process's handle.
    pub fn close(self) {
        self.end.close();
        drop(self);
    }

    /// Gives up this process's copy of an end that another process now uses (after `fork`, or
    /// after passing it to a child): closes this process's descriptors and mapping without
    /// waking or otherwise disturbing the peer. (Dropping also works, but wakes the peer so that
    /// it re-checks for hang-up.)
    pub fn release(mut self) {
        drop(self.end.link.take());
        self.released = true;
    }

    /// Test hook (only with the `test-support` feature, which the crate's own tests enable):
    /// writes `value` over the shared `tail` counter of the ring this end reads, as a hostile
    /// or buggy peer could.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn __corrupt_incoming_tail(&self, value: u64) {
        self.end.rx_ring().tail.store(value, Ordering::SeqCst);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Close our socket first, so that a woken peer that checks for hang-up sees it.
        drop(self.end.link.take());
        if self.released || self.given_away.get() {
            return;
        }
        self.end.say_goodbye();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::TAG;
    use ipc_shm::SegmentBuilder;

    /// A segment laid out by a build with the old wire format (version 1: a `u64` length per
    /// frame) is refused with a typed error, not misread.
    #[test]
    fn an_old_wire_format_is_refused() {
        let caps = [MIN_CAP, MIN_CAP];
        let seg = SegmentBuilder::new(control_size() + 2 * MIN_CAP)
            .type_tag(TAG)
            .create_with(|seg| {
                let ctl = seg.get(Offset::<Control>::from_raw(0))?;
                ctl.magic.store(MAGIC, Ordering::Relaxed);
                ctl.version.store(1, Ordering::Relaxed);
                for (i, cap) in caps.iter().enumerate() {
                    ctl.cap[i].store(*cap as u64, Ordering::Relaxed);
                }
                Ok::<(), ipc_shm::LayoutError>(())
            })
            .unwrap();
        let (s0, _s1) = ipc_shm::os::socketpair().unwrap();
        let err = Connection::attach(Arc::new(seg), 0, s0, Settings::default()).unwrap_err();
        assert_eq!(
            err,
            Corruption {
                what: "version",
                value: 1
            }
        );
    }
}
