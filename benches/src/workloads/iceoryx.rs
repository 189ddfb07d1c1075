//! iceoryx2, the strongest Rust IPC peer, in the pipe round trips and the 1 -> 1 queue stream,
//! in each of the messaging patterns it offers for them, with the settings its own benchmarks
//! use:
//!
//! | contender | workload | pattern |
//! |---|---|---|
//! | [`ping_pong`] | `pipe_rtt_hot` | publish-subscribe, receivers polling `receive()` in a busy loop |
//! | [`request_response`] | `pipe_rtt_hot` | request-response: the client polls its pending response, the server its requests |
//! | [`ping_pong_notified`] | `pipe_rtt_asleep` | publish-subscribe with an event service beside it: each sample is followed by a notification, and a receiver with nothing to take sleeps in its listener's wait (iceoryx2's blocking pattern; on Linux the listener sleeps on a Unix datagram socket) |
//! | [`stream`] | `queue_spsc` | publish-subscribe, the consumer polling in a busy loop |
//!
//! Every message is copied into a loaned sample (iceoryx2's `send-copy` mode) and out of the
//! received one, so both sides copy the bytes once, as ours do. Its services live in shared
//! memory of its own; the child is stopped through the gate (below), never killed, so every
//! port and node is dropped and iceoryx2 removes what it created.
//!
//! ## The gate
//!
//! The child busy-polls only while its contender is being measured. The runner interleaves the
//! contenders of a workload, and a child that polled all the time took most of one of the two
//! vCPUs away from every other contender's samples (`ps`: the drain child at 73-80% CPU through
//! a whole `queue_spsc/64KiB` run, where ours measured 8.0-9.5 GB/s against 16.7 GB/s with no
//! iceoryx2 contender set up, same hour). Between samples the child sleeps on a futex word in
//! shared memory:
//!
//! | word | set by | the child |
//! |---|---|---|
//! | `CHILD_READY` | the child, in set-up | has its ports, waits for the parent's |
//! | `PARENT_READY` | the parent, in set-up | attaches its subscriber to the parent's publisher |
//! | `IDLE` | the child, attached (end of set-up); the parent, after a sample | finishes what it holds, then sleeps on the word |
//! | `RUN` | the parent, before a sample (and wakes the word) | stores `RUNNING`, wakes the word, polls |
//! | `RUNNING` | the child | polls `receive()` until the word leaves `RUNNING` |
//! | `STOP` | the parent, when dropped | returns (its ports and node are dropped) |
//!
//! The event contender's child sleeps in its listener while `RUNNING` (in slices of
//! [`WAIT_SLICE`], so that it sees the word change), where the others poll.
//!
//! The parent starts its clock only once the child says `RUNNING`, so no sample pays for the
//! child's wake-up. Set-up ends only once the child's subscriber is attached: iceoryx2 drops a
//! sample sent into a full buffer whose subscriber has not attached yet, and a child that first
//! attached in its first sample lost the start of the stream and hung the run (1 run in 3).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::client::Client;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::server::Server;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;

use ipc_sync::futex;

use super::{ContenderSpec, Kind, Runner};
use crate::proc::{Child, fork};

/// The child has its ports: the parent may create its own.
const CHILD_READY: u32 = 1;
/// The parent has its ports: the child may start echoing.
const PARENT_READY: u32 = 2;
/// The child could not set up (its error went to stderr).
const CHILD_FAILED: u32 = 3;
/// The child's subscriber is connected to the parent's publisher; between samples: the child
/// sleeps (see the module's gate).
const IDLE: u32 = 7;
/// A sample starts: the child is to poll.
const RUN: u32 = 4;
/// The child polls.
const RUNNING: u32 = 5;
/// The contender is dropped: the child returns.
const STOP: u32 = 6;

type Service = ipc::Service;

