//! The queue's algorithm: a byte ring with two robust locks and two commit words.
//!
//! # Layout
//!
//! One segment holds a [`Control`] block (see [`crate::control`]) and then a ring of `cap` bytes
//! (`cap` a power of two, an [`ipc_shm::ShmRing`]). Messages are *frames* in
//! [`ipc_shm::codec`]'s format: an 8-byte [`FrameHeader`] (`len: u32` little-endian, then a check
//! word) and `len` payload bytes, padded with zeros to a multiple of 8 ([`padded_frame_len`]). A
//! frame may wrap around the end of the ring; its header never does (positions are multiples of 8
//! and `cap` is too).
//!
//! The queue's whole state is two 64-bit *commit words*:
//!
//! - `tail = (items put) << 32 | (bytes put)` — written only by the holder of the put lock;
//! - `head = (items got) << 32 | (bytes got)` — written only by the holder of the get lock.
//!
//! Both halves count modulo 2^32; a position modulo `cap` is a ring offset. The ring holds
//! `tail.bytes - head.bytes` bytes in `tail.items - head.items` frames, starting at `head`.
//!
//! # Operations
//!
//! - **put** (one frame or a batch): encode outside any lock; take the put lock; check that the
//!   queue is open, that the frames fit (bytes and, with a maximum, items); copy them to the ring
//!   at `tail`; *then* publish them all at once with one release store of `tail`; unlock; notify
//!   the `data` event count (a system call only if a getter is registered). A large message
//!   ([`Src::Write`]) is measured outside the lock and serialised straight into the ring at
//!   `tail` under it instead of being copied from a buffer; the rest is the same.
//! - **get** (one frame or up to N): take the get lock; read `tail`; validate each header
//!   between `head` and `tail`; copy the frames out to a private buffer; *then* remove them
//!   with one release store of `head`; unlock; notify the `space` event count; decode outside
//!   the lock. A run of large messages ([`Sink::Split`]) is instead deserialised straight from
//!   the ring under the lock, each header read again just before (it is validated again, and a
//!   header that changed in between, which only a process breaking the protocol can cause, ends
//!   the run there); the rest is the same.
//!
//! Producers serialise among themselves and consumers among themselves, but a producer and a
//! consumer never wait for each other's lock: they touch disjoint bytes, so a 64 KiB message
//! is copied in by one process while another copies a different one out.
//!
//! # State table and process death
//!
//! A frame is in exactly one of these states, and every transition is one atomic store made by
//! the holder of a lock:
//!
//! | state | bytes | who may touch them | entered by | a death here means |
//! |---|---|---|---|---|
//! | free | beyond `tail` (up to `head + cap`) | the put-lock holder, writing | a consumer's `head` store | nothing: the space is free |
//! | being written | `tail ..` written, `tail` not yet moved | the put-lock holder | a producer copying or serialising in place | the lock reports `OwnerDied`; `tail` never moved, so the partial frame is free space again and is overwritten by the next put; the message was never acknowledged (its `put` had not returned) |
//! | committed | `head .. tail` | the get-lock holder, reading | the producer's `tail` store | nothing: it stays until got |
//! | being read | `head ..` copied out, `head` not yet moved | the get-lock holder | a consumer copying or deserialising in place | `OwnerDied`; `head` never moved, so the message is still queued and the next consumer gets it |
//! | delivered | behind `head` | nobody | the consumer's `head` store | a consumer killed after this store and before `get` returns has taken the message with it, exactly as if it had been killed just after `get` returned |
//!
//! So the recovery after `OwnerDied` is empty: the commit words are single atomic stores and are
//! therefore always consistent; the new holder just marks the lock consistent. No message is
//! ever half-written in `head .. tail`, no message is delivered twice (only the `head` store
//! removes it, under the lock), and none from a live producer is lost (only the get-lock holder
//! moves `head`, and only past frames it copied). Per-producer FIFO: one producer's puts commit in
//! program order under the put lock, and the ring is read in commit order.
//!
//! Every value read from shared memory is validated before use ([`Snapshot::new`], the header
//! check in `Core::try_pop` through [`codec::frame_len`]): a scribbled commit word or header is
//! [`Fail::Corrupted`], never an out-of-bounds copy or a panic.
//!
//! # Sleeping
//!
//! Three waits, each on an [`EventCount`] of the control block, each with the same shape: spin
//! through the handle's [`Backoff`] (a time budget that adapts to how long the other side
//! takes), then `listen`, re-check the condition, `wait_with`, and feed the wait's duration back
//! to the backoff (`slept`):
//!
//! | who waits | for | event count | notified by |
//! |---|---|---|---|
//! | getter | `tail` moved past `head`, or `closed` | `put.data` | every put, after its `tail` store; `close` |
//! | putter | room for its first frame (and an item slot), or `closed` | `get.space` | every get, after its `head` store; `close` |
//! | joiner | `done == tail.items` | `join.all_done` | the `task_done` that finishes the last task |
//!
//! A notify with nobody registered is one atomic read-modify-write, so an uncontended put or get
//! makes no system call. A waiter killed while asleep leaves a registration that the next notify
//! clears (`ipc_sync::eventcount`, "A waiter's death").
//!
//! # Memory ordering
//!
//! - The `tail` store is `Release` and consumers load it with `Acquire`: a consumer that sees a
//!   frame committed sees all its bytes. Symmetrically the `head` store is `Release` and
//!   producers load `head` with `Acquire`: a producer reuses space only after the consumer's
//!   copy-out of it happened-before.
//! - The lock orders the commit words among holders of the same side (a new holder, also after
//!   `OwnerDied`, sees the last holder's store).
//! - Sleep and wake-up: "store the commit word, then notify" against "listen, then re-check the
//!   commit word" is the event count's protocol, whose ordering argument is in
//!   `ipc_sync::eventcount` ("Memory ordering"); nothing here adds to it. The conditions are
//!   re-checked with `Acquire` loads of the words the notifier stored with `Release`.
//! - `close` stores `closed` with `Release` while holding the put lock; a getter that loads it
//!   with `Acquire` and then finds the ring empty knows every put committed before the close is
//!   visible, so "closed and empty" is final.

