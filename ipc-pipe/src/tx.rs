//! The send path: [`Connection::send`], [`Connection::send_bytes`] and
//! [`Connection::send_bytes_quiet`], down to framing, streaming into the outgoing ring, waiting
//! for space (spin, then futex sleep in slices) and waking the receiver. The part below
//! `Connection` is generic over the waiter and is what the loom models in `model.rs` run.

use std::ops::Deref;
use std::time::Duration;
#[cfg(not(loom))]
use std::time::Instant;

#[cfg(not(loom))]
use ipc_shm::transfer::{self, FdBatch, TransferError};
#[cfg(not(loom))]
use serde::Serialize;

use ipc_shm::codec::FrameHeader;
use ipc_sync::{Deadline, WaitOutcome, Waiter};

#[cfg(not(loom))]
use crate::connection::Connection;
use crate::end::{End, Link, SLICE};
use crate::error::{Fail, SendError};
#[cfg(not(loom))]
use crate::error::{SendTimeoutError, TrySendError};
use crate::ring::{self, ARMED, Control, GONE, HEADER, SLEEP};
use crate::sync::Ordering;
use ipc_shm::ByteRing;

#[cfg(not(loom))]
impl Connection {
    /// Sends `value`, encoded with bincode, waiting as long as it takes for room in the ring
    /// for the message (a message larger than the ring is streamed as the receiver reads it).
    ///
    /// Fails with [`SendError::Disconnected`] if the other end is known to be gone: closed or
    /// dropped everywhere (checked on every send: a load of the peer's drop counter, and one
    /// `poll(2)` of the socket when it changed), or dead (checked whenever this send has to
    /// wait; a send into a ring with room to a peer that was just killed succeeds, and the
    /// message is lost with the peer, as with a socket). Blocks while the ring is full; see
    /// [`send_timeout`](Connection::send_timeout) and [`try_send`](Connection::try_send).
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct Job { id: u64, name: String }
    ///
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send(&Job { id: 7, name: "resize".into() })?;
    /// assert_eq!(b.recv::<Job>()?, Job { id: 7, name: "resize".into() });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// `value` is a message or a reference to one (serde implements `Serialize` for `&T`), so
    /// `send(&job)` and `send(job)` both work, as `Queue::put` takes a `T` or a `&T`:
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send((1u32, "by value"))?;
    /// let text = String::from("by reference");
    /// a.send(&text)?;
    /// a.send("a str")?;
    /// assert_eq!(b.recv::<(u32, String)>()?, (1, "by value".to_string()));
    /// assert_eq!(b.recv::<String>()?, text);
    /// assert_eq!(b.recv::<String>()?, "a str");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send<M: Serialize>(&self, value: M) -> Result<(), SendError> {
        let mut buf = self.scratch.take();
        buf.clear();
        let (encoded, batch) = self.encode_message(&value, &mut buf);
        let result = match encoded {
            Ok(()) => match self.end.check_send_len(buf.len()) {
                Ok(head) => self
                    .send_batch(&batch, None)
                    .map_err(|e| e.unwrap_or(SendError::Disconnected))
                    .and_then(|()| self.end.send_frame(head, &[&buf], false)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if buf.capacity() <= 1 << 20 {
            self.scratch.set(buf);
        }
        result
    }

    /// Sends `bytes` as one message (received whole by [`recv_bytes`](Connection::recv_bytes)).
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// // Larger than the ring: streamed while the receiver (here a thread) reads it.
    /// let reader = std::thread::spawn(move || b.recv_bytes().map(|m| m.len()));
    /// a.send_bytes(&[7u8; 1_000_000])?;
    /// assert_eq!(reader.join().unwrap()?, 1_000_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        let head = self.end.check_send_len(bytes.len())?;
        self.end.send_frame(head, &[bytes], false)
    }

    /// Sends the concatenation of `parts` as one message (received whole by
    /// [`recv_bytes`](Connection::recv_bytes), as if sent by `send_bytes(&parts.concat())`),
    /// without copying the parts together first: each is copied once, straight into the ring.
    /// For a small header in front of a large payload built elsewhere.
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// let payload = vec![9u8; 100_000];
    /// let reader = std::thread::spawn(move || b.recv_bytes());
    /// a.send_bytes_vectored(&[b"head:", &payload])?;
    /// let got = reader.join().unwrap()?;
    /// assert_eq!(&got[..5], b"head:");
    /// assert_eq!(got.len(), 5 + payload.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes_vectored(&self, parts: &[&[u8]]) -> Result<(), SendError> {
        let head = self.end.check_send_len(vectored_len(parts))?;
        self.end.send_frame(head, parts, false)
    }

