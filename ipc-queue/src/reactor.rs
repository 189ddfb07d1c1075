//! The async waiters' reactor (feature `tokio`): one thread per process that sleeps in
//! `futex_waitv` on the event counts that async tasks await, and wakes their `Waker`s. It is
//! what lets [`Queue::get_async`](crate::Queue::get_async) and
//! [`Queue::put_async`](crate::Queue::put_async) wait without a thread per waiter: 100 tasks
//! awaiting one queue cost one sleeping thread, which sleeps on that queue's one futex word.
//!
//! # Why this design
//!
//! A queue has no descriptor to hand to an event loop: its producers wake consumers with a
//! futex wake on the `data` event count (`ipc_sync::EventCount`) in shared memory, from any
//! process. The options were:
//!
//! - an eventfd per waiting process, in a slot table in the segment, written by the notifier:
//!   the notifier cannot get another process's descriptor without `pidfd_getfd`, which needs
//!   ptrace rights; and every put would have to scan the table;
//! - `FUTEX_FD`: removed from Linux in 2.6.26;
//! - **this**: the async waiter registers on the event count exactly as a sleeping thread does
//!   (`listen`, re-check, then sleep on the word), except that the sleeping is done for it by
//!   this thread, which waits on every awaited word at once with `futex_waitv` (Linux >= 5.16,
//!   [`ipc_sync::futex::wait_any`]). The notifier cannot tell the difference, so **the sync
//!   path is unchanged**: a put still makes no system call unless a waiter is registered, and
//!   then the same one `FUTEX_WAKE`.
//!
//! # Protocol
//!
//! | step | task (in `WaitFor::poll`)                        | reactor thread                                   |
//! |------|--------------------------------------------------|--------------------------------------------------|
//! | 1    | `try_*` fails; `token = ec.listen()`; `try_*` again (the event count's re-check) | |
//! | 2    | registers `(event count, token, waker)`, bumps `kick`, wakes it | |
//! | 3    |                                                  | loads `kick`; for each entry: `ec.pending(token)`: `None` -> done, wake the task; `Some(v)` -> sleep on `(word, v)` |
//! | 4    |                                                  | `wait_any([(kick, k), (word, v), ...])`          |
//! | 5    |                                                  | woken on a word whose entries are all still pending: `ec.stolen_wake(token)` (the event count's rule) |
//! | 6    | polled: done -> `try_*` again from step 1        |                                                  |
//! | drop | deregisters; a pending token is cancelled (`ec.cancel`) | |
//!
//! No lost wake-up: a notify after the task's `listen` changes the word's sequence. If it came
//! before the reactor's load in step 3, `pending` returns `None` there; if after, the word no
//! longer holds `v` and the kernel's compare in `futex_waitv` fails, or the notify's
//! `FUTEX_WAKE` wakes the reactor. A registration made while the reactor sleeps changes `kick`
//! (and wakes it), so the reactor never sleeps without a word it should watch.
//!
//! ## Memory ordering
//!
//! The event count's own argument covers the task's re-check and the notifier (`listen` and
//! `notify` are read-modify-writes of the word). The reactor's `pending` load is `Acquire`, and
//! a task woken by it re-checks the queue under its lock. `kick` is bumped with `Release` after
//! the entry is inserted under the reactor's mutex, and the reactor reads the entries under the
//! same mutex after loading `kick`; the mutex orders the rest.
//!
//! # Limits
//!
//! - At most `WAIT_ANY_MAX - 1` (127) distinct event counts are slept on at once; beyond that
//!   (and for a token past `ipc_sync::eventcount::MAX_REGISTERED`), the reactor also wakes
//!   every `UNREGISTERED_SLICE` (1 ms) and re-checks all entries.
//! - On a kernel without `futex_waitv` it re-checks every entry every 1 ms (correct, not
//!   efficient).
//! - After `fork`, a child that uses the async API starts its own reactor thread (the parent's
//!   registrations are dropped in the child: their tasks did not survive the fork).
//! - While it sleeps on a queue's word the thread holds that queue's shared state (so the
//!   mapping outlives the wait). A dropped future kicks it to let go at once; a process that
//!   exits within those microseconds after dropping the last handle of a named queue it
//!   created leaves the name, as one killed would.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use ipc_sync::eventcount::{EventCount, Token, UNREGISTERED_SLICE};
use ipc_sync::futex::{self, Deadline, WAIT_ANY_MAX, WaitAnyOutcome};

