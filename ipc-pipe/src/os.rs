//! [`Socket`], the production [`Link`] of an end: the socketpair that tracks peer death and, in
//! fd mode, carries readiness bytes; it also carries the descriptors of messages that hand IPC
//! objects over (`SCM_RIGHTS`, see "Descriptor records" below). Its system calls are the
//! workspace's OS layer ([`ipc_shm::os`]); this file only maps the [`Link`] operations onto them.
//!
//! # Descriptor records
//!
//! A message whose encoding put descriptors into an [`FdBatch`] (see [`ipc_shm::transfer`]) is
//! preceded on the sender's socket by one *record*: 10 bytes, `0xFD`, the batch id (`u64` LE)
//! and the descriptor count (`u8`), sent in one `sendmsg` with the descriptors attached. The
//! record is written before the frame is published in the ring, so a receiver that sees the
//! frame finds the record already queued on its socket.
//!
//! The socket is a byte stream shared with readiness bytes (`1`), which are never `0xFD` at a
//! record boundary: the parser skips anything else. Linux attaches the descriptors to the read
//! that first touches the record's bytes and ends that read after them, so one read carries at
//! most one record's descriptors, and they belong to the record that starts in it. Whoever reads
//! the socket (the fd-mode drain, or a receiver fetching a batch) parses records into a queue
//! of arrived batches in order; a receiver looking for batch `id` discards the batches queued
//! before it (messages never decoded, or whose send failed half-way: their descriptors are
//! closed) and fails with [`TransferError::Missing`] if it is not there.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use ipc_shm::os;
use ipc_shm::transfer::{FdBatch, TransferError};

use crate::end::Link;

/// The first byte of a descriptor record.
const RECORD: u8 = 0xFD;
/// A record's length: marker, batch id, count.
const RECORD_LEN: usize = 10;
/// The most batches the fd-mode drain keeps waiting for their messages: a peer that sends
/// descriptors nobody asks for cannot fill this process's descriptor table (the oldest are
/// closed first; a message still wanting one gets `Missing`). A receiver fetching a batch reads
/// the socket only up to it, so records further on stay in the kernel (counted against the
/// sender's descriptor limit) and never meet this cap.
const MAX_WAITING: usize = 1024;

/// Batches parsed from the socket, in arrival order.
#[derive(Debug, Default)]
struct Incoming {
    /// The bytes of a record whose end has not arrived yet.
    partial: Vec<u8>,
    /// The descriptors that came with the partial record's first bytes.
    partial_fds: Vec<OwnedFd>,
    /// Whole records, or why one was refused.
    ready: VecDeque<Result<FdBatch, &'static str>>,
}

impl Incoming {
    /// Parses one read: `bytes`, and the descriptors that came with it.
    fn parse(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) {
        let mut fds = Some(fds).filter(|f| !f.is_empty());
        for &b in bytes {
            if !self.partial.is_empty() {
                self.partial.push(b);
                if self.partial.len() == RECORD_LEN {
                    self.finish();
                }
            } else if b == RECORD {
                self.partial.push(b);
                self.partial_fds = fds.take().unwrap_or_default();
            }
        }
        if fds.is_some() {
            // Descriptors with no record starting in their read: dropped (closed).
            self.ready
                .push_back(Err("descriptors arrived without a record"));
        }
    }

    fn finish(&mut self) {
        let record = std::mem::take(&mut self.partial);
        let fds = std::mem::take(&mut self.partial_fds);
        let mut id = [0u8; 8];
        id.copy_from_slice(&record[1..9]);
        let id = u64::from_le_bytes(id);
        if self.ready.len() >= MAX_WAITING {
            self.ready.pop_front();
        }
        if usize::from(record[9]) != fds.len() {
            self.ready.push_back(Err(
                "a record's descriptor count does not match what arrived",
            ));
        } else {
            self.ready.push_back(Ok(FdBatch::from_parts(id, fds)));
        }
    }
}