use ipc_shm::ByteRing;
use ipc_shm::codec::{self, FRAME_ALIGN, FrameHeader, HEADER_LEN, MAX_FRAME_LEN, padded_frame_len};
use ipc_sync::{
    Backoff, Deadline, EventCount, EventWait, LockFail, RawGuard, RawLock, SharedLock, Waiter,
};

use crate::control::Control;
use crate::sync::Ordering;

/// The size of a frame header.
pub(crate) const HDR: usize = HEADER_LEN;
/// Frames start at multiples of this.
const ALIGN: usize = FRAME_ALIGN;
/// The largest ring.
pub(crate) const MAX_CAP: usize = 1 << 30;
/// The smallest ring.
pub(crate) const MIN_CAP: usize = 64;
// Every message that fits in a ring fits in a frame, so `header` never falls back.
const _: () = assert!(MAX_CAP - HDR <= MAX_FRAME_LEN);

/// The ring room a frame carrying `len` payload bytes takes.
#[inline]
pub(crate) const fn frame_len(len: usize) -> usize {
    padded_frame_len(len)
}

/// The header of a frame carrying `len` bytes. Callers checked that the frame fits in the ring,
/// so `len <= MAX_CAP - HDR <= MAX_FRAME_LEN` (asserted above); the all-zero fallback would be
/// rejected by every reader as a bad check word, never taken as a length.
#[inline]
fn header(len: usize) -> [u8; HDR] {
    FrameHeader::new(len).map_or([0; HDR], FrameHeader::to_bytes)
}

/// How long a try-operation waits for a lock held by a live process before it reports the
/// queue as corrupted (a healthy holder keeps a lock only for one copy): 2 s. Under loom, the
/// model lock has no clock: no limit.
fn try_lock_deadline() -> Option<Deadline> {
    #[cfg(not(loom))]
    return Some(Deadline::after(std::time::Duration::from_secs(2)));
    #[cfg(loom)]
    return None;
}

/// Why an operation of the core did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// No room (try-put).
    Full,
    /// Nothing queued (try-get).
    Empty,
    /// The queue is closed (put), or closed and drained (get).
    Closed,
    /// The deadline passed.
    Timeout,
    /// The message can never fit.
    TooLarge,
    /// The caller's buffer is smaller than the next message (its length).
    BufferTooSmall(usize),
    /// Shared memory holds an impossible value.
    Corrupted(&'static str),
    /// A lock holder died and the lock was left unrecoverable.
    Broken,
    /// `task_done` called more often than items were put.
    NoUnfinished,
    /// A [`Src::Write`] writer failed (its caller holds the reason); nothing was put.
    Refused,
}

impl From<LockFail> for Fail {
    fn from(e: LockFail) -> Fail {
        match e {
            LockFail::Timeout => Fail::Timeout,
            // `NotRecoverable`, and any failure a later ipc-sync adds: the lock is unusable.
            _ => Fail::Broken,
        }
    }
}

/// How long an operation may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Not at all.
    No,
    /// Until the deadline (forever if `None`).
    Until(Option<Deadline>),
}

/// A validated pair of commit words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) tail_pos: u32,
    pub(crate) tail_items: u32,
    pub(crate) head_pos: u32,
    pub(crate) head_items: u32,
    /// Bytes queued.
    pub(crate) used: u32,
    /// Frames queued.
    pub(crate) items: u32,
}

