//! The block table of a shared-memory arena: which fixed-size blocks are free, owned by a
//! process, or travelling between processes. The algorithm of [`ShmArena`](crate::ShmArena)
//! (which adds the segment, the bytes and the typed handles), written over the workspace's
//! atomics shim so loom checks this code.
//!
//! # Algorithm
//!
//! One 64-bit word per block: a generation (low 32 bits), a state (2 bits) and, while owned, the
//! owner's process id (high 30 bits; Linux pids stay below 2^22).
//!
//! | state | word | meaning | who may change it |
//! |---|---|---|---|
//! | FREE | `gen` | nobody uses the bytes | any allocator: CAS to OWNED(`gen + 1`, its pid) |
//! | OWNED | `gen`, pid | that process holds the one handle, and alone reads and writes the bytes | the owner: to FREE (drop) or SENT (made into a token); anyone, once the owner is dead: to FREE |
//! | SENT | `gen` | the bytes are final and travel as a token in some message | whoever presents the token first: CAS to OWNED(`gen`, its pid) |
//!
//! - **alloc**: scan from a shared hint for a FREE word and CAS it to OWNED with the next
//!   generation (no system call). The hint is a low-water mark, so allocation is first fit:
//!   a free lowers it to the freed block (`fetch_min`, only when that is lower), and an alloc
//!   that had to pass blocks in use moves it past the block it took (a CAS from the value it
//!   started at, so a free in between wins). The blocks in use therefore stay the lowest ones
//!   of the arena, as few as are in flight, and their bytes stay in the caches. Earlier hints
//!   walked the arena: "the block after the last one taken" walked all of it (alloc, fill and
//!   drop of 64 KiB blocks in an arena of 256, one process: 107-112 GB/s against 152-153
//!   reusing the block just freed); "the block freed last" fixed that loop but not a queue of
//!   tokens, where the producer takes a batch while the consumer frees the previous one: it
//!   took the last block freed and then went on *past* it, so the working set drifted through
//!   the whole 16 MiB arena and the runner's zero-copy 64 KiB queue row ran at 39-84 GB/s,
//!   bimodal; first fit, 103-120 GB/s in five runs (`compare --workloads queue_spsc --sizes
//!   64k`, three interleaved pairs plus two, 2-vCPU reference VM; `std::sync_channel` of the
//!   same runs 36-58 GB/s). None free: reclaim blocks whose owner died, then wait on the
//!   [`EventCount`] `freed` (the workspace's one wake protocol: `listen`, scan again, `wait`), in
//!   slices of [`RECLAIM_SLICE`]; after a slice without a free, reclaim again, so that an
//!   owner's death while we sleep is noticed (a free's wake-up only scans again: a reclaim
//!   reads procfs for each owner).
//! - **free**: CAS OWNED(`gen`, my pid) -> FREE(`gen`), lower the hint to it, then notify one
//!   waiter (a system call only if somebody is registered). A forked child that inherited a
//!   handle has another pid: its CAS fails and the block stays its parent's.
//! - **send**: CAS OWNED(`gen`, my pid) -> SENT(`gen`); the token carries `gen`.
//! - **adopt**: CAS SENT(`gen`) -> OWNED(`gen`, my pid). A token presented twice, or one whose
//!   block was freed and reused since (another generation), fails the CAS: one block, one owner.
//! - **reclaim**: for each OWNED word whose pid is not alive (and not ours), CAS it to FREE.
//!
//! ## Memory ordering
//!
//! The bytes of a block are handed from one owner to the next only through its word. Free and
//! send are `Release` (free is `SeqCst`, as the event count's store-buffering pair with a waiter
//! needs: see [`EventCount`]), alloc and adopt are `Acquire`: everything the previous owner wrote
//! to the bytes (or read from them) happens before the next owner's accesses. Reclaim is
//! `SeqCst` too (it frees); the dead owner's writes may be cut short, which only leaves
//! arbitrary bytes, and every bit pattern of a `ShmSafe` element is valid.
//!
//! # A participant's death
//!
//! Everything is one CAS, so a process killed at any instant leaves every word in a named state.
//! A block it owned is reclaimed by the next allocator that finds no free block (its pid is
//! checked in procfs; a reused pid keeps the block until that process exits too, which wastes a
//! block but never hands out one that is in use). A block in SENT has no owner to check: if the
//! message carrying its token is lost (a queue dropped unread, a receiver killed before
//! adopting), the block stays SENT ([`BlockTable::counts`] shows it) until someone who knows no
//! token is in flight takes the SENT blocks back ([`BlockTable::reclaim_sent`]); a token that
//! was in flight after all then fails to adopt, on its generation, and nothing is corrupted.