/// Samples a subscriber buffers: one in flight each way for the round trip.
const PING_PONG_BUFFER: usize = 2;
/// Samples a subscriber buffers in the stream: enough that the publisher rarely waits for the
/// subscriber (the thread channels here allow 1024 in flight; 256 samples of 64 KiB already make
/// a 16 MiB data segment).
const STREAM_BUFFER: usize = 256;
type Tx = Publisher<Service, [u8], ()>;
type Rx = Subscriber<Service, [u8], ()>;
type Requester = Client<Service, [u8], (), [u8], ()>;
type Responder = Server<Service, [u8], (), [u8], ()>;
type RequestService =
    iceoryx2::service::port_factory::request_response::PortFactory<Service, [u8], (), [u8], ()>;
/// How long a listener sleeps at most before its owner looks at the gate's word again (a
/// notification ends the sleep at once).
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// iceoryx2's configuration for one contender: its files (shared memory in `/dev/shm`, node and
/// service records under a root directory) carry a prefix of our own, so that [`Leftovers`]
/// can remove what iceoryx2 keeps after its last node is gone (its global management segment).
fn config(tag: &str) -> Result<Config, String> {
    let mut c = Config::default();
    c.global.prefix = FileName::new(format!("iox2bench{tag}_").as_bytes())
        .map_err(|e| format!("iceoryx2 prefix: {e:?}"))?;
    c.global.set_root_path(
        &Path::new(root_dir(tag).as_bytes()).map_err(|e| format!("iceoryx2 root: {e:?}"))?,
    );
    Ok(c)
}

fn root_dir(tag: &str) -> String {
    format!("/tmp/iox2bench{tag}/")
}

/// Removes a contender's iceoryx2 files once its nodes are gone.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let prefix = format!("iox2bench{}_", self.0);
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(root_dir(&self.0));
    }
}

fn node(config: &Config) -> Result<Node<Service>, String> {
    NodeBuilder::new()
        .config(config)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<Service>()
        .map_err(|e| format!("iceoryx2 node: {e:?}"))
}

/// Unique service names for one contender (several may exist in one run).
fn names() -> (String, String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}x{n}", std::process::id());
    let base = format!("ipc-bench/{tag}");
    (format!("{base}/ping"), format!("{base}/pong"), tag)
}

fn service(
    node: &Node<Service>,
    name: &str,
    buffer: usize,
) -> Result<
    iceoryx2::service::port_factory::publish_subscribe::PortFactory<Service, [u8], ()>,
    String,
> {
    let name: ServiceName = name.try_into().map_err(|e| format!("{e:?}"))?;
    node.service_builder(&name)
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(1)
        .subscriber_max_buffer_size(buffer)
        .history_size(0)
        .enable_safe_overflow(false)
        .open_or_create()
        .map_err(|e| format!("iceoryx2 service {name}: {e:?}"))
}

fn ports(
    node: &Node<Service>,
    send_on: &str,
    receive_on: &str,
    size: usize,
    buffer: usize,
) -> Result<(Tx, Rx), String> {
    let tx = service(node, send_on, buffer)?
        .publisher_builder()
        .initial_max_slice_len(size.max(1))
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .map_err(|e| format!("iceoryx2 publisher: {e:?}"))?;
    let rx = service(node, receive_on, buffer)?
        .subscriber_builder()
        .create()
        .map_err(|e| format!("iceoryx2 subscriber: {e:?}"))?;
    Ok((tx, rx))
}

/// Copies `bytes` into a loaned sample and sends it.
fn send(tx: &Tx, bytes: &[u8]) -> Result<(), String> {
    let sample = tx
        .loan_slice_uninit(bytes.len())
        .map_err(|e| format!("iceoryx2 loan: {e:?}"))?;
    sample
        .write_from_slice(bytes)
        .send()
        .map(|_| ())
        .map_err(|e| format!("iceoryx2 send: {e:?}"))
}

/// How long the parent polls for a sample before it calls the contender failed (a watchdog: a
/// lost sample must fail the contender, not hang the run).
const RECEIVE_LIMIT: Duration = Duration::from_secs(10);

