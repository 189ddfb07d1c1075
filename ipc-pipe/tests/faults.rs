//! The standing fault suite of ipc-pipe (issue 14, item 4 and the pipe half of item 8): a
//! sender stopped mid-message, a peer alive but not reading, a corrupted length, a send after
//! the peer's only handle was dropped. Real processes, each child under the ipc-tests watchdog;
//! every wait has a deadline and no sleep is used as synchronisation (the parent learns that a
//! child reached a point from a message on a control pipe, or from `waitpid`).

use std::time::Duration;

use ipc_pipe::{
    Connection, PipeBuilder, RecvError, RecvIntoError, RecvTimeoutError, SendError,
    SendTimeoutError, TryRecvError, TrySendError, pipe,
};
use ipc_shm::codec::FrameHeader;
use ipc_tests::fork_child;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

const WATCHDOG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(100);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Blocks until the child `pid` is stopped (`SIGSTOP` delivered), without reaping it.
fn wait_stopped(pid: u32) {
    let pid = Pid::from_raw(pid as i32);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(..)) => return,
            Err(nix::errno::Errno::EINTR) => continue,
            other => panic!("child not stopped: {other:?}"),
        }
    }
}

/// Item 4: a sender `SIGSTOP`ped in the middle of a message larger than the ring. `try_recv`
/// returns `Empty` at once, the timeout forms return `Timeout`, and after `SIGCONT` the whole
/// message arrives intact and the stream stays framed.
#[test]
fn a_sender_stopped_mid_message_does_not_block_timed_receives() {
    let _watchdog = ipc_tests::watchdog(
        "ipc-pipe faults: a_sender_stopped_mid_message_does_not_block_timed_receives",
        WATCHDOG,
    );
    // Futex mode, then fd mode (the receiver sleeps in poll(2) on its socket).
    for fd_mode in [false, true] {
        stopped_sender(fd_mode);
    }
}