impl Snapshot {
    /// Splits and checks the words against a ring of `cap` bytes.
    #[inline]
    pub(crate) fn new(tail: u64, head: u64, cap: u32) -> Result<Snapshot, Fail> {
        let (tail_pos, tail_items) = (tail as u32, (tail >> 32) as u32);
        let (head_pos, head_items) = (head as u32, (head >> 32) as u32);
        let used = tail_pos.wrapping_sub(head_pos);
        let items = tail_items.wrapping_sub(head_items);
        if used > cap
            || tail_pos % ALIGN as u32 != 0
            || head_pos % ALIGN as u32 != 0
            || items > used / HDR as u32
            || (items == 0) != (used == 0)
        {
            return Err(Fail::Corrupted("commit words"));
        }
        Ok(Snapshot {
            tail_pos,
            tail_items,
            head_pos,
            head_items,
            used,
            items,
        })
    }
}

#[inline]
fn word(items: u32, pos: u32) -> u64 {
    (u64::from(items) << 32) | u64::from(pos)
}

/// What a put carries.
#[derive(Clone, Copy)]
pub(crate) enum Src<'b> {
    /// One message: its payload (the header and padding are added).
    One(&'b [u8]),
    /// Complete frames in a private buffer; as many whole frames as fit are put.
    Frames(&'b [u8]),
    /// One message of this many payload bytes, written in place by the function: it gets the
    /// ring position of the payload (the header is written for it, the padding after it) and
    /// must write exactly that many bytes there, through the core's ring, or return `false` to
    /// put nothing. It runs under the put lock.
    Write(usize, &'b dyn Fn(u64) -> bool),
}

/// Where a get puts what it takes.
pub(crate) enum Sink<'b> {
    /// Append whole frames (headers included), at most this many.
    Frames(&'b mut Vec<u8>, u32),
    /// The payload of exactly one message, into a caller's buffer.
    Slice(&'b mut [u8]),
    /// At most `max` messages, taken as one *run*: either frames whose payload is shorter than
    /// `big`, appended whole to `small` (as [`Sink::Frames`]), or frames of at least `big`
    /// bytes, each handed to `visit` (the ring position of its payload and its length) under the
    /// get lock, in queue order, to be decoded in place. A run stops where the kind changes.
    Split {
        small: &'b mut Vec<u8>,
        max: u32,
        big: usize,
        visit: &'b mut dyn FnMut(u64, usize),
    },
}

/// The algorithm over one control block and one ring.
#[derive(Debug)]
pub(crate) struct Core<'a, M, W> {
    pub(crate) ctl: &'a Control,
    pub(crate) mem: M,
    pub(crate) waiter: W,
    /// The handle's spin budget, shared by its waits.
    pub(crate) backoff: &'a Backoff,
    /// The ring's size (validated, a power of two).
    pub(crate) cap: u32,
    /// The most items the queue may hold.
    pub(crate) max_items: u32,
}

impl<M: ByteRing, W: Waiter> Core<'_, M, W> {
    /// The current, validated commit words (lock-free; approximate while others run).
    #[inline]
    pub(crate) fn snapshot(&self) -> Result<Snapshot, Fail> {
        let head = self.ctl.get.head.load(Ordering::Acquire);
        let tail = self.ctl.put.tail.load(Ordering::Acquire);
        Snapshot::new(tail, head, self.cap)
    }

    /// Whether `close` was called.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.ctl.config.closed.load(Ordering::Acquire) != 0
    }

    /// Takes a lock, repairing (trivially: see the module docs) after an owner death.
    /// (`try_lock_deadline` bounds the wait of a try-operation.)
    #[inline]
    fn lock<'l>(
        lock: &'l SharedLock,
        wait: Wait,
    ) -> Result<<SharedLock as RawLock>::Guard<'l>, Fail> {
        // A try-operation still waits for the lock: holders keep it only for a copy, never
        // across a sleep, and a dead holder is recovered. "Try" means "do not wait for room or
        // for data". But it waits a bounded time: a lock word that a corrupted or hostile
        // segment points at some unrelated live thread must give an error, not a hang.
        let (mut guard, died) = match wait {
            Wait::No => match lock.acquire(try_lock_deadline(), false) {
                Err(LockFail::Timeout) => {
                    return Err(Fail::Corrupted("a queue lock stayed held for seconds"));
                }
                other => other?,
            },
            Wait::Until(d) => lock.acquire(d, false)?,
        };
        if died {
            // The commit words are single atomic stores, always consistent: nothing to undo.
            RawGuard::mark_consistent(&mut guard);
        }
        Ok(guard)
    }

    /// Puts `src`, waiting as `wait` allows. Returns the bytes and items put.
    pub(crate) fn push(&self, src: Src<'_>, wait: Wait) -> Result<(usize, u32), Fail> {
        // The least that must fit for progress.
        let first = match src {
            Src::One(p) => frame_len(p.len()),
            Src::Write(len, _) => frame_len(len),
            Src::Frames(f) => match first_frame(f) {
                Some(n) => n,
                None => return Ok((0, 0)),
            },
        };
        if first > self.cap as usize || self.max_items == 0 {
            return Err(Fail::TooLarge);
        }
        loop {
            match self.try_push(src, wait) {
                Err(Fail::Full) => match wait {
                    Wait::No => return Err(Fail::Full),
                    Wait::Until(deadline) => self.wait_space(first as u32, deadline)?,
                },
                r => return r,
            }
        }
    }

    /// One attempt under the put lock.
    fn try_push(&self, src: Src<'_>, wait: Wait) -> Result<(usize, u32), Fail> {
        let guard = Self::lock(&self.ctl.put.lock, wait)?;
        if self.is_closed() {
            return Err(Fail::Closed);
        }
        let tail = self.ctl.put.tail.load(Ordering::Relaxed);
        let head = self.ctl.get.head.load(Ordering::Acquire);
        let s = Snapshot::new(tail, head, self.cap)?;
        let free_bytes = (self.cap - s.used) as usize;
        let free_items = self.max_items.saturating_sub(s.items);
        let (bytes, items) = match src {
            Src::One(payload) => {
                let n = frame_len(payload.len());
                if n > free_bytes || free_items == 0 {
                    return Err(Fail::Full);
                }
                let at = u64::from(s.tail_pos);
                self.mem.write(at, &header(payload.len()));
                self.mem.write(at + HDR as u64, payload);
                let pad = n - HDR - payload.len();
                if pad > 0 {
                    self.mem
                        .write(at + (HDR + payload.len()) as u64, &[0u8; ALIGN][..pad]);
                }
                (n, 1)
            }
            Src::Frames(frames) => {
                let (n, items) = fitting_prefix(frames, free_bytes, free_items);
                if items == 0 {
                    return Err(Fail::Full);
                }
                self.mem.write(u64::from(s.tail_pos), &frames[..n]);
                (n, items)
            }
            Src::Write(len, write) => {
                let n = frame_len(len);
                if n > free_bytes || free_items == 0 {
                    return Err(Fail::Full);
                }
                let at = u64::from(s.tail_pos);
                self.mem.write(at, &header(len));
                // A refusal (or a panic) leaves `tail` where it was: the bytes written are free
                // space again, as a dead producer's ("being written" in the state table).
                if !write(at + HDR as u64) {
                    return Err(Fail::Refused);
                }
                let pad = n - HDR - len;
                if pad > 0 {
                    self.mem
                        .write(at + (HDR + len) as u64, &[0u8; ALIGN][..pad]);
                }
                (n, 1)
            }
        };
        let new_tail = word(
            s.tail_items.wrapping_add(items),
            s.tail_pos.wrapping_add(bytes as u32),
        );
        self.ctl.put.tail.store(new_tail, Ordering::Release);
        drop(guard);
        self.ctl.put.data.notify_with(&self.waiter, u32::MAX);
        Ok((bytes, items))
    }

    /// Whether a frame of `need` bytes (and one item) would fit now.
    #[inline]
    fn has_space(&self, tail: u64, head: u64, need: u32) -> Result<bool, Fail> {
        let s = Snapshot::new(tail, head, self.cap)?;
        Ok(self.cap - s.used >= need && s.items < self.max_items)
    }

    /// Waits until a frame of `need` bytes may fit, the queue is closed, or `deadline`.
    #[cold]
    fn wait_space(&self, need: u32, deadline: Option<Deadline>) -> Result<(), Fail> {
        let ctl = self.ctl;
        // A corrupted pair of words is "ready": the retry under the lock reports it.
        let ready = || {
            self.is_closed()
                || self
                    .has_space(
                        ctl.put.tail.load(Ordering::Acquire),
                        ctl.get.head.load(Ordering::Acquire),
                        need,
                    )
                    .unwrap_or(true)
        };
        self.wait_on(&ctl.get.space, deadline, ready)
    }

    /// One wait on `ec` for `ready()`: spin through the backoff, then listen, re-check and
    /// sleep (see "Sleeping"). `Ok` when `ready()` held or a notify came (the caller re-checks
    /// under its lock), `Timeout` when `deadline` passed first.
    #[cold]
    fn wait_on(
        &self,
        ec: &EventCount,
        deadline: Option<Deadline>,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Fail> {
        // The caller's attempt under the lock already failed: no spin for a spent deadline.
        if deadline.is_some_and(|d| d.has_passed()) {
            return Err(Fail::Timeout);
        }
        let started = std::time::Instant::now();
        if self.backoff.spin(&mut ready) {
            return Ok(());
        }
        let token = ec.listen();
        if ready() {
            ec.cancel(token);
            return Ok(());
        }
        let r = ec.wait_with(&self.waiter, token, deadline);
        self.backoff.slept(started);
        match r {
            EventWait::Notified => Ok(()),
            EventWait::TimedOut => Err(Fail::Timeout),
        }
    }

    /// Gets into `sink`, waiting as `wait` allows. Returns the items got and the payload
    /// length of the last one.
    pub(crate) fn pop(&self, sink: &mut Sink<'_>, wait: Wait) -> Result<(u32, usize), Fail> {
        loop {
            match self.try_pop(sink, wait) {
                Err(Fail::Empty) => match wait {
                    Wait::No => return Err(Fail::Empty),
                    Wait::Until(deadline) => self.wait_data(deadline)?,
                },
                r => return r,
            }
        }
    }

    /// One attempt under the get lock.
    fn try_pop(&self, sink: &mut Sink<'_>, wait: Wait) -> Result<(u32, usize), Fail> {
        let guard = Self::lock(&self.ctl.get.lock, wait)?;
        let head = self.ctl.get.head.load(Ordering::Relaxed);
        let mut tail = self.ctl.put.tail.load(Ordering::Acquire);
        let mut s = Snapshot::new(tail, head, self.cap)?;
        if s.items == 0 {
            if !self.is_closed() {
                return Err(Fail::Empty);
            }
            // Closed: every put committed before the close is visible now.
            tail = self.ctl.put.tail.load(Ordering::Acquire);
            s = Snapshot::new(tail, head, self.cap)?;
            if s.items == 0 {
                return Err(Fail::Closed);
            }
        }
        let (max, big) = match sink {
            Sink::Frames(_, max) => ((*max).max(1), usize::MAX),
            Sink::Slice(_) => (1, usize::MAX),
            Sink::Split { max, big, .. } => ((*max).max(1), *big),
        };
        let mut pos = s.head_pos;
        let mut n = 0u32;
        let mut last_len = 0usize;
        // Whether the run taken is of frames of at least `big` bytes (set by the first frame).
        let mut run_big = None;
        while n < max.min(s.items) {
            let mut h = [0u8; HDR];
            self.mem.read(u64::from(pos), &mut h);
            let len = codec::frame_len(h, self.cap as usize).map_err(|e| match e {
                codec::FrameError::TooLong { .. } => Fail::Corrupted("frame length"),
                _ => Fail::Corrupted("frame header"),
            })?;
            let flen = frame_len(len);
            if flen > s.tail_pos.wrapping_sub(pos) as usize {
                return Err(Fail::Corrupted("frame length"));
            }
            if *run_big.get_or_insert(len >= big) != (len >= big) {
                break;
            }
            pos = pos.wrapping_add(flen as u32);
            n += 1;
            last_len = len;
        }
        // A frame count that disagrees with the bytes is corruption too.
        if n == s.items && pos != s.tail_pos {
            return Err(Fail::Corrupted("frame count"));
        }
        match sink {
            Sink::Frames(out, _) => {
                self.mem.append(
                    u64::from(s.head_pos),
                    pos.wrapping_sub(s.head_pos) as usize,
                    out,
                );
            }
            Sink::Slice(buf) => {
                let Some(dst) = buf.get_mut(..last_len) else {
                    return Err(Fail::BufferTooSmall(last_len));
                };
                self.mem.read(u64::from(s.head_pos) + HDR as u64, dst);
            }
            Sink::Split { small, visit, .. } => {
                if run_big == Some(true) {
                    (n, pos) = self.visit_run(s.head_pos, pos, n, &mut **visit)?;
                } else {
                    self.mem.append(
                        u64::from(s.head_pos),
                        pos.wrapping_sub(s.head_pos) as usize,
                        small,
                    );
                }
            }
        }
        let new_head = word(s.head_items.wrapping_add(n), pos);
        self.ctl.get.head.store(new_head, Ordering::Release);
        drop(guard);
        self.ctl.get.space.notify_with(&self.waiter, u32::MAX);
        Ok((n, last_len))
    }

    /// Hands the `n` frames of `start .. end` (validated by the caller) to `visit`, re-reading
    /// each header: only a process breaking the protocol can change one in between, and then the
    /// run stops there. Returns how many frames were visited and where they end (the new head).
    fn visit_run(
        &self,
        start: u32,
        end: u32,
        n: u32,
        visit: &mut dyn FnMut(u64, usize),
    ) -> Result<(u32, u32), Fail> {
        let (mut at, mut done) = (start, 0u32);
        while done < n {
            let mut h = [0u8; HDR];
            self.mem.read(u64::from(at), &mut h);
            let Ok(len) = codec::frame_len(h, self.cap as usize) else {
                break;
            };
            let flen = frame_len(len);
            if flen > end.wrapping_sub(at) as usize {
                break;
            }
            visit(u64::from(at) + HDR as u64, len);
            at = at.wrapping_add(flen as u32);
            done += 1;
        }
        if done == 0 {
            return Err(Fail::Corrupted("frame header changed while held"));
        }
        Ok((done, at))
    }

    /// Waits until the queue looks non-empty or closed, or `deadline`.
    #[cold]
    fn wait_data(&self, deadline: Option<Deadline>) -> Result<(), Fail> {
        let ctl = self.ctl;
        let nonempty = |tail: u64, head: u64| tail as u32 != head as u32;
        let ready = || {
            nonempty(
                ctl.put.tail.load(Ordering::Acquire),
                ctl.get.head.load(Ordering::Relaxed),
            ) || self.is_closed()
        };
        self.wait_on(&ctl.put.data, deadline, ready)
    }

    /// Closes the queue: later puts fail, gets drain and then fail.
    pub(crate) fn close(&self) -> Result<(), Fail> {
        let guard = Self::lock(&self.ctl.put.lock, Wait::Until(None))?;
        self.ctl.config.closed.store(1, Ordering::Release);
        drop(guard);
        self.ctl.put.data.notify_with(&self.waiter, u32::MAX);
        self.ctl.get.space.notify_with(&self.waiter, u32::MAX);
        Ok(())
    }

    /// The number of unfinished tasks (`JoinableQueue`).
    pub(crate) fn unfinished(&self) -> u32 {
        let tail = self.ctl.put.tail.load(Ordering::Acquire);
        let done = self.ctl.join.done.load(Ordering::Acquire);
        ((tail >> 32) as u32).wrapping_sub(done)
    }

    /// Marks one task done.
    pub(crate) fn task_done(&self) -> Result<(), Fail> {
        let join = &self.ctl.join;
        let mut done = join.done.load(Ordering::Acquire);
        let put = loop {
            let put = (self.ctl.put.tail.load(Ordering::Acquire) >> 32) as u32;
            if done == put {
                return Err(Fail::NoUnfinished);
            }
            match join.done.compare_exchange_weak(
                done,
                done.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break put,
                Err(d) => done = d,
            }
        };
        if done.wrapping_add(1) == put {
            join.all_done.notify_with(&self.waiter, u32::MAX);
        }
        Ok(())
    }

    /// Waits until every task put has been marked done, or `deadline`.
    pub(crate) fn join(&self, deadline: Option<Deadline>) -> Result<(), Fail> {
        let ctl = self.ctl;
        loop {
            if self.unfinished() == 0 {
                return Ok(());
            }
            self.wait_on(&ctl.join.all_done, deadline, || self.unfinished() == 0)?;
        }
    }
}