use crate::sync::Ordering;

/// Something that holds an event count in memory it keeps mapped while it lives (a queue's
/// shared state plus which of its waits).
pub(crate) trait Source: Send + Sync + 'static {
    /// The event count (`None` if the shared memory no longer validates: the task is woken and
    /// its retry reports the corruption).
    fn event_count(&self) -> Option<&EventCount>;
}

/// One awaiting task.
struct Entry {
    source: Arc<dyn Source>,
    /// `None` once the wait is over (notified; the token is spent).
    token: Option<Token>,
    waker: Waker,
}

impl Entry {
    fn done(&self) -> bool {
        self.token.is_none()
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    next_id: u64,
    /// The process whose thread serves these entries (0: none started).
    pid: u32,
}

/// The process's reactor: its entries and the private futex word that wakes its thread.
struct Reactor {
    inner: Mutex<Inner>,
    /// Bumped after each new registration; the thread sleeps on it with the event counts.
    kick: AtomicU32,
}

static REACTOR: OnceLock<Reactor> = OnceLock::new();

fn reactor() -> &'static Reactor {
    REACTOR.get_or_init(|| Reactor {
        inner: Mutex::new(Inner::default()),
        kick: AtomicU32::new(0),
    })
}

impl Reactor {
    /// The entries (a panic elsewhere while holding the lock leaves them consistent: every
    /// critical section below is a map operation).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a task's wait; starts the thread if this process has none. The second value
    /// is `false` when no thread serves the entry (it could not be started): the caller then
    /// wakes its task at once, which retries (a busy wait, never a hang).
    fn register(&'static self, source: Arc<dyn Source>, token: Token, waker: Waker) -> (u64, bool) {
        let me = std::process::id();
        let mut inner = self.lock();
        if inner.pid != me {
            // First use in this process (or in a forked child, which inherited the parent's
            // entries but not its thread).
            inner.entries.clear();
            let spawned = std::thread::Builder::new()
                .name("ipc-queue-reactor".into())
                .spawn(move || self.run());
            if spawned.is_ok() {
                inner.pid = me;
            }
        }
        let served = inner.pid == me;
        let id = inner.next_id;
        inner.next_id += 1;
        inner.entries.insert(
            id,
            Entry {
                source,
                token: Some(token),
                waker,
            },
        );
        drop(inner);
        self.kick();
        (id, served)
    }

    /// Whether entry `id`'s wait is over (then it is removed); else stores the newest waker.
    fn poll(&self, id: u64, waker: &Waker) -> Poll<()> {
        let mut inner = self.lock();
        if inner.pid != std::process::id() {
            // A forked child polling a future made before the fork: let it retry.
            return Poll::Ready(());
        }
        match inner.entries.get_mut(&id) {
            Some(e) if !e.done() => {
                if !e.waker.will_wake(waker) {
                    e.waker = waker.clone();
                }
                Poll::Pending
            }
            _ => {
                inner.entries.remove(&id);
                Poll::Ready(())
            }
        }
    }

    /// Removes entry `id` (its future was dropped), cancelling a registration still pending,
    /// and kicks the thread, so that it stops sleeping on the word and lets go of the queue's
    /// mapping (the last handle of a queue may be the one whose future was just dropped; its
    /// segment is unmapped, and a creator's name unlinked, when the thread lets go).
    fn deregister(&self, id: u64) {
        let entry = self.lock().entries.remove(&id);
        if let Some(Entry {
            source,
            token: Some(token),
            ..
        }) = entry
        {
            if let Some(ec) = source.event_count() {
                ec.cancel(token);
            }
            drop(source);
            self.kick();
        }
    }

    /// Makes the thread re-read the entries.
    fn kick(&self) {
        self.kick.fetch_add(1, Ordering::Release);
        futex::wake(&self.kick, 1);
    }

