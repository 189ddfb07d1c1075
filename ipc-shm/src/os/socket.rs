//! Unix sockets: the pipe's socketpair and its readiness bytes, and messages that carry
//! descriptors (`SCM_RIGHTS`) for the fork server.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// A connected pair of Unix stream sockets, close-on-exec and non-blocking.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// A connected pair of Unix `SOCK_SEQPACKET` sockets (message boundaries kept), close-on-exec
/// and blocking.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends one readiness byte to the peer. Never blocks and never raises `SIGPIPE`; a full
/// buffer (a byte is already pending) and a dead peer are both fine to ignore here.
pub fn send_byte(fd: BorrowedFd<'_>) {
    let _ = rustix::net::send(fd, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}

/// Reads and discards every pending readiness byte. Returns `true` if the peer hung up (EOF).
pub fn drain(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok((n, _)) if n < buf.len() => return false,
            Ok(_) => continue,
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The most descriptors [`send_with_fds`] and [`recv_with_fds`] carry in one message.
/// (64: enough for a message handing a few queues, pipe ends and shared values at once, far
/// below the kernel's `SCM_MAX_FD` of 253; the control buffer is on the stack.)
pub const MAX_FDS: usize = 64;

/// Sends `bytes` as one message on the socket `sock`, with `fds` attached (`SCM_RIGHTS`, at
/// most [`MAX_FDS`]). Never raises `SIGPIPE`; EINTR is retried.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let iov = [IoSlice::new(bytes)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message from the socket `sock` into `buf`, and the descriptors it carries (at
/// most [`MAX_FDS`], close-on-exec); returns the message's length (0 at end of stream). EINTR is
/// retried.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        {
            Ok(m) => m,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for c in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = c {
                fds.extend(received);
            }
        }
        return Ok((msg.bytes, fds));
    }
}
