//! The OS layer's process and socket helpers, as the pool and the test harness use them.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use ipc_shm::os::{self, ExitStatus, Signal};

const WATCHDOG: Duration = Duration::from_secs(30);

/// Waits for a forked child under a watchdog (killing it if it overstays), then reaps it.
fn wait_and_reap(pid: u32) -> ExitStatus {
    let pidfd = os::pidfd(pid).expect("pidfd of our child");
    if !os::wait_exit(&pidfd, WATCHDOG).expect("poll the pidfd") {
        os::kill(pid, Signal::SIGKILL).expect("kill");
        let _ = os::reap(pid);
        panic!("watchdog: the forked child did not exit");
    }
    os::reap(pid).expect("waitpid")
}

#[test]
fn a_forked_child_exits_with_its_code_and_closes_what_it_was_told() {
    let (a, b) = os::seqpacket_pair().expect("socketpair");
    let raw = a.as_raw_fd();
    let pid =
        os::fork_then(&[a.as_fd()], move || if os::is_open(raw) { 1 } else { 7 }).expect("fork");
    assert_eq!(wait_and_reap(pid), ExitStatus::Code(7));
    // The parent's descriptors are untouched.
    assert!(os::is_open(a.as_raw_fd()) && os::is_open(b.as_raw_fd()));
}

#[test]
fn a_killed_child_is_reaped_with_its_signal() {
    let (parent_end, child_end) = os::seqpacket_pair().expect("socketpair");
    let pid = os::fork_then(&[parent_end.as_fd()], move || {
        // Blocks until the parent kills us (or goes away: then the read returns end of stream).
        let _ = os::wait_readable(&[child_end.as_fd()], Some(WATCHDOG));
        0
    })
    .expect("fork");
    assert_eq!(os::try_reap(pid).expect("waitpid"), None);
    os::kill(pid, Signal::SIGKILL).expect("kill");
    assert_eq!(
        wait_and_reap(pid),
        ExitStatus::Signal(Signal::SIGKILL as i32)
    );
    // A process that is gone is not an error to kill.
    os::kill(pid, Signal::SIGKILL).expect("kill of a reaped pid");
    assert_eq!(os::signal_name(9), Some("SIGKILL"));
}

#[test]
fn descriptors_cross_a_socket_with_their_message() {
    let (a, b) = os::seqpacket_pair().expect("socketpair");
    let file = os::memfd("os-test").expect("memfd");
    let mut w = std::fs::File::from(file.try_clone().expect("dup"));
    w.write_all(b"hello").expect("write");
    os::send_with_fds(a.as_fd(), b"msg", &[file.as_fd()]).expect("sendmsg");
    let mut buf = [0u8; 16];
    let (len, fds) = os::recv_with_fds(b.as_fd(), &mut buf).expect("recvmsg");
    assert_eq!(&buf[..len], b"msg");
    assert_eq!(fds.len(), 1);
    let mut r = std::fs::File::from(fds.into_iter().next().expect("one fd"));
    r.seek(SeekFrom::Start(0)).expect("seek");
    let mut s = String::new();
    r.read_to_string(&mut s).expect("read");
    assert_eq!(s, "hello");
    // Too many descriptors is a typed error, not a truncated message.
    let many = [file.as_fd(); os::MAX_FDS + 1];
    assert!(os::send_with_fds(a.as_fd(), b"x", &many).is_err());
    // End of stream.
    drop(a);
    assert_eq!(
        os::recv_with_fds(b.as_fd(), &mut buf).expect("recvmsg").0,
        0
    );
}

#[test]
fn waiting_with_the_longest_timeout_does_not_overflow_the_clock() {
    let _watchdog = ipc_tests::watchdog("wait_exit(Duration::MAX)", WATCHDOG);
    let pid = os::fork_then(&[], || 5).expect("fork");
    let pidfd = os::pidfd(pid).expect("pidfd of our child");
    // `Instant::now() + Duration::MAX` panics; the wait must treat it as "no deadline".
    assert!(os::wait_exit(&pidfd, Duration::MAX).expect("poll the pidfd"));
    assert_eq!(os::reap(pid).expect("waitpid"), ExitStatus::Code(5));
}

/// A thread pidfd in a one-shot epoll set reports its key once the thread exits (Linux 6.9;
/// older kernels refuse the pidfd with EINVAL), and nothing while it runs.
#[test]
fn an_epoll_set_reports_a_thread_pidfd_once_the_thread_exits() {
    let epoll = os::Epoll::new().expect("epoll");
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // "<pid>/task/<tid>"
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
        tx.send(tid).unwrap();
        go_rx.recv().unwrap();
    });
    let tid = rx.recv().unwrap();
    let pidfd = match os::pidfd_thread(tid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            go_tx.send(()).unwrap();
            thread.join().unwrap();
            return;
        }
        Err(e) => panic!("pidfd_thread: {e}"),
    };
    epoll.add_oneshot(pidfd.as_fd(), 42).expect("add");
    let mut keys = Vec::new();
    epoll.wait(&mut keys, Some(Duration::ZERO)).expect("wait");
    assert!(keys.is_empty(), "a running thread's pidfd fired");
    go_tx.send(()).unwrap();
    thread.join().unwrap();
    epoll.wait(&mut keys, Some(WATCHDOG)).expect("wait");
    assert_eq!(keys, [42]);
    // One-shot: it does not report again.
    epoll.wait(&mut keys, Some(Duration::ZERO)).expect("wait");
    assert!(keys.is_empty());
    epoll.remove(pidfd.as_fd()).expect("remove");
    // A thread that is gone: ESRCH.
    let gone = os::pidfd_thread(tid).expect_err("the thread has exited");
    assert_eq!(gone.raw_os_error(), Some(os::ESRCH));
}