/// Busy-polls `rx` for the next sample and copies it into `buf`; returns its length. Fails after
/// [`RECEIVE_LIMIT`] without one (the clock is read every 4096 polls).
fn receive(rx: &Rx, buf: &mut [u8]) -> Result<usize, String> {
    poll_receive(rx, buf, past_limit(Instant::now()))?.ok_or_else(no_answer)
}

/// The give-up test of a busy poll that started at `since`: true once [`RECEIVE_LIMIT`] has
/// passed, the clock read every 4096 calls.
fn past_limit(since: Instant) -> impl Fn() -> bool {
    let polls = std::cell::Cell::new(0u32);
    move || {
        polls.set(polls.get().wrapping_add(1));
        polls.get().is_multiple_of(4096) && since.elapsed() > RECEIVE_LIMIT
    }
}

/// The error of a wait that reached [`RECEIVE_LIMIT`].
fn no_answer() -> String {
    format!("iceoryx2: no answer within {RECEIVE_LIMIT:?} (the peer lost a message or died)")
}

/// Attaches `rx` to the publishers that exist now. Until a subscriber has attached, iceoryx2
/// drops what a publisher sends into its full buffer ("no connected receiver and the buffer is
/// full"), and a stream whose child connected late lost samples and hung the run.
fn connect(rx: &Rx) -> Result<(), String> {
    rx.has_samples()
        .map(|_| ())
        .map_err(|e| format!("iceoryx2 connect: {e:?}"))
}

/// The parent's publish-subscribe ports ([`ports`]), its subscriber attached to the child's
/// publisher.
fn pub_sub(
    node: &Node<Service>,
    send_on: &str,
    receive_on: &str,
    size: usize,
    buffer: usize,
) -> Result<(Tx, Rx), String> {
    let (tx, rx) = ports(node, send_on, receive_on, size, buffer)?;
    connect(&rx)?;
    Ok((tx, rx))
}

/// Busy-polls `rx` for the next sample and copies it into `buf`; returns its length, or `None`
/// once `give_up()` says so with nothing to receive.
fn poll_receive(
    rx: &Rx,
    buf: &mut [u8],
    give_up: impl Fn() -> bool,
) -> Result<Option<usize>, String> {
    loop {
        match take(rx, buf)? {
            Some(n) => return Ok(Some(n)),
            None if give_up() => return Ok(None),
            None => std::hint::spin_loop(),
        }
    }
}

/// Takes the next sample of `rx`, if one is there, and copies it into `buf`; returns its length.
fn take(rx: &Rx, buf: &mut [u8]) -> Result<Option<usize>, String> {
    match rx.receive() {
        Ok(Some(sample)) => Ok(Some(copy_out(sample.payload(), buf))),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("iceoryx2 receive: {e:?}")),
    }
}

/// Copies a received payload into `buf` (as much as fits); returns the payload's length.
fn copy_out(payload: &[u8], buf: &mut [u8]) -> usize {
    let n = payload.len().min(buf.len());
    buf[..n].copy_from_slice(&payload[..n]);
    payload.len()
}

