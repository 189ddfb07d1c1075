//! Multi-process tests of ipc-pipe: real processes (forked and exec'ed), real shared memory,
//! real SIGKILL. Every child runs under a watchdog; no sleep is used as synchronisation.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use ipc_pipe::{
    Connection, PipeBuilder, RecvError, RecvTimeoutError, SendError, TryRecvError, pipe,
};
use ipc_tests::{child, child_entry, fork_child};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

const WATCHDOG: Duration = Duration::from_secs(60);

/// A checksum that catches reordered, duplicated or corrupted bytes.
fn checksum(data: &[u8]) -> u64 {
    // FNV-1a over 8-byte words, then the tail.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x100000001b3);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h ^ data.len() as u64
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Msg {
    seq: u64,
    text: String,
    payload: Vec<u32>,
}

/// Forks a child that runs `body` with `theirs` (dropping `mine` there first), and drops
/// `theirs` in the parent.
fn fork_with(
    mine: &mut Option<Connection>,
    theirs: Connection,
    body: impl FnOnce(Connection) -> i32,
) -> ipc_tests::ChildProcess {
    fork_child(WATCHDOG, || {
        drop(mine.take());
        body(theirs)
    })
}

#[test]
fn ping_pong_between_processes() {
    // 1M messages (500k round trips each way), in debug builds too (a few seconds).
    let round_trips: u64 = std::env::var("IPC_PIPE_ROUND_TRIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let (a, b) = pipe().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, move |b| {
        for i in 0..round_trips {
            let v: u64 = b.recv().unwrap();
            assert_eq!(v, i);
            b.send(&(v + 1)).unwrap();
        }
        0
    });
    let a = a.unwrap();
    for i in 0..round_trips {
        a.send(&i).unwrap();
        let r: u64 = a.recv().unwrap();
        assert_eq!(r, i + 1);
    }
    child.wait().assert_success();
    assert!(matches!(a.recv::<u64>(), Err(RecvError::Disconnected)));
}