fn stopped_sender(fd_mode: bool) {
    const LEN: usize = 1 << 20;
    let (a, b) = PipeBuilder::new().capacity(4096).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_child(WATCHDOG, || {
        drop(a.take());
        b.send(&pattern(LEN)).unwrap();
        b.send(&"after").unwrap();
        0
    });
    let a = a.unwrap();
    if fd_mode {
        a.set_pollable();
    }
    // The header has arrived (poll is true once a streamed message has begun).
    assert!(a.poll(WATCHDOG).unwrap());
    child.signal(Signal::SIGSTOP);
    wait_stopped(child.pid());

    assert!(matches!(a.try_recv::<Vec<u8>>(), Err(TryRecvError::Empty)));
    assert!(matches!(
        a.recv_timeout::<Vec<u8>>(SHORT),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(matches!(
        a.recv_bytes_timeout(SHORT),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(matches!(a.try_recv::<Vec<u8>>(), Err(TryRecvError::Empty)));

    child.signal(Signal::SIGCONT);
    // A receive into a buffer too small completes the message into the end and keeps it there.
    let mut small = [0u8; 16];
    match a.recv_bytes_into(&mut small) {
        Err(RecvIntoError::BufferTooSmall { needed }) => assert!(needed > LEN),
        other => panic!("{other:?}"),
    }
    // The next receive resumes the message where the timed-out ones left it.
    let got = a.recv_timeout::<Vec<u8>>(WATCHDOG).unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got == pattern(LEN), "the message arrived torn");
    assert_eq!(a.recv_timeout::<String>(WATCHDOG).unwrap(), "after");
    child.wait().assert_success();
}

/// Item 4, the same with `try_recv` alone: polling a streamed message with `try_recv` (it
/// gathers what has arrived and returns `Empty`) gives the whole message once, never a part.
#[test]
fn try_recv_assembles_a_streamed_message_without_blocking() {
    let _watchdog = ipc_tests::watchdog(
        "ipc-pipe faults: try_recv_assembles_a_streamed_message_without_blocking",
        WATCHDOG,
    );
    const LEN: usize = 256 * 1024;
    let (a, b) = PipeBuilder::new().capacity(1024).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_child(WATCHDOG, || {
        drop(a.take());
        b.send(&pattern(LEN)).unwrap();
        b.send(&"after").unwrap();
        0
    });
    let a = a.unwrap();
    let got = loop {
        match a.try_recv::<Vec<u8>>() {
            Ok(got) => break got,
            Err(TryRecvError::Empty) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(got == pattern(LEN), "the message arrived torn");
    assert_eq!(a.recv_timeout::<String>(WATCHDOG).unwrap(), "after");
    child.wait().assert_success();
}

/// Item 4, send side: a peer alive but not reading. `try_send` reports `Full` and
/// `send_timeout` `Timeout`, each with the value handed back and nothing of it written; the
/// stream stays consistent (the reader later gets exactly the messages that were sent).
#[test]
fn a_peer_that_does_not_read_times_sends_out() {
    let _watchdog = ipc_tests::watchdog(
        "ipc-pipe faults: a_peer_that_does_not_read_times_sends_out",
        WATCHDOG,
    );
    let (a, b) = PipeBuilder::new().capacity(1024).duplex().unwrap();
    let (ctl_a, ctl_b) = pipe().unwrap();
    let mut mine = Some((a, ctl_a));
    let child = fork_child(WATCHDOG, || {
        drop(mine.take());
        // Not reading until told how many messages to expect.
        let n: u64 = ctl_b.recv().unwrap();
        for i in 0..=n {
            if b.recv::<u64>().unwrap() != i {
                return 1;
            }
        }
        0
    });
    let (a, ctl_a) = mine.take().unwrap();
    let mut sent = 0u64;
    loop {
        match a.try_send(sent) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(v)) => {
                assert_eq!(v, sent);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent > 0);
    match a.send_timeout(&sent, SHORT) {
        Err(SendTimeoutError::Timeout(v)) => assert_eq!(*v, sent),
        other => panic!("{other:?}"),
    }
    match a.send_bytes_timeout(&[1, 2, 3], SHORT) {
        Err(SendTimeoutError::Timeout(v)) => assert_eq!(v, [1, 2, 3]),
        other => panic!("{other:?}"),
    }
    // A message larger than the ring is refused by the timed form, before anything is written.
    let big = vec![0u8; 4096];
    match a.send_bytes_timeout(&big, SHORT) {
        Err(SendTimeoutError::Failed {
            error: SendError::LargerThanRing { len: 4096, .. },
            value,
        }) => assert_eq!(value.len(), 4096),
        other => panic!("{other:?}"),
    }
    ctl_a.send(&sent).unwrap();
    a.send_timeout(sent, WATCHDOG).unwrap();
    child.wait().assert_success();
}

/// Item 4: a corrupted length. A forged header announcing a streamed message that never comes
/// (the hostile peer stays alive) times out instead of blocking; a scribbled ring counter then
/// gives `Corrupted`, and so does a header whose check word is wrong. Never a hang.
#[test]
fn a_corrupted_length_is_an_error_or_a_timeout_never_a_hang() {
    let _watchdog = ipc_tests::watchdog(
        "ipc-pipe faults: a_corrupted_length_is_an_error_or_a_timeout_never_a_hang",
        WATCHDOG,
    );
    let (a, b) = PipeBuilder::new().capacity(4096).duplex().unwrap();
    let (ctl_a, ctl_b) = pipe().unwrap();
    let mut mine = Some((a, ctl_a));
    let child = fork_child(WATCHDOG, || {
        drop(mine.take());
        // 1 MiB announced, 100 bytes sent, then silence while staying alive.
        b.__send_raw(&FrameHeader::new(1 << 20).unwrap().to_bytes())
            .unwrap();
        b.__send_raw(&[7u8; 100]).unwrap();
        ctl_b.send(&"sent").unwrap();
        let _ = ctl_b.recv::<u8>();
        0
    });
    let (a, ctl_a) = mine.take().unwrap();
    assert_eq!(ctl_a.recv::<String>().unwrap(), "sent");
    assert!(matches!(a.try_recv::<Vec<u8>>(), Err(TryRecvError::Empty)));
    assert!(matches!(
        a.recv_bytes_timeout(SHORT),
        Err(RecvTimeoutError::Timeout)
    ));
    // The peer scribbles the ring's counter: an impossible value is `Corrupted` at once.
    a.__corrupt_incoming_tail(u64::MAX / 2);
    assert!(matches!(
        a.recv_bytes_timeout(WATCHDOG),
        Err(RecvTimeoutError::Corrupted(_))
    ));
    assert!(matches!(a.recv::<u8>(), Err(RecvError::Corrupted(_))));
    ctl_a.send(&0u8).unwrap();
    child.wait().assert_success();

    // A header whose check word is wrong (a length that cannot be right): `Corrupted`.
    let (a, b) = PipeBuilder::new().capacity(4096).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_child(WATCHDOG, || {
        drop(a.take());
        let mut h = FrameHeader::new(1 << 20).unwrap().to_bytes();
        h[0] ^= 1;
        b.__send_raw(&h).unwrap();
        let _ = b.recv::<u8>();
        0
    });
    let a = a.unwrap();
    assert!(matches!(
        a.recv_timeout::<u8>(WATCHDOG),
        Err(RecvTimeoutError::Corrupted(_))
    ));
    assert!(matches!(
        a.try_recv::<u8>(),
        Err(TryRecvError::Corrupted(_))
    ));
    drop(a);
    child.wait().assert_success();
}

/// Item 8 (pipe half): a send after the only handle of the peer's end was dropped fails with
/// `Disconnected`, in the same process and across processes (the peer stays alive, so it is
/// the drop, not a death, that is seen); a dropped forked copy with the peer still held
/// elsewhere is not mistaken for it.
#[test]
fn a_send_after_the_peer_was_dropped_is_disconnected() {
    let _watchdog = ipc_tests::watchdog(
        "ipc-pipe faults: a_send_after_the_peer_was_dropped_is_disconnected",
        WATCHDOG,
    );
    let (a, b) = pipe().unwrap();
    drop(b);
    assert!(matches!(a.send(&1u8), Err(SendError::Disconnected)));
    assert!(matches!(a.send_bytes(b"x"), Err(SendError::Disconnected)));
    assert!(matches!(
        a.try_send(1u8),
        Err(TrySendError::Failed {
            error: SendError::Disconnected,
            ..
        })
    ));

    let (a, b) = pipe().unwrap();
    let (ctl_a, ctl_b) = pipe().unwrap();
    let mut mine: Option<(Connection, Connection)> = Some((a, ctl_a));
    let child = fork_child(WATCHDOG, || {
        drop(mine.take());
        assert_eq!(b.recv::<u8>().unwrap(), 1);
        drop(b);
        ctl_b.send(&"dropped").unwrap();
        let _ = ctl_b.recv::<u8>();
        0
    });
    let (a, ctl_a) = mine.take().unwrap();
    // The parent's copy of `b` was dropped at the fork: the peer is still held by the child.
    a.send(&1u8).unwrap();
    assert_eq!(ctl_a.recv::<String>().unwrap(), "dropped");
    assert!(matches!(a.send(&2u8), Err(SendError::Disconnected)));
    ctl_a.send(&0u8).unwrap();
    child.wait().assert_success();
}