/// Waits (polling, in set-up only: nothing is timed here) until `flag` leaves `from`.
fn await_change(flag: &AtomicU32, from: u32) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = flag.load(Ordering::Acquire);
        if v != from {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err("iceoryx2 echo child did not start".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The echo child: answers every message with its copy, until an empty message.
fn echo(
    config: &Config,
    ping: &str,
    pong: &str,
    size: usize,
    flag: &AtomicU32,
) -> Result<(), String> {
    let node = node(config)?;
    let (tx, rx) = ports(&node, pong, ping, size, PING_PONG_BUFFER)?;
    handshake(flag, || connect(&rx))?;
    let mut buf = vec![0u8; size.max(1)];
    while gate_open(flag) {
        while let Some(n) = receive_while_running(&rx, &mut buf, flag)? {
            send(&tx, &buf[..n])?;
        }
    }
    Ok(())
}

/// The child's side of set-up, once its ports exist: says `CHILD_READY`, waits for the parent's
/// ports (`PARENT_READY`), attaches its receiving port to the parent's sending one (`connect`)
/// and says `IDLE`.
fn handshake(flag: &AtomicU32, connect: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    flag.store(CHILD_READY, Ordering::Release);
    await_change(flag, CHILD_READY)?;
    connect()?;
    flag.store(IDLE, Ordering::Release);
    Ok(())
}

/// The child's side of the gate: sleeps while the word says `IDLE`; on `RUN` says `RUNNING`
/// and returns `true`; on `STOP` returns `false`.
fn gate_open(flag: &AtomicU32) -> bool {
    loop {
        match flag.load(Ordering::Acquire) {
            STOP => return false,
            RUN => {
                flag.store(RUNNING, Ordering::Release);
                futex::wake_all(flag);
                return true;
            }
            v => {
                futex::wait(flag, v, None);
            }
        }
    }
}

/// Like [`receive`], but gives up (`None`) once the word leaves `RUNNING` with nothing to
/// receive.
fn receive_while_running(
    rx: &Rx,
    buf: &mut [u8],
    flag: &AtomicU32,
) -> Result<Option<usize>, String> {
    poll_receive(rx, buf, || flag.load(Ordering::Acquire) != RUNNING)
}

/// The parent's side (its ports `P`) and the child, stopped through the gate on drop.
struct Pair<P> {
    ports: P,
    _node: Node<Service>,
    child: Option<Child>,
    /// The set-up flag's segment (the gate's word after set-up), kept until the child is gone.
    flag: ipc_shm::Segment,
    flag_at: ipc_shm::Offset<AtomicU32>,
    /// Dropped last, once both processes' nodes are gone.
    _leftovers: Leftovers,
}

impl<P> Pair<P> {
    /// Forks the child, which runs `role(config, receive_on, reply_on, flag)` (it opens its ports,
    /// then [`handshake`]s); opens this process's ports with `parent(node, send_on, receive_on)`
    /// (sending on the child's `receive_on`, receiving on its `reply_on`, attached to the
    /// child's ports that exist); returns once the child's ports are attached to them (`IDLE`).
    fn start(
        what: &str,
        role: impl FnOnce(&Config, &str, &str, &AtomicU32) -> Result<(), String>,
        parent: impl FnOnce(&Node<Service>, &str, &str) -> Result<P, String>,
    ) -> Result<Pair<P>, String> {
        set_log_level(LogLevel::Error);
        let (out, back, tag) = names();
        let leftovers = Leftovers(tag.clone());
        let config = config(&tag)?;
        let (seg, off) = super::ipc::shared_word()?;
        let flag = seg.get(off).map_err(|e| e.to_string())?;
        let child = fork(|| {
            if let Err(e) = role(&config, &out, &back, flag) {
                eprintln!("{e}");
                flag.store(CHILD_FAILED, Ordering::Release);
            }
        });
        if await_change(flag, 0)? == CHILD_FAILED {
            return Err(format!("the iceoryx2 {what} child failed to set up"));
        }
        let node = node(&config)?;
        let ports = parent(&node, &out, &back)?;
        flag.store(PARENT_READY, Ordering::Release);
        let pair = Pair {
            ports,
            _node: node,
            child: Some(child),
            flag: seg,
            flag_at: off,
            _leftovers: leftovers,
        };
        // The child attaches its receiving port before the first sample can send to it.
        match await_change(pair.word()?, PARENT_READY)? {
            IDLE => Ok(pair),
            _ => Err(format!("the iceoryx2 {what} child failed to connect")),
        }
    }

    /// The gate's word (see the module docs).
    fn word(&self) -> Result<&AtomicU32, String> {
        self.flag.get(self.flag_at).map_err(|e| e.to_string())
    }

    /// Before a sample: lets the child poll, and waits until it does (not timed).
    fn open(&self) -> Result<(), String> {
        let word = self.word()?;
        word.store(RUN, Ordering::Release);
        futex::wake_all(word);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match word.load(Ordering::Acquire) {
                RUNNING => return Ok(()),
                v => {
                    if Instant::now() > deadline {
                        return Err("the iceoryx2 child did not wake up".into());
                    }
                    futex::wait(
                        word,
                        v,
                        Some(futex::Deadline::after(Duration::from_millis(10))),
                    );
                }
            }
        }
    }

    /// After a sample: the child sleeps once it holds nothing more.
    fn close(&self) -> Result<(), String> {
        self.word()?.store(IDLE, Ordering::Release);
        Ok(())
    }

    /// One sample: opens the gate, times `iters` calls of `round` with this process's ports,
    /// closes the gate.
    fn sample(
        &mut self,
        iters: u64,
        mut round: impl FnMut(&P) -> Result<(), String>,
    ) -> Result<Duration, String> {
        self.open()?;
        let start = Instant::now();
        for _ in 0..iters {
            round(&self.ports)?;
        }
        let took = start.elapsed();
        self.close()?;
        Ok(took)
    }
}

impl<P> Drop for Pair<P> {
    fn drop(&mut self) {
        if let Ok(word) = self.word() {
            word.store(STOP, Ordering::Release);
            futex::wake_all(word);
            if let Some(child) = self.child.take() {
                child.wait();
            }
        }
    }
}

/// The round trip of `size` bytes (`pipe_rtt_hot`).
pub(crate) fn ping_pong(size: usize) -> ContenderSpec {
    ContenderSpec::new(
        "iceoryx2 publish-subscribe (copy, busy poll)",
        Kind::Process,
        move || {
            let mut pair = Pair::start(
                "echo",
                move |c, out, back, flag| echo(c, out, back, size, flag),
                move |node, out, back| pub_sub(node, out, back, size, PING_PONG_BUFFER),
            )?;
            let msg = vec![7u8; size.max(1)];
            let mut buf = vec![0u8; size.max(1)];
            Ok(Runner::new(1, move |iters| {
                pair.sample(iters, |(tx, rx)| {
                    send(tx, &msg)?;
                    receive(rx, &mut buf).map(drop)
                })
            }))
        },
    )
}

/// The stream's consumer child: receives `n` messages (copying each out, as a consumer of ours
/// decodes it), then answers with a one-byte acknowledgement; again, until an empty message.
fn drain(
    config: &Config,
    data: &str,
    ack: &str,
    size: usize,
    n: u64,
    flag: &AtomicU32,
) -> Result<(), String> {
    let node = node(config)?;
    let (tx, rx) = ports(&node, ack, data, size, STREAM_BUFFER)?;
    handshake(flag, || connect(&rx))?;
    let mut buf = vec![0u8; size.max(1)];
    let mut got = 0u64;
    while gate_open(flag) {
        while receive_while_running(&rx, &mut buf, flag)?.is_some() {
            std::hint::black_box(&buf);
            got += 1;
            if got == n {
                got = 0;
                send(&tx, &[1])?;
            }
        }
    }
    Ok(())
}

/// 1 -> 1 throughput of `size`-byte messages, `n` per iteration (`queue_spsc`): this process
/// publishes, a forked subscriber copies each sample out and acknowledges every `n`.
pub(crate) fn stream(size: usize, n: u64) -> ContenderSpec {
    ContenderSpec::new(
        "iceoryx2 publish-subscribe (copy, busy poll)",
        Kind::Process,
        move || {
            let mut pair = Pair::start(
                "consumer",
                move |c, out, back, flag| drain(c, out, back, size, n, flag),
                move |node, out, back| pub_sub(node, out, back, size, STREAM_BUFFER),
            )?;
            let msg = vec![7u8; size.max(1)];
            let mut buf = [0u8; 1];
            Ok(Runner::new(n, move |iters| {
                pair.sample(iters, |(tx, rx)| {
                    for _ in 0..n {
                        send(tx, &msg)?;
                    }
                    receive(rx, &mut buf).map(drop)
                })
            }))
        },
    )
}

/// One side of the event contender: publish-subscribe ports with an event service beside
/// each direction, named after the data service (`<name>/event`).
struct Notified {
    tx: Tx,
    rx: Rx,
    notifier: Notifier<Service>,
    listener: Listener<Service>,
}

impl Notified {
    /// Publishes on `send_on` and notifies its event; subscribes to `receive_on` and listens on
    /// its event. Attaches nothing: see [`Notified::connect`].
    fn open(
        node: &Node<Service>,
        send_on: &str,
        receive_on: &str,
        size: usize,
    ) -> Result<Notified, String> {
        let (tx, rx) = ports(node, send_on, receive_on, size, PING_PONG_BUFFER)?;
        let event = |name: &str| {
            let name: ServiceName = format!("{name}/event")
                .as_str()
                .try_into()
                .map_err(|e| format!("{e:?}"))?;
            node.service_builder(&name)
                .event()
                .max_notifiers(1)
                .max_listeners(1)
                .open_or_create()
                .map_err(|e| format!("iceoryx2 event service {name}: {e:?}"))
        };
        let notifier = event(send_on)?
            .notifier_builder()
            .create()
            .map_err(|e| format!("iceoryx2 notifier: {e:?}"))?;
        let listener = event(receive_on)?
            .listener_builder()
            .create()
            .map_err(|e| format!("iceoryx2 listener: {e:?}"))?;
        Ok(Notified {
            tx,
            rx,
            notifier,
            listener,
        })
    }

    /// Attaches the subscriber to the publishers that exist now (see [`connect`]); a notifier
    /// finds the listeners that exist each time it notifies.
    fn connect(&self) -> Result<(), String> {
        connect(&self.rx)
    }

    /// Copies `bytes` into a sample, sends it, then wakes the peer's listener.
    fn send(&self, bytes: &[u8]) -> Result<(), String> {
        send(&self.tx, bytes)?;
        self.notifier
            .notify()
            .map(|_| ())
            .map_err(|e| format!("iceoryx2 notify: {e:?}"))
    }

    /// Takes the next sample into `buf` (its length), sleeping in the listener while there is
    /// none, in slices of [`WAIT_SLICE`]; `None` once `give_up()` says so with none there.
    fn receive(&self, buf: &mut [u8], give_up: impl Fn() -> bool) -> Result<Option<usize>, String> {
        loop {
            if let Some(n) = take(&self.rx, buf)? {
                return Ok(Some(n));
            }
            if give_up() {
                return Ok(None);
            }
            self.listener
                .timed_wait(|_| {}, WAIT_SLICE)
                .map_err(|e| format!("iceoryx2 listener wait: {e:?}"))?;
        }
    }
}

/// The event contender's echo child: sleeps in its listener until a sample comes, answers it
/// with its copy and a notification.
fn echo_notified(
    config: &Config,
    ping: &str,
    pong: &str,
    size: usize,
    flag: &AtomicU32,
) -> Result<(), String> {
    let node = node(config)?;
    let side = Notified::open(&node, pong, ping, size)?;
    handshake(flag, || side.connect())?;
    let mut buf = vec![0u8; size.max(1)];
    while gate_open(flag) {
        while let Some(n) = side.receive(&mut buf, || flag.load(Ordering::Acquire) != RUNNING)? {
            side.send(&buf[..n])?;
        }
    }
    Ok(())
}

/// The round trip of `size` bytes with both sides asleep (`pipe_rtt_asleep`): publish-subscribe
/// with a notification after each sample, each side sleeping in its listener until the answer
/// comes.
pub(crate) fn ping_pong_notified(size: usize) -> ContenderSpec {
    ContenderSpec::new(
        "iceoryx2 publish-subscribe + event (copy, listener sleeps)",
        Kind::Process,
        move || {
            let mut pair = Pair::start(
                "echo",
                move |c, out, back, flag| echo_notified(c, out, back, size, flag),
                move |node, out, back| {
                    let side = Notified::open(node, out, back, size)?;
                    side.connect()?;
                    Ok(side)
                },
            )?;
            let msg = vec![7u8; size.max(1)];
            let mut buf = vec![0u8; size.max(1)];
            Ok(Runner::new(1, move |iters| {
                pair.sample(iters, |side| {
                    side.send(&msg)?;
                    // Each check follows a sleep of up to `WAIT_SLICE`: read the clock every time.
                    let sent = Instant::now();
                    side.receive(&mut buf, || sent.elapsed() > RECEIVE_LIMIT)?
                        .ok_or_else(no_answer)
                        .map(drop)
                })
            }))
        },
    )
}

/// The request-response service `name`: one client, one server, one request in flight and one
/// response buffered, as iceoryx2's own request-response benchmark sets it up.
fn request_service(node: &Node<Service>, name: &str) -> Result<RequestService, String> {
    let name: ServiceName = name.try_into().map_err(|e| format!("{e:?}"))?;
    node.service_builder(&name)
        .request_response::<[u8], [u8]>()
        .max_clients(1)
        .max_servers(1)
        .max_active_requests_per_client(1)
        .max_response_buffer_size(1)
        .open_or_create()
        .map_err(|e| format!("iceoryx2 request-response service {name}: {e:?}"))
}

/// The request-response contender's child: busy-polls its server for requests and answers each
/// with a copy of its bytes.
fn serve(config: &Config, name: &str, size: usize, flag: &AtomicU32) -> Result<(), String> {
    let node = node(config)?;
    let server: Responder = request_service(&node, name)?
        .server_builder()
        .initial_max_slice_len(size.max(1))
        .create()
        .map_err(|e| format!("iceoryx2 server: {e:?}"))?;
    handshake(flag, || {
        server
            .has_requests()
            .map(|_| ())
            .map_err(|e| format!("iceoryx2 server connect: {e:?}"))
    })?;
    let mut buf = vec![0u8; size.max(1)];
    while gate_open(flag) {
        while flag.load(Ordering::Acquire) == RUNNING {
            let request = match server.receive() {
                Ok(Some(request)) => request,
                Ok(None) => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(e) => return Err(format!("iceoryx2 server receive: {e:?}")),
            };
            let n = copy_out(request.payload(), &mut buf);
            let n = n.min(buf.len());
            request
                .loan_slice_uninit(n)
                .map_err(|e| format!("iceoryx2 response loan: {e:?}"))?
                .write_from_slice(&buf[..n])
                .send()
                .map_err(|e| format!("iceoryx2 response send: {e:?}"))?;
        }
    }
    Ok(())
}

/// The round trip of `size` bytes as a request and its response (`pipe_rtt_hot`): this process
/// sends a request and polls its pending response; a forked server polls for requests.
pub(crate) fn request_response(size: usize) -> ContenderSpec {
    ContenderSpec::new(
        "iceoryx2 request-response (copy, busy poll)",
        Kind::Process,
        move || {
            let mut pair = Pair::start(
                "server",
                move |c, out, _back, flag| serve(c, out, size, flag),
                move |node, out, _back| -> Result<Requester, String> {
                    request_service(node, out)?
                        .client_builder()
                        .initial_max_slice_len(size.max(1))
                        .create()
                        .map_err(|e| format!("iceoryx2 client: {e:?}"))
                },
            )?;
            let msg = vec![7u8; size.max(1)];
            let mut buf = vec![0u8; size.max(1)];
            Ok(Runner::new(1, move |iters| {
                pair.sample(iters, |client| {
                    let pending = client
                        .loan_slice_uninit(msg.len())
                        .map_err(|e| format!("iceoryx2 request loan: {e:?}"))?
                        .write_from_slice(&msg)
                        .send()
                        .map_err(|e| format!("iceoryx2 request send: {e:?}"))?;
                    let late = past_limit(Instant::now());
                    loop {
                        match pending.receive() {
                            Ok(Some(response)) => {
                                copy_out(response.payload(), &mut buf);
                                return Ok(());
                            }
                            Ok(None) if late() => return Err(no_answer()),
                            Ok(None) => std::hint::spin_loop(),
                            Err(e) => return Err(format!("iceoryx2 response receive: {e:?}")),
                        }
                    }
                })
            }))
        },
    )
}