/// The size of the first frame of a private frame buffer.
fn first_frame(frames: &[u8]) -> Option<usize> {
    let h: [u8; HDR] = frames.get(..HDR)?.try_into().ok()?;
    Some(frame_len(codec::frame_len(h, MAX_FRAME_LEN).ok()?))
}

/// The bytes and count of the longest run of whole frames at the start of `frames` that fits in
/// `bytes` and `items`.
fn fitting_prefix(frames: &[u8], bytes: usize, items: u32) -> (usize, u32) {
    let (mut at, mut n) = (0usize, 0u32);
    while n < items {
        let Some(len) = first_frame(&frames[at..]) else {
            break;
        };
        if at + len > bytes || at + len > frames.len() {
            break;
        }
        at += len;
        n += 1;
    }
    (at, n)
}

/// Iterates over the payloads of a private buffer of frames (as filled by [`Sink::Frames`]).
pub(crate) fn frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let h: [u8; HDR] = rest.get(..HDR)?.try_into().ok()?;
        let len = codec::frame_len(h, MAX_FRAME_LEN).ok()?;
        let payload = rest.get(HDR..HDR + len)?;
        rest = rest.get(frame_len(len)..).unwrap_or(&[]);
        Some(payload)
    })
}

#[cfg(loom)]
impl<W: Waiter> Core<'_, &ipc_shm::LoomRing, W> {
    /// A producer killed mid-put: takes the put lock, writes a frame of `payload` at the tail,
    /// and "dies" holding the lock, before its commit store.
    fn put_and_die(&self, payload: &[u8]) {
        let (guard, _) = self.ctl.put.lock.acquire(None, false).unwrap();
        let tail = self.ctl.put.tail.load(Ordering::Relaxed);
        let head = self.ctl.get.head.load(Ordering::Acquire);
        let s = Snapshot::new(tail, head, self.cap).unwrap();
        if (self.cap - s.used) as usize >= frame_len(payload.len()) {
            let at = u64::from(s.tail_pos);
            self.mem.write(at, &header(payload.len()));
            self.mem.write(at + HDR as u64, payload);
        }
        guard.die();
    }

    /// A consumer killed mid-get: takes the get lock, copies the first frame out, and "dies"
    /// holding the lock, before its commit store.
    fn get_and_die(&self) {
        let (guard, _) = self.ctl.get.lock.acquire(None, false).unwrap();
        let head = self.ctl.get.head.load(Ordering::Relaxed);
        let tail = self.ctl.put.tail.load(Ordering::Acquire);
        let s = Snapshot::new(tail, head, self.cap).unwrap();
        if s.items > 0 {
            let mut h = [0u8; HDR];
            self.mem.read(u64::from(s.head_pos), &mut h);
            let len = codec::frame_len(h, self.cap as usize).unwrap();
            let mut out = Vec::new();
            self.mem
                .append(u64::from(s.head_pos), frame_len(len), &mut out);
        }
        guard.die();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use ipc_shm::LoomRing;
    use ipc_sync::Futex;
    use loom::sync::Arc;
    use loom::thread;

    struct Model {
        ctl: Control,
        ring: LoomRing,
        backoff: Backoff,
        cap: u32,
        max_items: u32,
    }

    impl Model {
        fn new(cap: usize, max_items: u32) -> Arc<Model> {
            Arc::new(Model {
                ctl: Control::new_model(cap, max_items),
                ring: LoomRing::new(cap).unwrap(),
                backoff: Backoff::new(),
                cap: cap as u32,
                max_items,
            })
        }

        fn core(&self) -> Core<'_, &LoomRing, Futex> {
            Core {
                ctl: &self.ctl,
                mem: &self.ring,
                waiter: Futex,
                backoff: &self.backoff,
                cap: self.cap,
                max_items: self.max_items,
            }
        }
    }

    fn get_one(core: &Core<'_, &LoomRing, Futex>) -> Result<Vec<u8>, Fail> {
        let mut out = Vec::new();
        core.pop(&mut Sink::Frames(&mut out, 1), Wait::Until(None))?;
        Ok(frames(&out).next().unwrap().to_vec())
    }

    /// One frame fits at a time, so both sides must sleep and wake each other.
    #[test]
    fn spsc_blocking_both_ways() {
        loom::model(|| {
            let m = Model::new(16, u32::MAX);
            let p = Arc::clone(&m);
            let producer = thread::spawn(move || {
                let core = p.core();
                core.push(Src::One(&[1]), Wait::Until(None)).unwrap();
                core.push(Src::One(&[2]), Wait::Until(None)).unwrap();
            });
            let core = m.core();
            assert_eq!(get_one(&core).unwrap(), [1]);
            assert_eq!(get_one(&core).unwrap(), [2]);
            producer.join().unwrap();
        });
    }

    /// A producer dies mid-put while another puts: the consumer gets exactly the live
    /// producer's message, whole, and nothing of the dead one's.
    #[test]
    fn dead_producer_leaves_nothing_behind() {
        loom::model(|| {
            let m = Model::new(32, u32::MAX);
            let d = Arc::clone(&m);
            let dead = thread::spawn(move || d.core().put_and_die(&[0xde, 0xad]));
            let p = Arc::clone(&m);
            let live = thread::spawn(move || {
                p.core()
                    .push(Src::One(&[7, 7, 7]), Wait::Until(None))
                    .unwrap();
            });
            let core = m.core();
            assert_eq!(get_one(&core).unwrap(), [7, 7, 7]);
            dead.join().unwrap();
            live.join().unwrap();
            let mut out = Vec::new();
            assert_eq!(
                core.pop(&mut Sink::Frames(&mut out, 4), Wait::No),
                Err(Fail::Empty)
            );
        });
    }

    /// A consumer dies mid-get: the message stays for the next consumer.
    #[test]
    fn dead_consumer_loses_nothing() {
        loom::model(|| {
            let m = Model::new(32, u32::MAX);
            m.core().push(Src::One(&[5]), Wait::No).unwrap();
            let d = Arc::clone(&m);
            let dead = thread::spawn(move || d.core().get_and_die());
            let core = m.core();
            assert_eq!(get_one(&core).unwrap(), [5]);
            dead.join().unwrap();
        });
    }

    /// Close racing a put and a sleeping getter: the getter gets the message if the put won,
    /// then `Closed`; it never sleeps forever.
    #[test]
    fn close_wakes_getter_and_drains() {
        loom::model(|| {
            let m = Model::new(32, u32::MAX);
            let p = Arc::clone(&m);
            let producer = thread::spawn(move || {
                let core = p.core();
                let put = core.push(Src::One(&[9]), Wait::Until(None)).is_ok();
                core.close().unwrap();
                put
            });
            let core = m.core();
            let mut got = 0;
            loop {
                match get_one(&core) {
                    Ok(v) => {
                        assert_eq!(v, [9]);
                        got += 1;
                    }
                    Err(Fail::Closed) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
            let put = producer.join().unwrap();
            assert_eq!(got, usize::from(put));
        });
    }

    /// join returns only after task_done, and task_done's wake-up is never lost.
    #[test]
    fn join_waits_for_task_done() {
        loom::model(|| {
            let m = Model::new(32, u32::MAX);
            m.core().push(Src::One(&[1]), Wait::No).unwrap();
            let w = Arc::clone(&m);
            let worker = thread::spawn(move || {
                let core = w.core();
                get_one(&core).unwrap();
                core.task_done().unwrap();
            });
            m.core().join(None).unwrap();
            assert_eq!(m.core().unfinished(), 0);
            assert_eq!(m.core().task_done(), Err(Fail::NoUnfinished));
            worker.join().unwrap();
        });
    }

    /// Item limit: a second put waits for the first get.
    #[test]
    fn max_items_blocks_and_wakes() {
        loom::model(|| {
            let m = Model::new(64, 1);
            let p = Arc::clone(&m);
            let producer = thread::spawn(move || {
                let core = p.core();
                core.push(Src::One(&[1]), Wait::Until(None)).unwrap();
                core.push(Src::One(&[2]), Wait::Until(None)).unwrap();
            });
            let core = m.core();
            assert_eq!(get_one(&core).unwrap(), [1]);
            assert_eq!(get_one(&core).unwrap(), [2]);
            producer.join().unwrap();
        });
    }

    /// A getter dies registered on `data` (a SIGKILL mid-sleep leaves exactly its registration)
    /// while a live getter waits: the put still wakes the live one, and once it has returned
    /// the dead registration is gone (the put's notify, or the next one, cleared it).
    #[test]
    fn dead_getter_neither_blocks_nor_lingers() {
        loom::model(|| {
            let m = Model::new(32, u32::MAX);
            let d = Arc::clone(&m);
            let dead = thread::spawn(move || drop(d.ctl.put.data.listen()));
            let g = Arc::clone(&m);
            let live = thread::spawn(move || get_one(&g.core()).unwrap());
            m.core().push(Src::One(&[3]), Wait::Until(None)).unwrap();
            assert_eq!(live.join().unwrap(), [3]);
            dead.join().unwrap();
            m.ctl.put.data.notify_with(&Futex, u32::MAX);
            assert_eq!(m.ctl.put.data.waiters(), 0);
        });
    }

    /// A large message serialised in place (after a refused one, which must leave no trace) and
    /// deserialised in place, behind a small one: the consumer gets the small one through its
    /// buffer, then the large one whole through `visit`, in order, and nothing else.
    #[test]
    fn in_place_write_and_read() {
        loom::model(|| {
            let m = Model::new(64, u32::MAX);
            let p = Arc::clone(&m);
            let producer = thread::spawn(move || {
                let core = p.core();
                let refuse = |_pos: u64| false;
                assert_eq!(
                    core.push(Src::Write(3, &refuse), Wait::Until(None)),
                    Err(Fail::Refused)
                );
                core.push(Src::One(&[1]), Wait::Until(None)).unwrap();
                let mem = &core.mem;
                let write = |pos: u64| {
                    mem.write(pos, &[7, 8, 9]);
                    true
                };
                core.push(Src::Write(3, &write), Wait::Until(None)).unwrap();
            });
            let core = m.core();
            let mut got: Vec<Vec<u8>> = Vec::new();
            while got.len() < 2 {
                let mem = &core.mem;
                let (mut small, mut big) = (Vec::new(), Vec::new());
                let mut visit = |pos: u64, len: usize| {
                    let mut b = vec![0u8; len];
                    mem.read(pos, &mut b);
                    big.push(b);
                };
                core.pop(
                    &mut Sink::Split {
                        small: &mut small,
                        max: 4,
                        big: 2,
                        visit: &mut visit,
                    },
                    Wait::Until(None),
                )
                .unwrap();
                got.extend(frames(&small).map(<[u8]>::to_vec));
                got.extend(big);
            }
            assert_eq!(got, [vec![1], vec![7, 8, 9]]);
            producer.join().unwrap();
            let mut out = Vec::new();
            assert_eq!(
                core.pop(&mut Sink::Frames(&mut out, 4), Wait::No),
                Err(Fail::Empty)
            );
        });
    }

    /// Two producers and two consumers, one message each: each got exactly once.
    #[test]
    fn mpmc_exactly_once() {
        loom::model(|| {
            let m = Model::new(64, u32::MAX);
            let producers: Vec<_> = (0..2u8)
                .map(|i| {
                    let p = Arc::clone(&m);
                    thread::spawn(move || {
                        p.core().push(Src::One(&[i]), Wait::Until(None)).unwrap();
                    })
                })
                .collect();
            let c = Arc::clone(&m);
            let other = thread::spawn(move || get_one(&c.core()).unwrap()[0]);
            let mine = get_one(&m.core()).unwrap()[0];
            let theirs = other.join().unwrap();
            for p in producers {
                p.join().unwrap();
            }
            assert_eq!(mine ^ theirs, 1, "each message exactly once");
        });
    }
}
