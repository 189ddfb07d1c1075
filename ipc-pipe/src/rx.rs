//! The receive path: [`Connection::recv`] and friends, down to waiting for a message (the
//! end's `ipc_sync::Backoff` spin, then futex or fd sleep), copying it out of the incoming ring and freeing the space. The part
//! below `Connection` is generic over the waiter and is what the loom models in `model.rs` run.

use std::ops::Deref;
use std::time::Duration;

#[cfg(not(loom))]
use serde::de::DeserializeOwned;

use ipc_shm::codec::{FrameError, frame_len};
use ipc_sync::{Deadline, WaitOutcome, Waiter};

#[cfg(not(loom))]
use crate::connection::Connection;
use crate::end::{End, Link, SLICE};
use crate::error::Fail;
#[cfg(not(loom))]
use crate::error::{DecodeFail, RecvError, RecvIntoError, RecvTimeoutError, TryRecvError};
use crate::ring::{self, ARMED, Control, Corruption, GONE, HEADER, SLEEP};
use crate::sync::Ordering;
use ipc_shm::ByteRing;

#[cfg(not(loom))]
impl Connection {
    /// Receives the next message and deserialises it as `T`, waiting as long as it takes (or
    /// until the other end is gone: then every message already sent is received first, and
    /// [`RecvError::Disconnected`] follows).
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        Ok(self.recv_value(None, false)??)
    }

    /// Like [`recv`](Connection::recv), but gives up with [`RecvTimeoutError::Timeout`] if no
    /// whole message has arrived within `timeout`. A message that fits in the ring stays in it
    /// until it is complete; one larger than the ring that timed out half-way is kept, as far
    /// as it arrived, in this end, and the next receive resumes it (see the crate docs,
    /// "Limits").
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let (a, _b) = ipc_pipe::pipe()?;
    /// let r = a.recv_timeout::<u32>(Duration::from_millis(10));
    /// assert!(matches!(r, Err(ipc_pipe::RecvTimeoutError::Timeout)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, RecvTimeoutError> {
        Ok(self.recv_value(Some(Deadline::after(timeout)), false)??)
    }

    /// Receives a message if one is waiting whole, without blocking: otherwise
    /// [`TryRecvError::Empty`] (having moved what arrived of a message larger than the ring into
    /// this end, where the next receive resumes it).
    ///
    /// After the readiness fd of this end became readable, call it until it returns
    /// [`TryRecvError::Empty`]: that also re-arms the fd.
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<T, TryRecvError> {
        Ok(self.recv_value(None, true)??)
    }

    /// Like [`recv_bytes`](Connection::recv_bytes), but gives up with
    /// [`RecvTimeoutError::Timeout`] if no whole message has arrived within `timeout` (as
    /// [`recv_timeout`](Connection::recv_timeout)).
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        let mut buf = Vec::new();
        self.end
            .recv_into_vec(&mut buf, Some(Deadline::after(timeout)), false)?;
        Ok(buf)
    }

    /// Receives the next message into `buf` (replacing its contents, keeping its allocation),
    /// waiting at most `timeout` (as [`recv_bytes_timeout`](Connection::recv_bytes_timeout)),
    /// or as long as it takes when `None` (then never [`RecvTimeoutError::Timeout`]). A
    /// receiver of many messages reuses one buffer instead of allocating one per message.
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// let mut buf = Vec::new();
    /// for word in [&b"one"[..], b"three"] {
    ///     a.send_bytes(word)?;
    ///     b.recv_bytes_into_vec(&mut buf, None)?;
    ///     assert_eq!(buf, word);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_bytes_into_vec(
        &self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(), RecvTimeoutError> {
        self.end
            .recv_into_vec(buf, timeout.map(Deadline::after), false)?;
        Ok(())
    }

    /// Receives the next message as bytes (any message: one sent by
    /// [`send_bytes`](Connection::send_bytes) gives back exactly its bytes).
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        let mut buf = Vec::new();
        self.end.recv_into_vec(&mut buf, None, false)?;
        Ok(buf)
    }

    /// Receives the next message into `buf`, returning its length. If `buf` is too short the
    /// message stays in the pipe and [`RecvIntoError::BufferTooSmall`] says how long it is.
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send_bytes(b"hello")?;
    /// let mut small = [0u8; 2];
    /// assert!(matches!(
    ///     b.recv_bytes_into(&mut small),
    ///     Err(ipc_pipe::RecvIntoError::BufferTooSmall { needed: 5 })
    /// ));
    /// let mut buf = [0u8; 64];
    /// let n = b.recv_bytes_into(&mut buf)?;
    /// assert_eq!(&buf[..n], b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvIntoError> {
        if let Some(len) = self.end.finish_partial_into(buf)? {
            return Ok(len);
        }
        let len = self.end.wait_message(None, false)?;
        if len > buf.len() {
            return Err(RecvIntoError::BufferTooSmall { needed: len });
        }
        self.end.read_body(&mut buf[..len])?;
        Ok(len)
    }

    /// The descriptors that came with a message, by the batch id its handles name (the
    /// counterpart of [`send_bytes_with_fds`](Connection::send_bytes_with_fds); `recv` and
    /// friends call it by themselves). Call it after receiving the message's bytes: the
    /// descriptors were queued before the message was published. Batches that came before it
    /// and were never taken are closed; a batch that is not there is
    /// [`TransferError::Missing`](ipc_shm::transfer::TransferError::Missing).
    pub fn take_fds(
        &self,
        batch: u64,
    ) -> Result<ipc_shm::transfer::FdBatch, ipc_shm::transfer::TransferError> {
        self.end.link.take_batch(batch)
    }

    pub(crate) fn recv_value<T: DeserializeOwned>(
        &self,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<Result<T, DecodeFail>, Fail> {
        let mut buf = self.scratch.take();
        let r = self.end.recv_into_vec(&mut buf, deadline, nonblocking);
        let out = r.map(|()| {
            // Handles in the message fetch their descriptors from the socket only if there
            // are any (see `ipc_shm::transfer::decode`).
            let (value, transfer) = ipc_shm::transfer::decode(
                |id| self.take_fds(id),
                || ipc_shm::codec::decode::<T>(&buf),
            );
            match (transfer, value) {
                (Some(e), _) => Err(DecodeFail::Transfer(e)),
                (None, v) => v.map_err(|e| DecodeFail::Decode(e.into())),
            }
        });
        if buf.capacity() <= 1 << 20 {
            self.scratch.set(buf);
        }
        out
    }
}