use std::time::Duration;

use crate::eventcount::{EventCount, EventWait};
use crate::futex::Deadline;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// How long an allocator waiting for a free block sleeps before it checks for dead owners again.
pub const RECLAIM_SLICE: Duration = Duration::from_millis(20);

const STATE_SHIFT: u32 = 32;
const PID_SHIFT: u32 = 34;
const STATE_MASK: u64 = 0b11 << STATE_SHIFT;
const GEN_MASK: u64 = 0xffff_ffff;
const FREE: u64 = 0;
const OWNED: u64 = 1 << STATE_SHIFT;
const SENT: u64 = 2 << STATE_SHIFT;
/// The largest pid a word can hold.
pub const MAX_PID: u32 = (1 << 30) - 1;

/// The generation of a word.
#[inline]
fn generation(word: u64) -> u32 {
    (word & GEN_MASK) as u32
}

#[inline]
fn owned(generation: u32, pid: u32) -> u64 {
    u64::from(generation) | OWNED | (u64::from(pid & MAX_PID) << PID_SHIFT)
}

/// A block held by this process: its index and the generation its word carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The block's index.
    pub index: u32,
    /// The generation of this allocation (a token carries it).
    pub generation: u32,
}

/// Why a block could not be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptFail {
    /// The index is not a block of this table.
    OutOfRange,
    /// The block is not in SENT with that generation: the token was adopted already, or is
    /// older than the block's current use.
    NotSent,
}

/// How many blocks are in each state (a snapshot; words change while it is taken).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCounts {
    /// Blocks nobody uses.
    pub free: usize,
    /// Blocks held by a handle in some process.
    pub owned: usize,
    /// Blocks travelling as a token.
    pub sent: usize,
}

/// The block table: the words, the allocation hint and the event count allocators sleep on,
/// wherever they live (a segment, or the heap under loom).
#[derive(Debug, Clone, Copy)]
pub struct BlockTable<'a> {
    words: &'a [AtomicU64],
    hint: &'a AtomicU32,
    freed: &'a EventCount,
}

impl<'a> BlockTable<'a> {
    /// The table over `words` (one per block), `hint` and `freed`.
    pub fn new(words: &'a [AtomicU64], hint: &'a AtomicU32, freed: &'a EventCount) -> Self {
        BlockTable { words, hint, freed }
    }