    /// The thread: sleep on every awaited word, wake the tasks whose wait is over.
    fn run(&self) {
        let mut held: Vec<(Arc<dyn Source>, u32)> = Vec::new();
        let mut wakers: Vec<Waker> = Vec::new();
        let mut supported = true;
        loop {
            let kick = self.kick.load(Ordering::Acquire);
            let mut slices = !supported;
            {
                let mut inner = self.lock();
                if inner.pid != std::process::id() {
                    // The parent's thread, as seen by a forked child: it does not run there.
                    return;
                }
                for e in inner.entries.values_mut() {
                    let Some(token) = &e.token else { continue };
                    let Some(ec) = e.source.event_count() else {
                        e.token = None;
                        wakers.push(e.waker.clone());
                        continue;
                    };
                    let Some(value) = ec.pending(token) else {
                        e.token = None;
                        wakers.push(e.waker.clone());
                        continue;
                    };
                    slices |= !token.is_registered();
                    let word = ec.futex_word() as *const AtomicU32;
                    let known = held.iter().any(|(s, _)| {
                        s.event_count()
                            .is_some_and(|h| std::ptr::eq(h.futex_word(), word))
                    });
                    if !known {
                        if held.len() < WAIT_ANY_MAX - 1 {
                            held.push((Arc::clone(&e.source), value));
                        } else {
                            slices = true;
                        }
                    }
                }
            }
            for w in wakers.drain(..) {
                w.wake();
            }
            let mut words: Vec<(&AtomicU32, u32)> = Vec::with_capacity(held.len() + 1);
            words.push((&self.kick, kick));
            for (s, v) in &held {
                if let Some(ec) = s.event_count() {
                    words.push((ec.futex_word(), *v));
                }
            }
            let deadline = slices.then(|| Deadline::after(UNREGISTERED_SLICE));
            let outcome = if supported {
                futex::wait_any(&words, deadline)
            } else {
                futex::wait(&self.kick, kick, deadline);
                WaitAnyOutcome::TimedOut
            };
            match outcome {
                WaitAnyOutcome::Unsupported => supported = false,
                WaitAnyOutcome::Woken(i) if i > 0 => {
                    if let Some(word) = words.get(i).map(|(w, _)| *w as *const AtomicU32) {
                        self.after_wake(word);
                    }
                }
                _ => {}
            }
            drop(words);
            held.clear();
        }
    }

    /// Woken through `word`: if none of its entries was notified, the wake was stolen from an
    /// older sleeper; pass it on by the event count's rule (once: one wake was taken).
    fn after_wake(&self, word: *const AtomicU32) {
        let inner = self.lock();
        let mut on_word = inner.entries.values().filter_map(|e| {
            let ec = e.source.event_count()?;
            let token = e.token.as_ref()?;
            std::ptr::eq(ec.futex_word(), word).then_some((ec, token))
        });
        let mut first = None;
        for (ec, token) in on_word.by_ref() {
            if ec.pending(token).is_none() {
                return; // a real notify: the next round wakes the tasks
            }
            if first.is_none() && token.is_registered() {
                first = Some((ec, token));
            }
        }
        if let Some((ec, token)) = first {
            ec.stolen_wake(token);
        }
    }
}

/// Awaits a notify of `source`'s event count after `token`'s `listen`, without a thread of
/// its own: the process's reactor thread sleeps for it. Dropping it before it completes
/// cancels the registration.
pub(crate) struct WaitFor {
    state: State,
}

enum State {
    /// Not registered yet (registration needs the first poll's waker).
    New(Arc<dyn Source>, Token),
    Registered(u64),
    Done,
}

impl std::fmt::Debug for WaitFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::New(..) => "new",
            State::Registered(_) => "registered",
            State::Done => "done",
        };
        f.debug_struct("WaitFor").field("state", &state).finish()
    }
}

impl WaitFor {
    /// The wait for a notify after `token` (made by `listen` on `source`'s event count, with the
    /// condition re-checked after it).
    pub(crate) fn new(source: Arc<dyn Source>, token: Token) -> WaitFor {
        WaitFor {
            state: State::New(source, token),
        }
    }
}

impl Future for WaitFor {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::New(source, token) => {
                let (id, served) = reactor().register(source, token, cx.waker().clone());
                self.state = State::Registered(id);
                if !served {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            State::Registered(id) => match reactor().poll(id, cx.waker()) {
                Poll::Ready(()) => Poll::Ready(()),
                Poll::Pending => {
                    self.state = State::Registered(id);
                    Poll::Pending
                }
            },
            State::Done => Poll::Ready(()),
        }
    }
}

impl Drop for WaitFor {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::New(source, token) => {
                if let Some(ec) = source.event_count() {
                    ec.cancel(token);
                }
            }
            State::Registered(id) => reactor().deregister(id),
            State::Done => {}
        }
    }
}