impl<C, M, W, L> End<C, M, W, L>
where
    C: Deref<Target = Control>,
    M: ByteRing,
    W: Waiter,
    L: Link,
{
    /// Bytes published and unread, reloading the producer's tail only when the cache says fewer
    /// than `need`.
    #[inline]
    pub(crate) fn rx_avail(&self, need: u64) -> Result<u64, Fail> {
        let head = self.rx_head.get();
        let avail = self.rx_tail_cache.get().wrapping_sub(head);
        if avail >= need {
            return Ok(avail);
        }
        let tail = self.rx_ring().tail.load(Ordering::Acquire);
        let avail = ring::validate_avail(tail, head, self.rx.cap())?;
        self.rx_tail_cache.set(tail);
        Ok(avail)
    }

    /// Waits until at least `need` (<= cap) bytes are readable.
    #[inline]
    pub(crate) fn wait_rx(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        let avail = self.rx_avail(need)?;
        if avail >= need {
            return Ok(avail);
        }
        self.wait_rx_slow(need, deadline, nonblocking)
    }

    #[cold]
    pub(crate) fn wait_rx_slow(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        if nonblocking {
            return self.wait_rx_sleep(need, deadline, true);
        }
        self.spin_then_sleep(
            need,
            || self.rx_avail(need),
            || self.wait_rx_sleep(need, deadline, false),
        )
    }

    /// Sleeps until `need` bytes are readable (see [`Connection::wait_rx_slow`]).
    pub(crate) fn wait_rx_sleep(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        let ring = self.rx_ring();
        let fd_mode = self.fd_mode.get();
        // Hang-up of a killed peer costs a system call to check, so it is checked only where it
        // could otherwise go unnoticed: in non-blocking calls, after a futex slice timed out,
        // and when a handle of the peer was dropped (`GONE`). A clean close is a flag (free to
        // read); in fd mode the blocking `poll` reports hang-up itself (`drain` then sees EOF).
        let mut check_hup = nonblocking;
        if nonblocking {
            self.check_owner()?;
        }
        // fd mode: the peer's hang-up as the drain after the last `poll` saw it.
        let mut woke_hung_up = false;
        loop {
            let mut hung_up = woke_hung_up;
            let bits = if fd_mode {
                // A readiness byte can be waiting only if this end armed since it last drained
                // (`End::rx_armed`); a byte that slips in after all (sent for an arm the peer
                // consumed just after our drain) only makes one `poll` return at once, and that
                // loop drains it.
                if self.rx_armed.get() {
                    hung_up |= self.link.drain();
                }
                self.rx_armed.set(true);
                ARMED
            } else if nonblocking {
                0
            } else {
                SLEEP
            };
            let expected = if bits != 0 {
                ring::arm_rx(ring, bits)
            } else {
                ring.rx_wait.load(Ordering::Relaxed)
            };
            let tail = ring::load_tail(ring);
            let head = self.rx_head.get();
            let avail = ring::validate_avail(tail, head, self.rx.cap())?;
            self.rx_tail_cache.set(tail);
            if avail >= need {
                if bits == SLEEP {
                    ring.rx_wait.fetch_and(!SLEEP, Ordering::Relaxed);
                }
                return Ok(avail);
            }
            if hung_up
                || self.closed_flag()
                || ((check_hup || expected & GONE != 0) && self.link.hung_up())
            {
                // Everything the peer published before dying or closing is visible now.
                let tail = ring::load_tail(ring);
                let avail = ring::validate_avail(tail, head, self.rx.cap())?;
                self.rx_tail_cache.set(tail);
                if avail >= need {
                    return Ok(avail);
                }
                return Err(Fail::Disconnected);
            }
            if nonblocking {
                return Err(Fail::Empty);
            }
            let remaining = deadline.map(|d| d.remaining());
            if remaining == Some(Duration::ZERO) {
                if bits == SLEEP {
                    ring.rx_wait.fetch_and(!SLEEP, Ordering::Relaxed);
                }
                return Err(Fail::Timeout);
            }
            if fd_mode {
                self.link.sleep(remaining);
                // Woken (by the peer's byte, a hang-up, a descriptor record or the deadline):
                // drain now and look at the ring before arming again. Woken by the byte, the
                // peer took `ARMED` out of `rx_wait` when it sent it, so the next wait needs
                // no drain: two system calls per sleep (`poll`, this drain), not three.
                woke_hung_up = self.link.drain();
                self.rx_armed.set(false);
                let tail = ring::load_tail(ring);
                let avail = ring::validate_avail(tail, self.rx_head.get(), self.rx.cap())?;
                self.rx_tail_cache.set(tail);
                if avail >= need {
                    return Ok(avail);
                }
            } else {
                let outcome = self.waiter.wait(
                    &ring.rx_wait,
                    expected,
                    Some(Deadline::min_with(deadline, SLICE)),
                );
                check_hup = outcome == WaitOutcome::TimedOut;
                if check_hup {
                    self.check_owner()?;
                }
            }
        }
    }

    /// Publishes the consumer's head and wakes a producer waiting for space: on the futex
    /// (`SLEEP`) or, for an async sender (`ARMED`, see `tx.rs`, `arm_tx_fd`), with a byte to
    /// its readiness fd.
    #[inline]
    pub(crate) fn publish_rx(&self) {
        let bits = ring::publish_head(self.rx_ring(), self.rx_head.get());
        if bits & (SLEEP | ARMED) != 0 {
            self.wake_tx_slow(bits);
        }
    }

    #[cold]
    pub(crate) fn wake_tx_slow(&self, bits: u32) {
        if bits & SLEEP != 0 {
            self.waiter.wake(&self.rx_ring().tx_wait, 1);
        }
        if bits & ARMED != 0 {
            self.link.notify();
        }
    }

    /// Waits for the next message to be ready (its header, and the whole message if it fits in
    /// the ring) and returns its length, without consuming anything.
    pub(crate) fn wait_message(
        &self,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<usize, Fail> {
        self.check_broken()?;
        if let Some(len) = self.peek_partial() {
            // A streamed message has begun (its header is consumed, see `recv_into_vec`).
            return Ok(len);
        }
        self.wait_rx(HEADER as u64, deadline, nonblocking)?;
        let mut h = [0u8; HEADER];
        self.rx.read(self.rx_head.get(), &mut h);
        let len = match frame_len(h, self.settings.max_message) {
            Ok(len) => len as u64,
            Err(FrameError::TooLong { len, max }) => {
                // We cannot tell a real oversized message from garbage: stop reading this
                // stream.
                self.poison(Fail::Corrupted(Corruption {
                    what: "message length (exceeds max_message_size)",
                    value: len,
                }));
                return Err(Fail::TooLarge { len, max });
            }
            Err(_) => {
                // Not a header (a scribbled ring, or a peer of another wire format): the stream
                // has lost its framing.
                return Err(self.poison(Fail::Corrupted(Corruption {
                    what: "frame header",
                    value: u64::from_le_bytes(h),
                })));
            }
        };
        // A message that fits is waited for whole (so `try_recv` and timeouts never stop half-way
        // through one); a larger one is streamed from its first bytes.
        let whole = HEADER as u64 + len;
        if whole <= self.rx.cap() as u64 {
            self.wait_rx(whole, deadline, nonblocking)?;
        }
        Ok(len as usize)
    }

    /// Consumes the message whose length `wait_message` returned, into `dst` (of that length).
    pub(crate) fn read_body(&self, dst: &mut [u8]) -> Result<(), Fail> {
        let mut head = self.rx_head.get().wrapping_add(HEADER as u64);
        self.rx_head.set(head);
        let mut dst = dst;
        while !dst.is_empty() {
            let mut avail = self.rx_tail_cache.get().wrapping_sub(head);
            if avail == 0 {
                self.publish_rx();
                avail = self.wait_rx(1, None, false).map_err(|f| self.poison(f))?;
            }
            let n = dst.len().min(avail as usize).min(self.rx.cap());
            let (now, rest) = dst.split_at_mut(n);
            self.rx.read(head, now);
            head = head.wrapping_add(n as u64);
            self.rx_head.set(head);
            dst = rest;
            if !dst.is_empty() {
                self.publish_rx();
            }
        }
        self.publish_rx();
        Ok(())
    }

    /// Receives the next message into `buf`, honouring `deadline` (or not waiting at all when
    /// `nonblocking`) at every wait, the body's included.
    ///
    /// A message that fits in the ring is consumed only once it is all there: a `Timeout` or
    /// `Empty` leaves it (header and all) in the ring. A message larger than the ring cannot wait
    /// there whole (the sender needs the space to go on), so once it has begun it is consumed as
    /// it arrives into `buf`; a `Timeout` or `Empty` in the middle moves what arrived so far into
    /// the end's `partial` state, and the next receive of any kind resumes it. Nothing is handed
    /// out before the message is complete (never a torn message) and the framing is kept.
    pub(crate) fn recv_into_vec(
        &self,
        buf: &mut Vec<u8>,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<(), Fail> {
        self.check_broken()?;
        if let Some((mut got, len)) = self.partial.take() {
            return match self.stream_rest(&mut got, len, deadline, nonblocking) {
                Ok(()) => {
                    *buf = got;
                    Ok(())
                }
                Err(f) => Err(self.keep_partial(got, len, f)),
            };
        }
        let len = self.wait_message(deadline, nonblocking)?;
        buf.clear();
        if HEADER + len <= self.rx.cap() {
            // All there (`wait_message` waited for the whole frame): no wait below.
            buf.resize(len, 0);
            return self.read_body(buf);
        }
        // Streamed: consume the header, then the body as it arrives.
        self.rx_head
            .set(self.rx_head.get().wrapping_add(HEADER as u64));
        buf.reserve_exact(len);
        match self.stream_rest(buf, len, deadline, nonblocking) {
            Ok(()) => Ok(()),
            Err(f) => Err(self.keep_partial(std::mem::take(buf), len, f)),
        }
    }

    /// Appends the body of a streamed message to `got` until it holds `len` bytes, waiting at
    /// most until `deadline` (not at all when `nonblocking`) whenever the ring is empty.
    fn stream_rest(
        &self,
        got: &mut Vec<u8>,
        len: usize,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<(), Fail> {
        let mut head = self.rx_head.get();
        while got.len() < len {
            let mut avail = self.rx_tail_cache.get().wrapping_sub(head);
            if avail == 0 {
                // Free what we copied before waiting: the sender needs the space to go on.
                self.publish_rx();
                avail = self.wait_rx(1, deadline, nonblocking)?;
            }
            let n = (len - got.len()).min(avail as usize).min(self.rx.cap());
            self.rx.append(head, n, got);
            head = head.wrapping_add(n as u64);
            self.rx_head.set(head);
        }
        self.publish_rx();
        Ok(())
    }

    /// After a streamed receive stopped with `f`: a deadline (`Timeout`) or an empty ring
    /// (`Empty`) keeps the message received so far for the next receive; anything else breaks
    /// the stream (the message was cut short by the peer's death, or the ring is corrupt).
    fn keep_partial(&self, got: Vec<u8>, len: usize, f: Fail) -> Fail {
        match f {
            Fail::Timeout | Fail::Empty => {
                self.publish_rx();
                *self.partial.borrow_mut() = Some((got, len));
                f
            }
            f => self.poison(f),
        }
    }

    /// The announced length of a streamed message in progress, if there is one.
    fn peek_partial(&self) -> Option<usize> {
        self.partial.borrow().as_ref().map(|(_, len)| *len)
    }

    /// `recv_bytes_into` over a streamed message in progress: completes it (blocking), then
    /// copies it into `buf`, or keeps it and reports `BufferTooSmall` (as `Ok(None)` is "no
    /// message in progress").
    #[cfg(not(loom))]
    pub(crate) fn finish_partial_into(
        &self,
        buf: &mut [u8],
    ) -> Result<Option<usize>, RecvIntoError> {
        let Some((mut got, len)) = self.partial.take() else {
            return Ok(None);
        };
        if let Err(f) = self.stream_rest(&mut got, len, None, false) {
            return Err(self.keep_partial(got, len, f).into());
        }
        if len > buf.len() {
            *self.partial.borrow_mut() = Some((got, len));
            return Err(RecvIntoError::BufferTooSmall { needed: len });
        }
        buf[..len].copy_from_slice(&got);
        Ok(Some(len))
    }
}
