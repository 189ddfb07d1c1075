//! Loom models of the pipe's real send and receive paths (`tx.rs`, `rx.rs`): the same
//! [`End`] code that ships, over heap memory (`ipc_shm`'s shared byte ring in its loom backend,
//! [`LoomRing`], so loom also checks every byte copy against the counters' ordering), loom's
//! futex model (the [`Futex`] type is loom's model under `--cfg loom`) and a modelled link whose
//! "socket" is a flag set when an end goes away.
//!
//! What they check: no lost wake-up when a message is handed to a sleeping receiver; the ring
//! full/empty hand-offs of a message larger than the ring (both sides sleep and wake each
//! other); a receiver asleep when its peer closes or is dropped, and a sender asleep on a full
//! ring when its peer is dropped, end with `Disconnected`; a receiver whose peer was killed
//! (socket closed, nobody wakes it) notices at the end of a futex slice; `try_recv` of a
//! streamed message resumes it whole, `try_send` writes whole frames only, and a send after
//! the peer's drop fails (issue 14); the async receive and send (feature `tokio`) are woken
//! through the readiness fd (`ARMED` and a readiness byte, modelled as a counter with a futex).
//! A hang shows up as a loom deadlock. The ends
//! never spin (`Backoff::never()`, and a backoff never spins under loom anyway), so every wait
//! goes through the futex slow path; the blocking fd-mode sleep (a `poll(2)` on the socket) is
//! not modelled.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p ipc-pipe --release --lib`.

use loom::sync::Arc;
use loom::sync::atomic::AtomicBool;
use loom::thread;

use ipc_shm::{ByteRing, LoomRing};
use ipc_sync::{Backoff, Futex, Waiter};

use crate::end::{End, Link, Settings};
use crate::error::{Fail, SendError};
use crate::ring::Control;
use crate::sync::{AtomicU32, Ordering};

/// The modelled socket of one end: hang-up is "the peer's flag is set"; readiness bytes are a
/// counter per end (`notify` adds one to the peer's and wakes it, `drain` empties this end's),
/// which a modelled async task awaits ([`ModelLink::await_readable`]).
#[derive(Debug)]
struct ModelLink {
    mine: Arc<AtomicBool>,
    peer: Arc<AtomicBool>,
    ready_mine: Arc<AtomicU32>,
    ready_peer: Arc<AtomicU32>,
}

impl ModelLink {
    /// What an async task's `AsyncFd::readable().await` does here: sleep until a readiness
    /// byte is pending (a lost byte shows up as a loom deadlock).
    fn await_readable(&self) {
        while self.ready_mine.load(Ordering::SeqCst) == 0 {
            Futex.wait(&self.ready_mine, 0, None);
        }
    }
}

impl Link for ModelLink {
    fn hung_up(&self) -> bool {
        self.peer.load(Ordering::SeqCst)
    }

    fn drain(&self) -> bool {
        self.ready_mine.swap(0, Ordering::SeqCst);
        self.hung_up()
    }

    fn notify(&self) {
        self.ready_peer.fetch_add(1, Ordering::SeqCst);
        Futex.wake(&self.ready_peer, u32::MAX);
    }

    fn sleep(&self, _timeout: Option<std::time::Duration>) {
        thread::yield_now();
    }

    fn pid(&self) -> u32 {
        1
    }

    fn process_exists(&self, _pid: u32) -> bool {
        true
    }
}

/// One ring's bytes, shared by its producer end and its consumer end (as the segment is).
#[derive(Debug, Clone)]
struct SharedRing(Arc<LoomRing>);

impl ByteRing for SharedRing {
    fn cap(&self) -> usize {
        self.0.cap()
    }

    fn write_at(&self, off: usize, src: &[u8]) {
        self.0.write_at(off, src)
    }

    fn read_at(&self, off: usize, dst: &mut [u8]) {
        self.0.read_at(off, dst)
    }

    fn append_at(&self, off: usize, n: usize, out: &mut Vec<u8>) {
        self.0.append_at(off, n, out)
    }
}

type ModelEnd = End<Arc<Control>, SharedRing, Futex, ModelLink>;