/// An end's socket of the pipe's socketpair: the kernel reports the peer's hang-up on it, in fd
/// mode it carries readiness bytes, and it carries descriptor records (see the module docs).
/// Taken (closed) when the end is dropped or released.
#[derive(Debug)]
pub(crate) struct Socket(Option<OwnedFd>, RefCell<Incoming>);

impl Socket {
    /// Wraps an end's socket.
    pub(crate) fn new(fd: OwnedFd) -> Socket {
        Socket(Some(fd), RefCell::new(Incoming::default()))
    }

    /// Reads what is pending on the socket, parsing descriptor records, until the socket is
    /// empty or (with `until`) batch `until` has arrived; `true` at end of stream (the peer hung
    /// up).
    fn read_pending(&self, until: Option<u64>) -> io::Result<bool> {
        let mut buf = [0u8; 256];
        loop {
            match os::recv_with_fds(self.fd(), &mut buf) {
                Ok((0, _)) => return Ok(true),
                Ok((n, fds)) => {
                    let more = n == buf.len() || !fds.is_empty();
                    let mut incoming = self.1.borrow_mut();
                    incoming.parse(&buf[..n], fds);
                    let found = until.is_some_and(|id| {
                        incoming
                            .ready
                            .iter()
                            .any(|b| b.as_ref().is_ok_and(|b| b.id() == id))
                    });
                    if !more || found {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// The descriptors of batch `id`: from the batches already read, or read now. Batches
    /// queued before it are discarded (closed).
    pub(crate) fn take_batch(&self, id: u64) -> Result<FdBatch, TransferError> {
        let mut read = false;
        loop {
            while let Some(front) = self.1.borrow_mut().ready.pop_front() {
                match front {
                    Ok(batch) if batch.id() == id => return Ok(batch),
                    Ok(_orphan) => {}
                    Err(what) => return Err(TransferError::Corrupted { what }),
                }
            }
            if read {
                return Err(TransferError::Missing { batch: id });
            }
            self.read_pending(Some(id)).map_err(TransferError::Recv)?;
            read = true;
        }
    }

    /// Sends the record of `batch` with its descriptors, waiting for room in the socket's
    /// buffer until `deadline` (`None`: as long as it takes; the peer's hang-up ends the wait).
    pub(crate) fn send_batch(&self, batch: &FdBatch, deadline: Option<Instant>) -> io::Result<()> {
        let count =
            u8::try_from(batch.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut record = [0u8; RECORD_LEN];
        record[0] = RECORD;
        record[1..9].copy_from_slice(&batch.id().to_le_bytes());
        record[9] = count;
        let fds = batch.fds();
        loop {
            match os::send_with_fds(self.fd(), &record, &fds) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left == Some(Duration::ZERO) {
                        return Err(io::Error::from(io::ErrorKind::TimedOut));
                    }
                    // At most a second per wait, so that a peer that died is noticed.
                    let slice =
                        left.map_or(Duration::from_secs(1), |l| l.min(Duration::from_secs(1)));
                    os::wait_writable(self.fd(), Some(slice))?;
                    if os::hung_up(self.fd()) {
                        return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                    }
                }
                r => return r,
            }
        }
    }

    /// The descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0
            .as_ref()
            .expect("the socket is only taken in drop, release and into_raw_parts")
            .as_fd()
    }

    /// Takes the descriptor out (the end is going away).
    pub(crate) fn take(&mut self) -> Option<OwnedFd> {
        self.0.take()
    }
}

impl Link for Socket {
    fn hung_up(&self) -> bool {
        os::hung_up(self.fd())
    }

    fn drain(&self) -> bool {
        // Not `os::drain`: a plain read would close the descriptors of a record.
        self.read_pending(None).unwrap_or(false)
    }

    fn notify(&self) {
        os::send_byte(self.fd())
    }

    fn sleep(&self, timeout: Option<Duration>) {
        os::poll_one(self.fd(), timeout);
    }

    fn pid(&self) -> u32 {
        os::pid()
    }

    fn process_exists(&self, pid: u32) -> bool {
        os::process_exists(pid)
    }
}