#[test]
fn sizes_from_one_byte_to_64_mib_round_trip_intact() {
    let (a, b) = PipeBuilder::new().capacity(64 * 1024).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        // Echo every message until the parent hangs up.
        loop {
            match b.recv_bytes() {
                Ok(m) => b.send_bytes(&m).unwrap(),
                Err(RecvError::Disconnected) => return 0,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let a = a.unwrap();
    let cap = 64 * 1024;
    let mut sizes = vec![0, 1, 2, 7, 8, 9, 63, 64, 65, 4095, 4096, 4097];
    sizes.extend([
        cap - 16,
        cap - 9,
        cap - 8,
        cap - 7,
        cap,
        cap + 1,
        3 * cap + 5,
    ]);
    sizes.extend([1 << 20, (1 << 20) + 3, 16 << 20, 64 << 20]);
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(len, i as u64);
        a.send_bytes(&data).unwrap();
        let back = a.recv_bytes().unwrap();
        assert_eq!(back.len(), len);
        assert_eq!(checksum(&back), checksum(&data), "size {len}");
    }
    // Typed messages and raw messages share the stream.
    let msg = Msg {
        seq: 9,
        text: "héllo".into(),
        payload: (0..100_000).collect(),
    };
    a.send(&msg).unwrap();
    assert_eq!(a.recv::<Msg>().unwrap(), msg);
    drop(a);
    child.wait().assert_success();
}

#[test]
fn sigkill_mid_stream_gives_disconnected_after_complete_messages() {
    let (a, b) = PipeBuilder::new().capacity(4096).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        // Small messages, then huge ones, forever: the kill lands somewhere in the stream.
        let big = vec![0xABu8; 8 << 20];
        for i in 0u64.. {
            b.send_bytes(&i.to_le_bytes()).unwrap();
            if i >= 1000 {
                b.send_bytes(&big).unwrap();
            }
        }
        0
    });
    let a = a.unwrap();
    for i in 0..1000u64 {
        assert_eq!(a.recv_bytes().unwrap(), i.to_le_bytes());
    }
    child.signal(Signal::SIGKILL);
    // Every complete message is intact, in order; then Disconnected, never a hang.
    let mut expect = 1000u64;
    let mut big_next = false;
    loop {
        match a.recv_bytes() {
            Ok(m) if big_next => {
                assert_eq!(m.len(), 8 << 20);
                assert!(m.iter().all(|&x| x == 0xAB));
                big_next = false;
            }
            Ok(m) => {
                assert_eq!(m, expect.to_le_bytes());
                expect += 1;
                big_next = true;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(a.recv::<u64>(), Err(RecvError::Disconnected)));
    assert!(matches!(
        a.send(&1u8),
        Err(SendError::Disconnected) | Ok(())
    ));
    child.wait();
}

#[test]
fn sleeping_receiver_sees_sigkill() {
    for fd_mode in [false, true] {
        let (a, b) = PipeBuilder::new().spin_limit(0).duplex().unwrap();
        let mut a = Some(a);
        let child = fork_with(&mut a, b, |b| {
            b.send(&"ready").unwrap();
            // Block for ever (until killed) on a message that never comes.
            let _ = b.recv::<u8>();
            1
        });
        let a = a.unwrap();
        if fd_mode {
            let _ = a.as_fd();
        }
        assert_eq!(a.recv::<String>().unwrap(), "ready");
        let pid = child.pid();
        let killer = std::thread::spawn(move || {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        });
        // Blocks (sleeping, futex or poll) until the kill is noticed.
        assert!(matches!(a.recv::<u8>(), Err(RecvError::Disconnected)));
        killer.join().unwrap();
        assert_eq!(child.wait().signal(), Some(Signal::SIGKILL as i32));
    }
}

#[test]
fn blocked_sender_sees_dead_receiver() {
    let (a, b) = PipeBuilder::new().capacity(1024).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        b.send(&"ready").unwrap();
        let _ = b.recv_timeout::<u8>(WATCHDOG);
        1
    });
    let a = a.unwrap();
    assert_eq!(a.recv::<String>().unwrap(), "ready");
    let pid = child.pid();
    let killer = std::thread::spawn(move || {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    });
    // The child never reads: the ring fills, the sender sleeps, and must notice the death.
    let big = vec![1u8; 1 << 20];
    let r = loop {
        if let Err(e) = a.send_bytes(&big) {
            break e;
        }
    };
    assert!(matches!(r, SendError::Disconnected), "{r}");
    killer.join().unwrap();
    child.wait();
}

#[test]
fn drop_and_close_disconnect_after_delivering_everything() {
    // Drop in another process.
    let (a, b) = pipe().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        for i in 0..100u32 {
            b.send(&i).unwrap();
        }
        drop(b);
        0
    });
    let a = a.unwrap();
    for i in 0..100u32 {
        assert_eq!(a.recv::<u32>().unwrap(), i);
    }
    assert!(matches!(a.recv::<u32>(), Err(RecvError::Disconnected)));
    assert!(matches!(
        a.try_recv::<u32>(),
        Err(TryRecvError::Disconnected)
    ));
    assert!(
        a.poll(Duration::ZERO).unwrap(),
        "poll is true once disconnected"
    );
    child.wait().assert_success();

    // Explicit close in the same process: the peer's sends fail at once.
    let (a, b) = pipe().unwrap();
    a.send(&1u8).unwrap();
    a.close();
    assert_eq!(b.recv::<u8>().unwrap(), 1);
    assert!(matches!(b.recv::<u8>(), Err(RecvError::Disconnected)));
    assert!(matches!(b.send(&2u8), Err(SendError::Disconnected)));
}

