//! Handles inside messages (`ipc_shm::transfer`): descriptor records on the pipe's socket are
//! paired with their message by batch id, also when the receiver sleeps in fd mode (whose
//! drain reads the socket) and when a message with handles was never decoded.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipc_shm::SharedValue;
use ipc_shm::transfer::TransferError;

fn value(v: u32) -> SharedValue<AtomicU32> {
    let s = SharedValue::<AtomicU32>::new_anonymous().expect("value");
    s.store(v, Ordering::Relaxed);
    s
}

#[test]
fn an_undecoded_message_does_not_give_its_descriptors_to_the_next() {
    let _w = ipc_tests::watchdog("orphan batch", Duration::from_secs(60));
    let (a, b) = ipc_pipe::pipe().expect("pipe");
    a.send(&value(1)).expect("send");
    a.send(&value(2)).expect("send");
    // The first message is taken as bytes: its descriptors are never asked for.
    let _ = b.recv_bytes().expect("bytes");
    let second: SharedValue<AtomicU32> = b.recv().expect("second");
    assert_eq!(second.load(Ordering::Relaxed), 2);
    // Bytes that name a batch which never came: a typed error, not a hang.
    let (bytes, batch, _) = ipc_shm::transfer::encode(|| ipc_shm::codec::encode(&value(3)));
    drop(batch);
    a.send_bytes(&bytes.expect("encodes")).expect("send");
    let missing = b.recv::<SharedValue<AtomicU32>>().unwrap_err();
    assert!(
        matches!(
            missing,
            ipc_pipe::RecvError::Transfer(TransferError::Missing { .. })
        ),
        "{missing:?}"
    );
}

#[test]
fn a_receiver_in_fd_mode_keeps_the_descriptors_its_drain_reads() {
    let _w = ipc_tests::watchdog("fd mode", Duration::from_secs(60));
    let (a, b) = ipc_pipe::pipe().expect("pipe");
    b.set_pollable();
    let sender = std::thread::spawn(move || {
        for i in 0..20 {
            a.send(&(i, value(i))).expect("send");
        }
        a
    });
    for i in 0..20u32 {
        let (n, v): (u32, SharedValue<AtomicU32>) =
            b.recv_timeout(Duration::from_secs(10)).expect("recv");
        assert_eq!((n, v.load(Ordering::Relaxed)), (i, i));
    }
    let _a = sender.join().expect("sender");
}

#[test]
fn channel_ends_travel_and_keep_working() {
    let _w = ipc_tests::watchdog("channel ends", Duration::from_secs(60));
    let (a, b) = ipc_pipe::pipe().expect("pipe");
    let (tx, rx) = ipc_pipe::channel().expect("channel");
    a.send(&tx).expect("send the sender");
    let tx2: ipc_pipe::Sender = b.recv().expect("recv the sender");
    // Dropping the given-away original is quiet: the receiver sees no hang-up.
    drop(tx);
    tx2.send(&"hello").expect("send");
    assert_eq!(rx.recv::<String>().expect("recv"), "hello");
    drop(tx2);
    assert!(matches!(
        rx.recv::<String>(),
        Err(ipc_pipe::RecvError::Disconnected)
    ));
}

#[test]
fn a_burst_of_messages_with_handles_keeps_every_batch_until_its_message() {
    let _w = ipc_tests::watchdog("burst", Duration::from_secs(60));
    let (a, b) = ipc_pipe::pipe().expect("pipe");
    // Every record is on the receiver's socket before it receives the first message.
    let values: Vec<_> = (0..200).map(value).collect();
    for v in &values {
        a.send(v).expect("send");
    }
    b.set_pollable();
    for i in 0..200u32 {
        let v: SharedValue<AtomicU32> = b.recv_timeout(Duration::from_secs(10)).expect("recv");
        assert_eq!(v.load(Ordering::Relaxed), i);
    }
}