/// Two connected ends; ring 0 (end 0 -> end 1) holds `caps[0]` bytes, ring 1 `caps[1]`.
fn pair(caps: [usize; 2]) -> (ModelEnd, ModelEnd) {
    ipc_sync::waiter::loom_timeouts_fire(false);
    let ctl = Arc::new(Control::new_model(caps));
    let bytes = caps.map(|cap| SharedRing(Arc::new(LoomRing::new(cap).unwrap())));
    let flags = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let settings = Settings {
        backoff: Backoff::never(),
        max_message: 1 << 20,
    };
    let ready = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let link = |me: usize| ModelLink {
        mine: flags[me].clone(),
        peer: flags[1 - me].clone(),
        ready_mine: ready[me].clone(),
        ready_peer: ready[1 - me].clone(),
    };
    let a = End::attach(
        ctl.clone(),
        0,
        bytes[0].clone(),
        bytes[1].clone(),
        Futex,
        link(0),
        settings.clone(),
    )
    .unwrap();
    let b = End::attach(
        ctl,
        1,
        bytes[1].clone(),
        bytes[0].clone(),
        Futex,
        link(1),
        settings,
    )
    .unwrap();
    (a, b)
}

/// What `Connection`'s drop does: close the socket, then say goodbye.
fn drop_end(end: ModelEnd) {
    end.link.mine.store(true, Ordering::SeqCst);
    end.say_goodbye();
}

fn send(end: &ModelEnd, body: &[u8]) -> Result<(), SendError> {
    let head = end.check_send_len(body.len())?;
    end.send_frame(head, &[body], false)
}

fn recv(end: &ModelEnd) -> Result<Vec<u8>, Fail> {
    let mut buf = Vec::new();
    end.recv_into_vec(&mut buf, None, false)?;
    Ok(buf)
}

/// A receiver that sleeps for a message is woken by the send (no lost wake-up), and gets the
/// message whole.
#[test]
fn message_to_a_sleeping_receiver_is_not_lost() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let sender = thread::spawn(move || {
            send(&a, &[1, 2, 3]).unwrap();
            a
        });
        assert_eq!(recv(&b).unwrap(), [1, 2, 3]);
        drop(sender.join().unwrap());
    });
}

/// A message larger than the ring: the sender fills it and sleeps for space, the receiver
/// copies out and sleeps for data, each waking the other, and the bytes arrive in order.
#[test]
fn message_larger_than_the_ring_is_handed_off() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let msg: Vec<u8> = (0..72).collect();
        let expected = msg.clone();
        let sender = thread::spawn(move || {
            send(&a, &msg).unwrap();
            a
        });
        assert_eq!(recv(&b).unwrap(), expected);
        drop(sender.join().unwrap());
    });
}

/// A receiver asleep on an empty ring when its peer closes (and drops) its end: woken, and
/// `Disconnected` after the messages sent before.
#[test]
fn close_wakes_a_sleeping_receiver() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let closer = thread::spawn(move || {
            send(&a, &[7]).unwrap();
            a.close();
            drop_end(a);
        });
        assert_eq!(recv(&b).unwrap(), [7]);
        assert!(matches!(recv(&b), Err(Fail::Disconnected)));
        closer.join().unwrap();
    });
}

/// A sender asleep on a full ring when the receiver's end is dropped (its process dies or
/// drops it without closing): woken by `GONE`, finds the hang-up, `Disconnected`.
#[test]
fn drop_wakes_a_sender_waiting_for_space() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let dropper = thread::spawn(move || drop_end(b));
        let r = send(&a, &[0u8; 64]);
        assert!(matches!(r, Err(SendError::Disconnected)), "{r:?}");
        dropper.join().unwrap();
    });
}

/// A receiver asleep when its peer's handle is dropped without `close` (the peer's socket
/// closes, `GONE` wakes the receiver): it gets what was sent, then `Disconnected`.
#[test]
fn drop_wakes_a_sleeping_receiver() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let dropper = thread::spawn(move || {
            send(&a, &[9]).unwrap();
            drop_end(a);
        });
        assert_eq!(recv(&b).unwrap(), [9]);
        assert!(matches!(recv(&b), Err(Fail::Disconnected)));
        dropper.join().unwrap();
    });
}

/// A sender killed by `SIGKILL` cannot set `GONE` or wake anyone: only its socket closes. The
/// receiver, asleep in a futex slice, notices the hang-up when the slice times out. (The loom
/// futex lets time pass once, so the message is sent with a wake-up and only the wait for the
/// next one needs the timeout.)
#[test]
fn sigkilled_sender_is_noticed_after_a_slice() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let killed = thread::spawn(move || {
            send(&a, &[5]).unwrap();
            // The kernel closes the dead process's socket; time passes for the sleeper.
            a.link.mine.store(true, Ordering::SeqCst);
            ipc_sync::waiter::loom_time_passes();
        });
        assert_eq!(recv(&b).unwrap(), [5]);
        assert!(matches!(recv(&b), Err(Fail::Disconnected)));
        killed.join().unwrap();
    });
}