    /// The number of blocks.
    #[inline]
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the table has no blocks.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Takes a free block for `pid` if there is one now (no system call).
    #[inline]
    pub fn try_alloc(&self, pid: u32) -> Option<Held> {
        let n = self.words.len();
        if n == 0 {
            return None;
        }
        let start = self.hint.load(Ordering::Relaxed) as usize % n;
        for i in 0..n {
            let index = (start + i) % n;
            let word = &self.words[index];
            let mut w = word.load(Ordering::Relaxed);
            while w & STATE_MASK == FREE {
                let generation = generation(w).wrapping_add(1);
                match word.compare_exchange_weak(
                    w,
                    owned(generation, pid),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Past the blocks found in use, unless a free moved the hint meanwhile.
                        // The block at the hint itself keeps it: it is likely freed next (a
                        // loop of alloc and drop then touches the hint not at all).
                        if index != start {
                            let _ = self.hint.compare_exchange(
                                start as u32,
                                ((index + 1) % n) as u32,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                        return Some(Held {
                            index: index as u32,
                            generation,
                        });
                    }
                    Err(now) => w = now,
                }
            }
        }
        None
    }

    /// Takes a free block for `pid`, waiting until one is freed or `deadline` passes (`None`:
    /// as long as it takes). `alive` tells whether a process still runs (reclaim).
    pub fn alloc(
        &self,
        pid: u32,
        deadline: Option<Deadline>,
        alive: impl Fn(u32) -> bool,
    ) -> Option<Held> {
        match self.try_alloc(pid) {
            Some(held) => Some(held),
            None => self.alloc_slow(pid, deadline, &alive),
        }
    }

    #[cold]
    fn alloc_slow(
        &self,
        pid: u32,
        deadline: Option<Deadline>,
        alive: &dyn Fn(u32) -> bool,
    ) -> Option<Held> {
        // Dead owners are looked for when the wait starts and after each slice that passed
        // without a free; a free's wake-up only retries (a reclaim reads procfs per owner).
        let mut look_for_dead = true;
        loop {
            if look_for_dead {
                look_for_dead = false;
                if self.reclaim(pid, alive) > 0
                    && let Some(held) = self.try_alloc(pid)
                {
                    return Some(held);
                }
            }
            let token = self.freed.listen();
            if let Some(held) = self.try_alloc(pid) {
                self.freed.cancel(token);
                return Some(held);
            }
            if deadline.as_ref().is_some_and(Deadline::has_passed) {
                self.freed.cancel(token);
                return None;
            }
            let until = match deadline {
                Some(d) if d.remaining() < RECLAIM_SLICE => d,
                _ => Deadline::after(RECLAIM_SLICE),
            };
            if self.freed.wait(token, Some(until)) == EventWait::TimedOut {
                if deadline.as_ref().is_some_and(Deadline::has_passed) {
                    return self.try_alloc(pid);
                }
                look_for_dead = true;
            }
        }
    }

    /// Gives a block `pid` holds back: `false` if the word says otherwise (a forked child's
    /// copy of its parent's handle, or a block reclaimed after all), and nothing changes then.
    #[inline]
    pub fn free(&self, held: Held, pid: u32) -> bool {
        let Some(word) = self.words.get(held.index as usize) else {
            return false;
        };
        let freed = word
            .compare_exchange(
                owned(held.generation, pid),
                u64::from(held.generation),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok();
        if freed {
            // First fit: the next alloc starts at the lowest free block (module docs).
            if self.hint.load(Ordering::Relaxed) > held.index {
                self.hint.fetch_min(held.index, Ordering::Relaxed);
            }
            self.freed.notify(1);
        }
        freed
    }

    /// Marks a block `pid` holds as travelling (its bytes are final): `false`, and nothing
    /// changes, if `pid` does not hold it.
    #[inline]
    pub fn send(&self, held: Held, pid: u32) -> bool {
        self.words.get(held.index as usize).is_some_and(|word| {
            word.compare_exchange(
                owned(held.generation, pid),
                u64::from(held.generation) | SENT,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
        })
    }

    /// Takes a travelling block for `pid`.
    #[inline]
    pub fn adopt(&self, index: u32, generation: u32, pid: u32) -> Result<Held, AdoptFail> {
        let word = self
            .words
            .get(index as usize)
            .ok_or(AdoptFail::OutOfRange)?;
        word.compare_exchange(
            u64::from(generation) | SENT,
            owned(generation, pid),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .map(|_| Held { index, generation })
        .map_err(|_| AdoptFail::NotSent)
    }

    /// Frees every block owned by a process that `alive` says is gone (never `me`'s); returns how
    /// many, and wakes that many waiters.
    pub fn reclaim(&self, me: u32, alive: &dyn Fn(u32) -> bool) -> usize {
        // Blocks of one owner tend to come in runs: one check per run.
        let mut checked: Option<(u32, bool)> = None;
        self.free_where(|w| {
            let pid = (w >> PID_SHIFT) as u32;
            if w & STATE_MASK != OWNED || pid == me & MAX_PID {
                return false;
            }
            let is_alive = match checked {
                Some((p, a)) if p == pid => a,
                _ => {
                    let a = alive(pid);
                    checked = Some((pid, a));
                    a
                }
            };
            !is_alive
        })
    }

    /// Frees every block in SENT: the blocks of tokens that will never be adopted (lost with a
    /// queue or a receiver). Safe at any time: a token whose block was taken back finds it FREE
    /// or of another generation, and its adoption fails. Returns how many, and wakes that many
    /// waiters.
    pub fn reclaim_sent(&self) -> usize {
        self.free_where(|w| w & STATE_MASK == SENT)
    }

    /// Frees (CAS to FREE, keeping the generation) every block whose word `pick` chooses, unless
    /// the word changed meanwhile; returns how many, and wakes that many waiters.
    fn free_where(&self, mut pick: impl FnMut(u64) -> bool) -> usize {
        let mut freed = 0;
        for word in self.words {
            let w = word.load(Ordering::Relaxed);
            if pick(w)
                && word
                    .compare_exchange(w, w & GEN_MASK, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                freed += 1;
            }
        }
        if freed > 0 {
            self.freed.notify(freed as u32);
        }
        freed
    }

    /// How many blocks are in each state now.
    pub fn counts(&self) -> BlockCounts {
        let mut c = BlockCounts::default();
        for word in self.words {
            match word.load(Ordering::Relaxed) & STATE_MASK {
                FREE => c.free += 1,
                OWNED => c.owned += 1,
                _ => c.sent += 1,
            }
        }
        c
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn table(n: usize) -> (Vec<AtomicU64>, AtomicU32, EventCount) {
        (
            (0..n).map(|_| AtomicU64::new(0)).collect(),
            AtomicU32::new(0),
            EventCount::new(),
        )
    }

    #[test]
    fn states_move_as_the_table_says() {
        let (w, h, e) = table(2);
        let t = BlockTable::new(&w, &h, &e);
        let a = t.try_alloc(10).expect("a free block");
        let b = t.try_alloc(10).expect("another");
        assert_ne!(a.index, b.index);
        assert_eq!(t.try_alloc(10), None);
        assert_eq!(t.counts().owned, 2);
        // Only the owner frees or sends.
        assert!(!t.free(a, 11));
        assert!(!t.send(a, 11));
        assert!(t.send(a, 10));
        assert_eq!(t.counts().sent, 1);
        // Adopted once, by anybody; a second time fails.
        let got = t.adopt(a.index, a.generation, 11).expect("adopt");
        assert_eq!(t.adopt(a.index, a.generation, 12), Err(AdoptFail::NotSent));
        assert_eq!(t.adopt(7, 0, 12), Err(AdoptFail::OutOfRange));
        assert!(t.free(got, 11));
        // The next use of the block has another generation: the old token is refused.
        let again = t.try_alloc(12).expect("freed block");
        assert_eq!(again.index, a.index);
        assert_ne!(again.generation, a.generation);
        assert!(t.send(again, 12));
        assert_eq!(t.adopt(a.index, a.generation, 13), Err(AdoptFail::NotSent));
        // A token lost in flight: its block taken back, the token refused afterwards.
        assert_eq!(t.reclaim_sent(), 1);
        assert_eq!(
            t.adopt(again.index, again.generation, 13),
            Err(AdoptFail::NotSent)
        );
        assert_eq!(t.counts().free, 1);
    }

    /// First fit: the blocks in use stay the lowest ones, so a producer taking a batch while a
    /// consumer frees the last one reuses the same few blocks (module docs, "alloc").
    #[test]
    fn allocation_is_first_fit_so_a_batch_reuses_the_blocks_freed_before_it() {
        let (w, h, e) = table(64);
        let t = BlockTable::new(&w, &h, &e);
        let first: Vec<Held> = (0..8).map(|_| t.try_alloc(10).expect("free")).collect();
        assert_eq!(
            first.iter().map(|b| b.index).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        // A second batch is taken while the first is still out; then the first comes back,
        // in order, as a consumer frees it.
        let second: Vec<Held> = (0..8).map(|_| t.try_alloc(10).expect("free")).collect();
        assert_eq!(second[0].index, 8);
        for b in first {
            assert!(t.free(b, 10));
        }
        // The next batch is the first one's blocks again, lowest first, not blocks 16.. (the
        // block freed last, 7, and on past it, was the old rule).
        let third: Vec<u32> = (0..8)
            .map(|_| t.try_alloc(10).expect("free").index)
            .collect();
        assert_eq!(third, (0..8).collect::<Vec<_>>());
        // A block freed below the others is the next one taken.
        assert!(t.free(second[3], 10));
        assert_eq!(t.try_alloc(10).expect("free").index, second[3].index);
        // Blocks in use at the hint are passed over; the hint then moves past them.
        assert_eq!(t.try_alloc(10).expect("free").index, 16);
        assert_eq!(t.try_alloc(10).expect("free").index, 17);
    }

    #[test]
    fn dead_owners_blocks_are_reclaimed_and_live_ones_kept() {
        let (w, h, e) = table(3);
        let t = BlockTable::new(&w, &h, &e);
        let dead = t.try_alloc(20).expect("block");
        let _live = t.try_alloc(21).expect("block");
        let mine = t.try_alloc(22).expect("block");
        assert_eq!(t.reclaim(22, &|pid| pid != 20), 1);
        assert_eq!(t.counts().free, 1);
        // The reclaimed block is allocated again; the dead owner's handle cannot free it.
        let next = t
            .alloc(22, Some(Deadline::after(Duration::ZERO)), |pid| pid != 20)
            .expect("reclaimed block");
        assert_eq!(next.index, dead.index);
        assert!(!t.free(dead, 20));
        assert!(t.free(mine, 22));
    }

    #[test]
    fn alloc_times_out_when_every_owner_lives() {
        let (w, h, e) = table(1);
        let t = BlockTable::new(&w, &h, &e);
        let _held = t.try_alloc(30).expect("block");
        let got = t.alloc(31, Some(Deadline::after(Duration::from_millis(5))), |_| {
            true
        });
        assert_eq!(got, None);
    }

    #[test]
    fn a_waiting_alloc_gets_the_block_freed_by_another_thread() {
        let (w, h, e) = table(1);
        let t = BlockTable::new(&w, &h, &e);
        let held = t.try_alloc(40).expect("block");
        std::thread::scope(|s| {
            let waiter =
                s.spawn(|| t.alloc(41, Some(Deadline::after(Duration::from_secs(10))), |_| true));
            // Free only once the waiter sleeps (or is about to): its registration is visible.
            while e.waiters() == 0 {
                std::thread::yield_now();
            }
            assert!(t.free(held, 40));
            assert_eq!(waiter.join().expect("waiter").map(|h| h.index), Some(0));
        });
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    struct Parts {
        words: Vec<AtomicU64>,
        hint: AtomicU32,
        freed: EventCount,
    }

    fn parts(n: usize) -> Arc<Parts> {
        Arc::new(Parts {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
            hint: AtomicU32::new(0),
            freed: EventCount::new(),
        })
    }

    fn view(p: &Parts) -> BlockTable<'_> {
        BlockTable::new(&p.words, &p.hint, &p.freed)
    }

    /// Two allocators racing for one block: exactly one wins, and the other gets it once freed
    /// (no lost wake-up, no double ownership).
    #[test]
    fn one_block_two_allocators() {
        loom::model(|| {
            crate::waiter::loom_timeouts_fire(false);
            let p = parts(1);
            let q = p.clone();
            let t = loom::thread::spawn(move || {
                let held = view(&q).alloc(1, None, |_| true).expect("block");
                assert!(view(&q).free(held, 1));
            });
            let held = view(&p).alloc(2, None, |_| true).expect("block");
            assert!(view(&p).free(held, 2));
            t.join().unwrap();
            assert_eq!(view(&p).counts().free, 1);
        });
    }

    /// A sent block is adopted by exactly one of two racing receivers.
    #[test]
    fn a_token_is_adopted_once() {
        loom::model(|| {
            let p = parts(1);
            let held = view(&p).try_alloc(1).expect("block");
            assert!(view(&p).send(held, 1));
            let q = p.clone();
            let t =
                loom::thread::spawn(move || view(&q).adopt(held.index, held.generation, 2).is_ok());
            let mine = view(&p).adopt(held.index, held.generation, 3).is_ok();
            let theirs = t.join().unwrap();
            assert!(mine ^ theirs);
        });
    }
}
