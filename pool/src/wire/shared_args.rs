//! Large arguments encoded by the caller straight into a bulk area, so that no driver copies
//! them: two copies of a megabyte argument between the caller's value and the task's, not
//! three.
//!
//! The seat's own area (`wire/bulk.rs`) is written by the seat's driver, which must first have
//! the encoded bytes: the caller encodes into a buffer of its heap, the driver copies that into
//! the area, the worker decodes out of it. Here the caller encodes into an area of its own
//! instead, picked from a process-wide list of free ones; the job carries it ([`SharedArgs`]),
//! the driver hands the area itself to its worker (one `Bulk` frame, a descriptor by
//! `SCM_RIGHTS`) and the worker decodes out of it as out of the seat's area. When the job ends
//! the area goes back to the list, and the next large encode writes over it: its pages are
//! already faulted in, in the caller.
//!
//! | step | who | copies |
//! |---|---|---|
//! | encode the arguments into a free area | the caller | 1 |
//! | hand the area to the worker (unless it has it already) | the driver | 0 (a descriptor) |
//! | decode out of the area | the worker | 1 |
//!
//! Finding whether arguments are large costs a sizing pass (byte strings are counted, not
//! copied), so it is done only once this process has encoded large arguments at all: a program
//! that never does pays nothing, and the first large job of a process takes the seat's area.
//! Only arguments made mostly of long byte strings take an area: the sizing pass gives up on
//! arguments with many small fields (a map's chunk of integers), which encode faster into a
//! `Vec` that the driver copies into the seat's area ([`MAX_FINE`]).
//! Arguments that carry descriptors (IPC handles) are sized and encoded in their transfer
//! context like any others (a handle already in the batch reuses its entry, so sizing adds
//! none).
//!
//! ## Who may touch the bytes
//!
//! The caller writes an area only while no job holds it: taken from the free list, filled,
//! then owned by one job until that job is dropped, which happens once its worker reported the
//! job's end or died (`driver.rs`); the worker decodes every argument out of the area before it
//! runs the first task or reports anything (`task::call_chunk`). A worker keeps the last area it
//! was handed mapped until it is handed another, but never reads it again. The driver reads an
//! area only to split a job after its worker died (a rare path: [`SharedArgs::to_vec`]). No
//! reference to the shared bytes is ever formed: every copy goes through
//! [`ipc_shm::ShmRing`], bounds-checked against the segment.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use ipc_shm::ByteRing;
use serde::Serialize;

use crate::wire::bulk::{Area, BULK_MAX, BULK_MIN};

/// How many free areas are kept at most (a map queues one large chunk per task at once: up to
/// this many in flight find an area ready).
const MAX_FREE: usize = 32;
/// How many bytes (of capacity) the free areas hold at most.
const MAX_FREE_BYTES: usize = 64 << 20;

/// Arguments with more than this many bytes of small fields (integers, lengths, short strings:
/// [`ipc_shm::codec::encoded_len_coarse`]) take the ordinary way even when large: they encode
/// faster into a `Vec`, which the driver then copies into the seat's area in one go. A 2-worker
/// map of 1 M `u64`s (chunks of 125 000, ~600 KB each): 0.86-0.88x the time with its chunks
/// encoded the ordinary way (scratch probe, interleaved pairs).
const MAX_FINE: usize = BULK_MIN / 2;

/// The free areas, process-wide.
static FREE: FreeAreas = FreeAreas(Mutex::new(Vec::new()));
/// Whether this process has encoded arguments of at least [`BULK_MIN`] bytes: from then on,
/// arguments are sized before they are encoded (see the module docs).
static SEEN_LARGE: AtomicBool = AtomicBool::new(false);

/// A job's arguments, encoded into a bulk area of their own; the area goes back to the free
/// list when this is dropped.
#[derive(Debug)]
pub(crate) struct SharedArgs {
    area: Option<Area>,
    len: usize,
}

impl SharedArgs {
    /// The area and how many bytes of it hold the arguments.
    pub(crate) fn filled(&self) -> Option<(&Area, usize)> {
        self.area.as_ref().map(|a| (a, self.len))
    }

    /// A copy of the encoded arguments (to split the job, or to send it where no area goes).
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        if let Some(ring) = self.area.as_ref().and_then(Area::ring) {
            ring.append(0, self.len.min(ring.cap()), &mut out);
        }
        out
    }
}

impl Drop for SharedArgs {
    fn drop(&mut self) {
        if let Some(area) = self.area.take() {
            FREE.give(area);
        }
    }
}

/// Notes that this process encoded `len` bytes of arguments the ordinary way: once they are
/// large, later arguments are sized first and may take an area of their own.
#[inline]
pub(crate) fn saw(len: usize) {
    if len >= BULK_MIN && !SEEN_LARGE.load(Ordering::Relaxed) {
        SEEN_LARGE.store(true, Ordering::Relaxed);
    }
}