    /// [`send_bytes_vectored`](Connection::send_bytes_vectored) that does not wake a sleeping
    /// receiver, as [`send_bytes_quiet`](Connection::send_bytes_quiet).
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send_bytes_vectored_quiet(&[b"par", b"tial"])?;
    /// a.send_bytes(b"done")?;
    /// assert_eq!(b.recv_bytes()?, b"partial");
    /// assert_eq!(b.recv_bytes()?, b"done");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes_vectored_quiet(&self, parts: &[&[u8]]) -> Result<(), SendError> {
        let head = self.end.check_send_len(vectored_len(parts))?;
        self.end.send_frame(head, parts, true)
    }

    /// Like [`send_bytes`](Connection::send_bytes), but does not wake a receiver that sleeps:
    /// the message is in the pipe (the receiver finds it at its next wake-up, and it survives
    /// this process's death like any sent message), and the next ordinary send wakes the
    /// receiver. A receiver is still woken if the ring is more than half full. For progress
    /// reports that must not be lost but need no attention yet: a message costs a copy, not a
    /// wake-up.
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send_bytes_quiet(b"partial")?;
    /// a.send_bytes(b"done")?; // wakes the receiver, which then finds both
    /// assert_eq!(b.recv_bytes()?, b"partial");
    /// assert_eq!(b.recv_bytes()?, b"done");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes_quiet(&self, bytes: &[u8]) -> Result<(), SendError> {
        let head = self.end.check_send_len(bytes.len())?;
        self.end.send_frame(head, &[bytes], true)
    }

    /// Sends `value` if the whole message fits in the outgoing ring now, without waiting:
    /// [`TrySendError::Full`] (with the value) when the ring has no room for it, and nothing
    /// of it was written. A message larger than the ring is refused with
    /// [`SendError::LargerThanRing`] (only the blocking [`send`](Connection::send) streams).
    /// `value` may be a reference (`&T` is `Serialize`).
    ///
    /// ```
    /// let (a, b) = ipc_pipe::PipeBuilder::new().capacity(64).duplex()?;
    /// a.try_send(&[1u8; 32])?;
    /// let back = a.try_send(&[2u8; 32]).unwrap_err();
    /// assert!(matches!(back, ipc_pipe::TrySendError::Full(_)));
    /// assert_eq!(b.recv::<[u8; 32]>()?, [1u8; 32]);
    /// a.try_send(back.into_inner())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_send<T: Serialize>(&self, value: T) -> Result<(), TrySendError<T>> {
        match self.send_value_within(&value, None, true) {
            Ok(()) => Ok(()),
            Err(None) => Err(TrySendError::Full(value)),
            Err(Some(error)) => Err(TrySendError::Failed { error, value }),
        }
    }

    /// Sends `value`, waiting at most `timeout` for room for the whole message:
    /// [`SendTimeoutError::Timeout`] (with the value) when the peer does not free enough of
    /// the ring in time (it is alive but not reading), and nothing of the message was written.
    /// A message larger than the ring is refused with [`SendError::LargerThanRing`] (a
    /// streamed message cannot be abandoned half-way without breaking the stream).
    pub fn send_timeout<T: Serialize>(
        &self,
        value: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        match self.send_value_within(&value, Some(Deadline::after(timeout)), false) {
            Ok(()) => Ok(()),
            Err(None) => Err(SendTimeoutError::Timeout(value)),
            Err(Some(error)) => Err(SendTimeoutError::Failed { error, value }),
        }
    }

    /// [`try_send`](Connection::try_send) for raw bytes (received by
    /// [`recv_bytes`](Connection::recv_bytes)).
    pub fn try_send_bytes<'a>(&self, bytes: &'a [u8]) -> Result<(), TrySendError<&'a [u8]>> {
        match self.send_bytes_within(bytes, None, true) {
            Ok(()) => Ok(()),
            Err(None) => Err(TrySendError::Full(bytes)),
            Err(Some(error)) => Err(TrySendError::Failed {
                error,
                value: bytes,
            }),
        }
    }

    /// [`send_timeout`](Connection::send_timeout) for raw bytes.
    pub fn send_bytes_timeout<'a>(
        &self,
        bytes: &'a [u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<&'a [u8]>> {
        match self.send_bytes_within(bytes, Some(Deadline::after(timeout)), false) {
            Ok(()) => Ok(()),
            Err(None) => Err(SendTimeoutError::Timeout(bytes)),
            Err(Some(error)) => Err(SendTimeoutError::Failed {
                error,
                value: bytes,
            }),
        }
    }

    /// Encodes `value` and sends it with [`send_bytes_within`](Connection::send_bytes_within).
    fn send_value_within<T: Serialize>(
        &self,
        value: &T,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<(), Option<SendError>> {
        let mut buf = self.scratch.take();
        buf.clear();
        let (encoded, batch) = self.encode_message(&value, &mut buf);
        let result = match encoded {
            Ok(()) => self
                .send_batch(&batch, deadline.map(|d| Instant::now() + d.remaining()))
                .and_then(|()| self.send_bytes_within(&buf, deadline, nonblocking)),
            Err(e) => Err(Some(e)),
        };
        if buf.capacity() <= 1 << 20 {
            self.scratch.set(buf);
        }
        result
    }

    /// The timed and non-blocking send: `Err(None)` is "no room in time" (nothing written).
    fn send_bytes_within(
        &self,
        bytes: &[u8],
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<(), Option<SendError>> {
        let head = self.end.check_send_len(bytes.len())?;
        let capacity = self.end.tx.cap();
        if HEADER + bytes.len() > capacity {
            return Err(Some(SendError::LargerThanRing {
                len: bytes.len(),
                capacity,
            }));
        }
        match self
            .end
            .send_frame_within(head, bytes, deadline, nonblocking)
        {
            Ok(()) => Ok(()),
            Err(Fail::Timeout | Fail::Empty) => Err(None),
            Err(f) => Err(Some(f.into())),
        }
    }

    /// Encodes `value` into `buf` in a transfer context over this pipe (see
    /// [`ipc_shm::transfer`]): handles in it put their descriptors into the returned batch.
    fn encode_message<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
    ) -> (Result<(), SendError>, FdBatch) {
        let (encoded, batch, transfer) = transfer::encode_over(self.channel_id(), || {
            ipc_shm::codec::encode_into(value, buf)
        });
        let result = match (transfer, encoded) {
            (Some(e), _) => Err(SendError::Transfer(e)),
            (None, Ok(())) => Ok(()),
            (None, Err(ipc_shm::codec::EncodeError::TooLong { len, .. })) => {
                Err(SendError::TooLarge {
                    len,
                    max: self.end.settings.max_message,
                })
            }
            (None, Err(e)) => Err(SendError::Encode(e.into())),
        };
        (result, batch)
    }

    /// Sends the descriptors of `batch` (nothing for an empty one) ahead of its message (see
    /// the "Descriptor records" of `os.rs`). `Err(None)`: no room before `deadline`.
    fn send_batch(
        &self,
        batch: &FdBatch,
        deadline: Option<Instant>,
    ) -> Result<(), Option<SendError>> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.end.closed_flag() || self.end.peer_dropped() {
            return Err(Some(SendError::Disconnected));
        }
        self.end
            .link
            .send_batch(batch, deadline)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => None,
                std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::NotConnected => Some(SendError::Disconnected),
                _ => Some(SendError::Transfer(TransferError::Recv(e))),
            })
    }

    /// Sends `bytes` as one message, with the descriptors of `fds` ahead of it, for a protocol
    /// that encodes its own messages in a transfer context ([`ipc_shm::transfer::encode`]) and
    /// keeps the batch (the pool does, to resend a task's arguments to another worker). The
    /// receiver gets the bytes from [`recv_bytes`](Connection::recv_bytes) and the
    /// descriptors from [`take_fds`](Connection::take_fds) with the batch's id. An empty batch
    /// sends nothing extra.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use ipc_shm::{SharedValue, transfer};
    ///
    /// let (a, b) = ipc_pipe::pipe()?;
    /// let flag = SharedValue::<AtomicU32>::new_anonymous()?;
    /// let (bytes, batch, _) = transfer::encode(|| ipc_shm::codec::encode(&flag));
    /// a.send_bytes_with_fds(&bytes?, &batch)?;
    ///
    /// let bytes = b.recv_bytes()?;
    /// let fds = b.take_fds(batch.id())?;
    /// let (got, _) = transfer::decode_with(Some(fds), || {
    ///     ipc_shm::codec::decode::<SharedValue<AtomicU32>>(&bytes)
    /// });
    /// got?.store(7, Ordering::Relaxed);
    /// assert_eq!(flag.load(Ordering::Relaxed), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes_with_fds(&self, bytes: &[u8], fds: &FdBatch) -> Result<(), SendError> {
        let head = self.end.check_send_len(bytes.len())?;
        self.send_batch(fds, None)
            .map_err(|e| e.unwrap_or(SendError::Disconnected))?;
        self.end.send_frame(head, &[bytes], false)
    }

    /// Test hook (only with the `test-support` feature, which the crate's own tests enable):
    /// sends `bytes` as they are, without a frame header, through the real producer path, as a
    /// buggy or hostile peer could (garbage, forged or oversized headers).
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn __send_raw(&self, bytes: &[u8]) -> Result<(), SendError> {
        if self.end.closed_flag() {
            return Err(SendError::Disconnected);
        }
        self.end.write_stream(bytes)?;
        self.end.publish_tx();
        Ok(())
    }
}