#[test]
fn timeouts_and_try_recv() {
    let (a, b) = pipe().unwrap();
    assert!(matches!(b.try_recv::<u8>(), Err(TryRecvError::Empty)));
    let t = Instant::now();
    assert!(matches!(
        b.recv_timeout::<u8>(Duration::from_millis(30)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    a.send(&5u8).unwrap();
    assert_eq!(b.recv_timeout::<u8>(Duration::from_secs(5)).unwrap(), 5);
    // Wrong type: a decode error, and the stream stays usable.
    a.send(&"not a number").unwrap();
    assert!(matches!(b.recv::<Vec<Msg>>(), Err(RecvError::Decode(_))));
    a.send(&6u8).unwrap();
    assert_eq!(b.try_recv::<u8>().unwrap(), 6);
}

fn poll_loop(readers: &[Connection], per_child: u64, use_epoll: bool) {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    let mut next = vec![0u64; readers.len()];
    let mut open = vec![true; readers.len()];
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    if use_epoll {
        for (i, r) in readers.iter().enumerate() {
            epoll
                .add(r.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                .unwrap();
        }
    }
    let deadline = Instant::now() + WATCHDOG;
    // Drain once first (messages may predate the registration), then wait for readiness.
    let mut ready: Vec<usize> = (0..readers.len()).collect();
    while open.iter().any(|o| *o) {
        assert!(Instant::now() < deadline, "poll loop stuck");
        for &i in &ready {
            loop {
                match readers[i].try_recv::<u64>() {
                    Ok(v) => {
                        assert_eq!(v, next[i], "reader {i}");
                        next[i] += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open[i] = false;
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        ready.clear();
        if !open.iter().any(|o| *o) {
            break;
        }
        if use_epoll {
            let mut events = [EpollEvent::empty(); 8];
            let n = epoll.wait(&mut events, 10_000u16).unwrap();
            ready.extend(events[..n].iter().map(|e| e.data() as usize));
        } else {
            let mut fds: Vec<PollFd<'_>> = readers
                .iter()
                .map(|r| PollFd::new(r.as_fd(), PollFlags::POLLIN))
                .collect();
            nix::poll::poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
            ready.extend(
                fds.iter()
                    .enumerate()
                    .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(i, _)| i),
            );
        }
        for i in ready.clone() {
            if !open[i] {
                ready.retain(|&j| j != i);
            }
        }
    }
    assert!(next.iter().all(|&n| n == per_child), "{next:?}");
}

fn readiness_over_several_pipes(use_epoll: bool) {
    const PIPES: usize = 4;
    const PER_CHILD: u64 = 5_000;
    let mut readers = Vec::new();
    let mut children = Vec::new();
    for k in 0..PIPES {
        let (a, b) = pipe().unwrap();
        let mut a = Some(a);
        children.push(fork_with(&mut a, b, move |b| {
            for i in 0..PER_CHILD {
                b.send(&i).unwrap();
                if i % (100 + k as u64 * 37) == 0 {
                    // Pause now and then, so the reader empties the ring and sleeps in poll.
                    std::thread::yield_now();
                }
            }
            0
        }));
        readers.push(a.unwrap());
    }
    poll_loop(&readers, PER_CHILD, use_epoll);
    for c in children {
        c.wait().assert_success();
    }
}

#[test]
fn readiness_with_poll_over_several_pipes() {
    readiness_over_several_pipes(false);
}

#[test]
fn readiness_with_epoll_over_several_pipes() {
    readiness_over_several_pipes(true);
}

#[test]
fn wait_over_several_connections() {
    const PIPES: usize = 3;
    const PER_CHILD: u64 = 2_000;
    let mut readers = Vec::new();
    let mut children = Vec::new();
    for _ in 0..PIPES {
        let (a, b) = PipeBuilder::new().capacity(1024).duplex().unwrap();
        let mut a = Some(a);
        children.push(fork_with(&mut a, b, |b| {
            for i in 0..PER_CHILD {
                b.send(&i).unwrap();
            }
            0
        }));
        readers.push(a.unwrap());
    }
    let refs: Vec<&Connection> = readers.iter().collect();
    let mut next = [0u64; PIPES];
    let mut open = [true; PIPES];
    let deadline = Instant::now() + WATCHDOG;
    while open.iter().any(|o| *o) {
        assert!(Instant::now() < deadline);
        let live: Vec<&Connection> = (0..PIPES).filter(|&i| open[i]).map(|i| refs[i]).collect();
        let idx: Vec<usize> = (0..PIPES).filter(|&i| open[i]).collect();
        let ready = ipc_pipe::wait(&live, Some(Duration::from_secs(10))).unwrap();
        assert!(!ready.is_empty(), "wait timed out with live senders");
        for r in ready {
            let i = idx[r];
            match readers[i].recv::<u64>() {
                Ok(v) => {
                    assert_eq!(v, next[i]);
                    next[i] += 1;
                }
                Err(RecvError::Disconnected) => open[i] = false,
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(next, [PER_CHILD; PIPES]);
    for c in children {
        c.wait().assert_success();
    }
    // Nothing ready: an empty list after the timeout.
    let (_x, y) = pipe().unwrap();
    assert!(
        ipc_pipe::wait(&[&y], Some(Duration::from_millis(5)))
            .unwrap()
            .is_empty()
    );
}

child_entry! {
    fn exec_echo_child() {
        let conn = Connection::from_inherited("IPC_PIPE_TEST").unwrap();
        loop {
            match conn.recv::<Msg>() {
                Ok(mut m) => {
                    m.seq += 1;
                    conn.send(&m).unwrap();
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn exec_receiver_child() {
        let rx = ipc_pipe::Receiver::from_inherited("IPC_PIPE_RX").unwrap();
        let mut sum = 0u64;
        loop {
            match rx.recv::<u64>() {
                Ok(v) => sum += v,
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(sum, (0..10_000u64).sum::<u64>());
    }
}

#[test]
fn pass_an_end_across_exec() {
    let (a, b) = pipe().unwrap();
    let mut cmd = child!(exec_echo_child).watchdog(WATCHDOG);
    b.pass_to_command(cmd.command_mut(), "IPC_PIPE_TEST")
        .unwrap();
    let child = cmd.spawn();
    drop(b);
    for seq in 0..1000 {
        let m = Msg {
            seq,
            text: format!("m{seq}"),
            payload: vec![seq as u32; (seq % 50) as usize],
        };
        a.send(&m).unwrap();
        let back: Msg = a.recv().unwrap();
        assert_eq!(back.seq, seq + 1);
        assert_eq!(back.payload, m.payload);
    }
    drop(a);
    child.wait().assert_success();

    // One-way form.
    let (tx, rx) = ipc_pipe::channel().unwrap();
    let mut cmd = child!(exec_receiver_child).watchdog(WATCHDOG);
    rx.pass_to_command(cmd.command_mut(), "IPC_PIPE_RX")
        .unwrap();
    let child = cmd.spawn();
    drop(rx);
    for v in 0..10_000u64 {
        tx.send(&v).unwrap();
    }
    drop(tx);
    child.wait().assert_success();
}

#[test]
fn corrupted_control_block_is_an_error_not_a_crash() {
    let (a, b) = pipe().unwrap();
    a.send(&1u8).unwrap();
    b.__corrupt_incoming_tail(u64::MAX / 3);
    assert!(matches!(b.recv::<u8>(), Err(RecvError::Corrupted(_))));
    assert!(matches!(
        b.try_recv::<u8>(),
        Err(TryRecvError::Corrupted(_))
    ));

    // A peer announcing a message beyond the receiver's limit: an error, no huge allocation.
    let (a, b) = PipeBuilder::new()
        .max_message_size(1 << 16)
        .duplex()
        .unwrap();
    assert!(matches!(
        a.send_bytes(&vec![0u8; 1 << 17]),
        Err(SendError::TooLarge { .. })
    ));
    drop(b);
}

#[test]
fn a_forked_copy_in_use_elsewhere_is_detected() {
    let (a, b) = pipe().unwrap();
    let mut a_opt = Some(a);
    // The child uses `b` (claiming it) and keeps it until told to exit.
    let child = fork_child(WATCHDOG, || {
        drop(a_opt.take());
        assert!(!b.poll(Duration::ZERO).unwrap()); // a slow path: claims the end
        b.send(&"claimed").unwrap();
        let _ = b.recv::<u8>();
        0
    });
    let a = a_opt.unwrap();
    assert_eq!(a.recv::<String>().unwrap(), "claimed");
    // The parent's copy of `b` is now a misuse.
    assert!(matches!(
        b.try_recv::<u8>(),
        Err(TryRecvError::WrongProcess { owner }) if owner == child.pid()
    ));
    a.send(&0u8).unwrap();
    child.wait().assert_success();
    drop(b);
}

#[test]
fn quiet_messages_survive_the_senders_death() {
    let (a, b) = pipe().unwrap();
    let mut a_opt = Some(a);
    // The receiver sleeps in recv while the child sends quietly (no wake-up), then dies by
    // SIGKILL: the hang-up wakes the receiver, which still gets every message, then
    // Disconnected.
    let child = fork_child(WATCHDOG, || {
        drop(a_opt.take());
        for i in 0..3u8 {
            b.send_bytes_quiet(&[i; 10]).unwrap();
        }
        nix::sys::signal::raise(Signal::SIGKILL).unwrap();
        0
    });
    let a = a_opt.unwrap();
    drop(b);
    for i in 0..3u8 {
        assert_eq!(a.recv_bytes().unwrap(), vec![i; 10]);
    }
    assert!(matches!(a.recv_bytes(), Err(RecvError::Disconnected)));
    assert_eq!(child.wait().signal(), Some(9));
}

#[test]
fn quiet_sends_stay_quiet_while_the_receiver_keeps_up() {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let readable = |c: &Connection| {
        let mut fds = [PollFd::new(c.readiness_fd(), PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
    };
    // A 4 KiB ring; the receiver drains after every batch of quiet sends (a quarter of the
    // ring each), so the ring is never half full. Many batches push the sender's view of the
    // receiver's head far behind: the sender must read it afresh rather than wake the
    // receiver as if the ring were filling up.
    let (a, b) = PipeBuilder::new().capacity(4096).duplex().unwrap();
    b.set_pollable();
    assert!(matches!(b.try_recv::<u8>(), Err(TryRecvError::Empty)));
    for batch in 0..64u8 {
        for i in 0..4u8 {
            a.send_bytes_quiet(&[batch ^ i; 248]).unwrap();
        }
        assert!(
            !readable(&b),
            "batch {batch}: a quiet send woke the receiver"
        );
        for i in 0..4u8 {
            assert_eq!(b.recv_bytes().unwrap(), vec![batch ^ i; 248]);
        }
        // Empty: the receiver arms its readiness descriptor again.
        assert!(matches!(b.try_recv::<u8>(), Err(TryRecvError::Empty)));
    }
    // A loud send still wakes it.
    a.send_bytes(b"wake").unwrap();
    assert!(readable(&b));
    assert_eq!(b.recv_bytes().unwrap(), b"wake");
}

#[test]
fn explicit_pollable_switch_and_side_effect_free_fd() {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let readable = |c: &Connection| {
        let mut fds = [PollFd::new(c.readiness_fd(), PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
    };

    // `readiness_fd` alone leaves the end in futex mode: a message does not make it readable.
    let (a, b) = pipe().unwrap();
    let _ = b.readiness_fd();
    assert!(!b.is_pollable());
    a.send(&1u8).unwrap();
    assert!(!readable(&b));
    assert_eq!(b.recv::<u8>().unwrap(), 1);

    // After `set_pollable` it does, and draining with `try_recv` re-arms it.
    b.set_pollable();
    assert!(b.is_pollable());
    assert!(!readable(&b));
    a.send(&2u8).unwrap();
    assert!(readable(&b));
    assert_eq!(b.try_recv::<u8>().unwrap(), 2);
    assert!(matches!(b.try_recv::<u8>(), Err(TryRecvError::Empty)));
    assert!(!readable(&b));

    // The by-value form and the one-way receiver.
    let (tx, rx) = ipc_pipe::channel().unwrap();
    let rx = rx.pollable();
    assert!(rx.is_pollable());
    tx.send(&3u8).unwrap();
    let mut fds = [PollFd::new(rx.readiness_fd(), PollFlags::POLLIN)];
    assert_eq!(nix::poll::poll(&mut fds, PollTimeout::ZERO).unwrap(), 1);
    assert_eq!(rx.try_recv::<u8>().unwrap(), 3);
    let a = a.pollable();
    assert!(a.is_pollable());
}
