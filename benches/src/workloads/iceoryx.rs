//! iceoryx2, the strongest Rust IPC peer, in the pipe round trip ([`ping_pong`]) and the 1 -> 1
//! queue stream ([`stream`]): publish-subscribe between two processes, each message copied into a
//! loaned sample (iceoryx2's `send-copy` mode, so both sides copy the bytes once, as ours do), the
//! receivers polling `receive()` in a busy loop, as iceoryx2's own benchmark does. Its services
//! live in shared memory of its own; the child is stopped through the gate (below), never
//! killed, so every port and node is dropped and iceoryx2 removes what it created.
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
//! The parent starts its clock only once the child says `RUNNING`, so no sample pays for the
//! child's wake-up. Set-up ends only once the child's subscriber is attached: iceoryx2 drops a
//! sample sent into a full buffer whose subscriber has not attached yet, and a child that first
//! attached in its first sample lost the start of the stream and hung the run (1 run in 3).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::publisher::Publisher;
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
    let start = Instant::now();
    let polls = std::cell::Cell::new(0u32);
    let late = || {
        polls.set(polls.get().wrapping_add(1));
        polls.get().is_multiple_of(4096) && start.elapsed() > RECEIVE_LIMIT
    };
    poll_receive(rx, buf, late)?.ok_or_else(|| {
        format!("iceoryx2: no sample within {RECEIVE_LIMIT:?} (the peer lost one or died)")
    })
}

/// Attaches `rx` to the publishers that exist now. Until a subscriber has attached, iceoryx2
/// drops what a publisher sends into its full buffer ("no connected receiver and the buffer is
/// full"), and a stream whose child connected late lost samples and hung the run.
fn connect(rx: &Rx) -> Result<(), String> {
    rx.has_samples()
        .map(|_| ())
        .map_err(|e| format!("iceoryx2 connect: {e:?}"))
}

/// Busy-polls `rx` for the next sample and copies it into `buf`; returns its length, or `None`
/// once `give_up()` says so with nothing to receive.
fn poll_receive(
    rx: &Rx,
    buf: &mut [u8],
    give_up: impl Fn() -> bool,
) -> Result<Option<usize>, String> {
    loop {
        match rx.receive() {
            Ok(Some(sample)) => {
                let p = sample.payload();
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                return Ok(Some(p.len()));
            }
            Ok(None) if give_up() => return Ok(None),
            Ok(None) => std::hint::spin_loop(),
            Err(e) => return Err(format!("iceoryx2 receive: {e:?}")),
        }
    }
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
    handshake(&rx, flag)?;
    let mut buf = vec![0u8; size.max(1)];
    while gate_open(flag) {
        while let Some(n) = receive_while_running(&rx, &mut buf, flag)? {
            send(&tx, &buf[..n])?;
        }
    }
    Ok(())
}

/// The child's side of set-up, once its ports exist: says `CHILD_READY`, waits for the parent's
/// ports (`PARENT_READY`), attaches its subscriber to the parent's publisher and says `IDLE`.
fn handshake(rx: &Rx, flag: &AtomicU32) -> Result<(), String> {
    flag.store(CHILD_READY, Ordering::Release);
    await_change(flag, CHILD_READY)?;
    connect(rx)?;
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

/// The parent's side and the child, stopped by a message on drop.
struct Pair {
    tx: Tx,
    rx: Rx,
    _node: Node<Service>,
    child: Option<Child>,
    /// The set-up flag's segment (the gate's word after set-up), kept until the child is gone.
    flag: ipc_shm::Segment,
    flag_at: ipc_shm::Offset<AtomicU32>,
    /// Dropped last, once both processes' nodes are gone.
    _leftovers: Leftovers,
}

impl Pair {
    /// Forks the child, which runs `role(config, receive_on, reply_on, flag)` (it opens its ports,
    /// then [`handshake`]s); opens this process's ports (publishing on the child's `receive_on`,
    /// subscribing to its `reply_on`), each subscriber buffering `buffer` samples of up to `size`
    /// bytes; returns once the child's subscriber is attached (`IDLE`).
    fn start(
        size: usize,
        buffer: usize,
        what: &str,
        role: impl FnOnce(&Config, &str, &str, &AtomicU32) -> Result<(), String>,
    ) -> Result<Pair, String> {
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
        let (tx, rx) = ports(&node, &out, &back, size, buffer)?;
        connect(&rx)?;
        flag.store(PARENT_READY, Ordering::Release);
        let pair = Pair {
            tx,
            rx,
            _node: node,
            child: Some(child),
            flag: seg,
            flag_at: off,
            _leftovers: leftovers,
        };
        // The child attaches its subscriber before the first sample can send to it.
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
}

impl Drop for Pair {
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
            let mut pair =
                Pair::start(size, PING_PONG_BUFFER, "echo", move |c, out, back, flag| {
                    echo(c, out, back, size, flag)
                })?;
            let msg = vec![7u8; size.max(1)];
            let mut buf = vec![0u8; size.max(1)];
            Ok(Runner::new(1, move |iters| {
                let pair = &mut pair;
                pair.open()?;
                let start = Instant::now();
                for _ in 0..iters {
                    send(&pair.tx, &msg)?;
                    receive(&pair.rx, &mut buf)?;
                }
                let took = start.elapsed();
                pair.close()?;
                Ok(took)
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
    handshake(&rx, flag)?;
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
                size,
                STREAM_BUFFER,
                "consumer",
                move |c, out, back, flag| drain(c, out, back, size, n, flag),
            )?;
            let msg = vec![7u8; size.max(1)];
            let mut buf = [0u8; 1];
            Ok(Runner::new(n, move |iters| {
                let pair = &mut pair;
                pair.open()?;
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..n {
                        send(&pair.tx, &msg)?;
                    }
                    receive(&pair.rx, &mut buf)?;
                }
                let took = start.elapsed();
                pair.close()?;
                Ok(took)
            }))
        },
    )
}