/// Whether this process has encoded large arguments (from then on, [`encode`] sizes every
/// value it is given).
#[inline]
pub(crate) fn seen_large() -> bool {
    SEEN_LARGE.load(Ordering::Relaxed)
}

/// Encodes `value` into an area of its own if this process has seen large arguments and
/// `value`'s encoding is large too (at least [`BULK_MIN`], at most [`BULK_MAX`] bytes) and made
/// mostly of long byte strings (at most [`MAX_FINE`] bytes of small fields). `None`: encode it
/// the ordinary way (small, many small fields, never seen large ones, no area could be made, or
/// the encode failed: the ordinary encode then says why, or succeeds where a `Serialize` that is
/// not deterministic wrote another length than sizing counted).
#[inline]
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Option<SharedArgs> {
    if !SEEN_LARGE.load(Ordering::Relaxed) {
        return None;
    }
    encode_slow(value)
}

#[cold]
fn encode_slow<T: Serialize + ?Sized>(value: &T) -> Option<SharedArgs> {
    let len = ipc_shm::codec::encoded_len_coarse(value, MAX_FINE).ok()??;
    if !(BULK_MIN..=BULK_MAX).contains(&len) {
        return None;
    }
    let area = FREE.take(len).or_else(|| Area::new(len))?;
    let written = area
        .ring()
        .is_some_and(|ring| ipc_shm::codec::encode_to_ring(value, &ring, 0, len).is_ok());
    let shared = SharedArgs {
        area: Some(area),
        len,
    };
    // Dropped, a failed one goes back to the free list.
    written.then_some(shared)
}

/// Areas no job holds, ready to be written over.
#[derive(Debug)]
struct FreeAreas(Mutex<Vec<Area>>);

impl FreeAreas {
    /// The free area that fits `len` bytes best, if any does.
    fn take(&self, len: usize) -> Option<Area> {
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Of equal fits, the one given back last: its bytes are the likeliest still cached.
        let best = free
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, a)| a.cap() >= len)
            .min_by_key(|(_, a)| a.cap())
            .map(|(i, _)| i)?;
        Some(free.swap_remove(best))
    }

    /// Keeps `area` for a later encode if there is room; drops it (unmapping it here)
    /// otherwise.
    fn give(&self, area: Area) {
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let kept: usize = free.iter().map(Area::cap).sum();
        if free.len() < MAX_FREE && kept + area.cap() <= MAX_FREE_BYTES {
            free.push(area);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_arguments_are_encoded_into_an_area_and_read_back_exactly() {
        saw(BULK_MIN - 1);
        saw(BULK_MIN);
        assert!(SEEN_LARGE.load(Ordering::Relaxed));
        let value = vec!["e".repeat(BULK_MIN + 10)];
        let shared = encode(&value).expect("large, and encodes");
        let (area, len) = shared.filled().expect("an area");
        assert_eq!(len, ipc_shm::codec::encoded_len(&value).expect("sized"));
        assert!(area.cap() >= len);
        assert_eq!(
            shared.to_vec(),
            ipc_shm::codec::encode(&value).expect("encodes")
        );
        assert!(encode(&7u64).is_none(), "small values never take an area");
        let fields = vec![300u64; BULK_MIN];
        assert!(ipc_shm::codec::encoded_len(&fields).expect("sized") > BULK_MIN);
        assert!(
            encode(&fields).is_none(),
            "large, but of small fields: the ordinary way"
        );
        let too_large = "z".repeat(BULK_MAX + 1);
        assert!(
            encode(&too_large).is_none(),
            "beyond BULK_MAX: the ordinary way"
        );
        // A value whose encoding changes length between sizing and encoding takes the
        // ordinary way, which encodes it as it is then.
        let fickle = Fickle(std::cell::Cell::new(0));
        assert!(encode(&fickle).is_none());
        assert_eq!(fickle.0.get(), 2, "sized, then encoded");
    }

    /// Serialises a longer string each time.
    struct Fickle(std::cell::Cell<usize>);

    impl Serialize for Fickle {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.set(self.0.get() + 1);
            s.serialize_str(&"f".repeat(BULK_MIN + self.0.get()))
        }
    }

    #[test]
    fn a_free_area_is_taken_by_the_best_fit_and_the_list_is_bounded() {
        let free = FreeAreas(Mutex::new(Vec::new()));
        let small = Area::new(BULK_MIN).expect("area");
        let big = Area::new(BULK_MIN * 4).expect("area");
        let (small_id, big_id) = (small.id(), big.id());
        free.give(big);
        free.give(small);
        assert_eq!(free.take(BULK_MIN * 8).map(|a| a.id()), None, "none fits");
        assert_eq!(free.take(BULK_MIN / 2).map(|a| a.id()), Some(small_id));
        assert_eq!(free.take(BULK_MIN / 2).map(|a| a.id()), Some(big_id));
        assert!(free.take(1).is_none());
        for _ in 0..MAX_FREE + 3 {
            free.give(Area::new(4096).expect("area"));
        }
        assert_eq!(free.0.lock().expect("lock").len(), MAX_FREE);
    }
}