/// `try_recv` of a message larger than the ring (issue 14, item 4): each non-blocking receive
/// moves what arrived into the end's partial state and returns `Empty`, the sender goes on
/// with the freed space, and the message is handed out once, whole and in order.
#[test]
fn try_recv_resumes_a_streamed_message() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let msg: Vec<u8> = (0..72).collect();
        let expected = msg.clone();
        let sender = thread::spawn(move || {
            send(&a, &msg).unwrap();
            a
        });
        let mut buf = Vec::new();
        loop {
            match b.recv_into_vec(&mut buf, None, true) {
                Ok(()) => break,
                Err(Fail::Empty) => thread::yield_now(),
                Err(f) => panic!("{f:?}"),
            }
        }
        assert_eq!(buf, expected);
        drop(sender.join().unwrap());
    });
}

/// `try_send` (issue 14, item 4): a frame is written only when the ring has room for all of
/// it, so a sender that retries on `Empty` (full) never leaves half a frame, and a blocking
/// receiver gets both messages whole (no lost wake-up on either side).
#[test]
fn try_send_writes_whole_frames_only() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let sender = thread::spawn(move || {
            for byte in [1u8, 2] {
                let body = [byte; 40];
                let head = a.check_send_len(body.len()).unwrap();
                loop {
                    match a.send_frame_within(head, &body, None, true) {
                        Ok(()) => break,
                        Err(Fail::Empty) => thread::yield_now(),
                        Err(f) => panic!("{f:?}"),
                    }
                }
            }
            a
        });
        assert_eq!(recv(&b).unwrap(), [1u8; 40]);
        assert_eq!(recv(&b).unwrap(), [2u8; 40]);
        drop(sender.join().unwrap());
    });
}

/// A send after the peer's only handle was dropped (issue 14, item 8) fails at once with
/// `Disconnected`, even into an empty ring: the drop counter tells the sender to check.
#[test]
fn send_after_the_peer_was_dropped_fails() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let dropper = thread::spawn(move || drop_end(b));
        dropper.join().unwrap();
        assert!(matches!(send(&a, &[1]), Err(SendError::Disconnected)));
    });
}

/// The async receive (`async_io.rs`, feature `tokio`): an end in fd mode retries the
/// non-blocking receive and otherwise awaits its readiness fd. The sender's publication must
/// reach it through `ARMED` and a readiness byte (a lost one is a loom deadlock), and the
/// messages arrive whole and in order.
#[test]
fn async_recv_is_woken_through_the_fd() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        b.fd_mode.set(true);
        let sender = thread::spawn(move || {
            send(&a, &[1, 2, 3]).unwrap();
            send(&a, &[4]).unwrap();
            a
        });
        for expected in [&[1u8, 2, 3][..], &[4]] {
            let mut buf = Vec::new();
            loop {
                match b.recv_into_vec(&mut buf, None, true) {
                    Ok(()) => break,
                    Err(Fail::Empty) => b.link.await_readable(),
                    Err(f) => panic!("{f:?}"),
                }
            }
            assert_eq!(buf, expected);
        }
        drop(sender.join().unwrap());
    });
}

/// The async send (`async_io.rs`): on a full ring it arms `ARMED` in `tx_wait`
/// (`End::arm_tx_fd`) and awaits its readiness fd; the receiver freeing room must write the
/// byte that wakes it (a lost one is a loom deadlock), and the frames arrive whole.
#[test]
fn async_send_is_woken_through_the_fd_when_room_appears() {
    loom::model(|| {
        let (a, b) = pair([64, 64]);
        let receiver = thread::spawn(move || {
            assert_eq!(recv(&b).unwrap(), [1u8; 40]);
            assert_eq!(recv(&b).unwrap(), [2u8; 40]);
            b
        });
        a.fd_mode.set(true);
        for byte in [1u8, 2] {
            let body = [byte; 40];
            let head = a.check_send_len(body.len()).unwrap();
            loop {
                match a.send_frame_within(head, &body, None, true) {
                    Ok(()) => break,
                    Err(Fail::Empty) => {}
                    Err(f) => panic!("{f:?}"),
                }
                if !a.arm_tx_fd(48).unwrap() {
                    a.link.await_readable();
                }
            }
        }
        drop(receiver.join().unwrap());
    });
}