impl<C, M, W, L> End<C, M, W, L>
where
    C: Deref<Target = Control>,
    M: ByteRing,
    W: Waiter,
    L: Link,
{
    #[inline]
    pub(crate) fn publish_tx(&self) {
        let bits = ring::publish_tail(self.tx_ring(), self.tx_tail.get());
        if bits & (SLEEP | ARMED) != 0 {
            self.wake_rx_slow(bits);
        }
    }

    /// Publishes the tail without waking a sleeping consumer, unless the ring is more than
    /// half full (a consumer left asleep must never leave the producer waiting for space).
    ///
    /// The fill is judged by the consumer's head as last read, which only grows stale (too
    /// full); past half it is read afresh before the consumer is woken for it. Without that
    /// re-read, a producer whose sends all fit never reloads the head (`tx_free` does only
    /// when short of room), and once the stale fill passed half every quiet send woke the
    /// consumer: a CPU-bound map's driver was woken after about every other task report,
    /// preempting the other worker (thousands of wake-ups per second per driver).
    #[inline]
    pub(crate) fn publish_tx_quiet(&self) {
        let tail = self.tx_tail.get();
        let half = self.tx.cap() as u64 / 2;
        if tail.wrapping_sub(self.tx_head_cache.get()) > half && self.tx_fill_fresh(tail) > half {
            self.publish_tx();
        } else {
            ring::publish_tail_quiet(self.tx_ring(), tail);
        }
    }

    /// The outgoing ring's fill up to `tail` by the consumer's head read now (cached for the
    /// next sends). A head the ring cannot hold counts as full, which wakes the consumer (its
    /// receive reports the corruption).
    #[cold]
    fn tx_fill_fresh(&self, tail: u64) -> u64 {
        let head = self.tx_ring().head.load(Ordering::Acquire);
        match ring::validate_used(tail, head, self.tx.cap()) {
            Ok(used) => {
                self.tx_head_cache.set(head);
                used
            }
            Err(_) => u64::MAX,
        }
    }

    #[cold]
    pub(crate) fn wake_rx_slow(&self, bits: u32) {
        if bits & SLEEP != 0 {
            self.waiter.wake(&self.tx_ring().rx_wait, 1);
        }
        if bits & ARMED != 0 {
            self.link.notify();
        }
    }

    /// Free bytes in the outgoing ring, reloading the consumer's head only when needed.
    #[inline]
    pub(crate) fn tx_free(&self, need: u64) -> Result<u64, Fail> {
        let cap = self.tx.cap() as u64;
        let tail = self.tx_tail.get();
        let free = cap - tail.wrapping_sub(self.tx_head_cache.get());
        if free >= need {
            return Ok(free);
        }
        let head = self.tx_ring().head.load(Ordering::Acquire);
        let used = ring::validate_used(tail, head, self.tx.cap())?;
        self.tx_head_cache.set(head);
        Ok(cap - used)
    }

    /// Waits until at least `need` bytes are free (spinning, then sleeping in slices), until
    /// `deadline` (`Fail::Timeout`), or not at all when `nonblocking` (`Fail::Empty`: no room).
    #[cold]
    pub(crate) fn wait_tx_slow(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        if nonblocking {
            return self.wait_tx_sleep(need, None, true);
        }
        self.spin_then_sleep(
            need,
            || self.tx_free(need),
            || self.wait_tx_sleep(need, deadline, false),
        )
    }

    /// Sleeps until at least `need` bytes are free (futex slices with hang-up checks), or
    /// `deadline`; with `nonblocking`, checks once (hang-up included) and does not sleep.
    fn wait_tx_sleep(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        let ring = self.tx_ring();
        // As in `wait_rx_slow`: the hang-up system call only after a slice timed out, when
        // a handle of the peer was dropped, or in a non-blocking call that found no room.
        let mut check_hup = nonblocking;
        loop {
            let expected = if nonblocking {
                ring.tx_wait.load(Ordering::Relaxed)
            } else {
                ring::arm_tx(ring)
            };
            let head = ring::load_head(ring);
            let tail = self.tx_tail.get();
            let used = ring::validate_used(tail, head, self.tx.cap())?;
            self.tx_head_cache.set(head);
            let free = self.tx.cap() as u64 - used;
            if free >= need {
                if !nonblocking {
                    ring.tx_wait.fetch_and(!SLEEP, Ordering::Relaxed);
                }
                return Ok(free);
            }
            if self.closed_flag() || ((check_hup || expected & GONE != 0) && self.link.hung_up()) {
                return Err(Fail::Disconnected);
            }
            if nonblocking {
                return Err(Fail::Empty);
            }
            let remaining = deadline.map(|d| d.remaining());
            if remaining == Some(Duration::ZERO) {
                ring.tx_wait.fetch_and(!SLEEP, Ordering::Relaxed);
                // A peer killed within the last slice is `Disconnected`, not a slow reader.
                if self.link.hung_up() {
                    return Err(Fail::Disconnected);
                }
                return Err(Fail::Timeout);
            }
            let outcome = self.waiter.wait(
                &ring.tx_wait,
                expected,
                Some(Deadline::min_with(deadline, SLICE)),
            );
            check_hup = outcome == WaitOutcome::TimedOut;
            if check_hup {
                self.check_owner()?;
            }
        }
    }

    /// The async sender's wait for room (fd mode, `async_io.rs`): drains this end's readiness
    /// socket, sets `ARMED` in the outgoing ring's `tx_wait` (so the consumer's next
    /// `publish_rx` writes a byte to that socket) and re-checks the free space, as
    /// `wait_tx_sleep` does with `SLEEP` before a futex wait (the same "Memory ordering"
    /// argument of `ring.rs`: an RMW of the wait word, then an `Acquire` load of `head`).
    /// `Ok(true)`: `need` bytes are free now; `Ok(false)`: armed, await the readiness fd;
    /// `Disconnected` when the peer hung up or closed (one `poll(2)`: the ring is full, so
    /// this is the slow path anyway).
    #[cfg(any(feature = "tokio", loom))]
    pub(crate) fn arm_tx_fd(&self, need: u64) -> Result<bool, Fail> {
        let ring = self.tx_ring();
        let hung_up = self.link.drain();
        ring.tx_wait.fetch_or(ARMED, Ordering::AcqRel);
        let head = ring::load_head(ring);
        let used = ring::validate_used(self.tx_tail.get(), head, self.tx.cap())?;
        self.tx_head_cache.set(head);
        if self.tx.cap() as u64 - used >= need {
            return Ok(true);
        }
        if hung_up || self.closed_flag() || self.link.hung_up() {
            return Err(Fail::Disconnected);
        }
        Ok(false)
    }

    /// Copies `data` into the outgoing ring, streaming it through when it is larger than the
    /// free space (publishing each chunk so the consumer can start on it).
    pub(crate) fn write_stream(&self, mut data: &[u8]) -> Result<(), Fail> {
        let cap = self.tx.cap();
        // Publish every 1/16 of the ring (at most 64 KiB): the consumer copies out one chunk
        // while the producer copies in the next, and both stay in cache (measured: 16 KiB
        // chunks of a 256 KiB ring were ~1.5x faster than 64 KiB ones for 1 MiB messages).
        let chunk = (cap / 16).clamp(HEADER, 64 * 1024);
        while !data.is_empty() {
            let want = data.len().min(chunk) as u64;
            let mut free = self.tx_free(want)?;
            if free < want {
                self.publish_tx();
                free = self.wait_tx_slow(want, None, false)?;
            }
            let n = data.len().min(free as usize).min(cap);
            let tail = self.tx_tail.get();
            self.tx.write(tail, &data[..n]);
            self.tx_tail.set(tail.wrapping_add(n as u64));
            data = &data[n..];
            if !data.is_empty() && n >= chunk {
                self.publish_tx();
            }
        }
        Ok(())
    }

    /// Sends one frame: the header `head` (of the parts' total length), then the parts of its
    /// body in order.
    pub(crate) fn send_frame(
        &self,
        head: [u8; HEADER],
        parts: &[&[u8]],
        quiet: bool,
    ) -> Result<(), SendError> {
        if self.closed_flag() || self.peer_dropped() {
            return Err(SendError::Disconnected);
        }
        self.write_stream(&head)?;
        for part in parts {
            self.write_stream(part)?;
        }
        if quiet {
            self.publish_tx_quiet();
        } else {
            self.publish_tx();
        }
        Ok(())
    }

    /// Sends one frame only if it can be written whole without waiting past `deadline` (or at
    /// all, when `nonblocking`): waits for room for the whole frame first, so a `Timeout` or
    /// `Empty` (no room) leaves nothing of it in the ring. The caller checked that the frame
    /// fits in the ring.
    pub(crate) fn send_frame_within(
        &self,
        head: [u8; HEADER],
        body: &[u8],
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<(), Fail> {
        if self.closed_flag() || self.peer_dropped() {
            return Err(Fail::Disconnected);
        }
        let whole = (HEADER + body.len()) as u64;
        if self.tx_free(whole)? < whole {
            self.publish_tx();
            self.wait_tx_slow(whole, deadline, nonblocking)?;
        }
        // Room for all of it: neither write waits.
        self.write_stream(&head)?;
        self.write_stream(body)?;
        self.publish_tx();
        Ok(())
    }

    /// The frame header of a message of `len` bytes, if this end may send one that long (at
    /// most `max_message_size`, itself at most the codec's `MAX_FRAME_LEN`).
    pub(crate) fn check_send_len(&self, len: usize) -> Result<[u8; HEADER], SendError> {
        let max = self.settings.max_message;
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        FrameHeader::new(len)
            .map(FrameHeader::to_bytes)
            .map_err(|_| SendError::TooLarge { len, max })
    }
}

/// The length of the message made of `parts` (saturating: an impossible length is refused as
/// too large).
#[inline]
fn vectored_len(parts: &[&[u8]]) -> usize {
    parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()))
}
