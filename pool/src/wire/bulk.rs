//! The bulk area: a large job's arguments travel through a shared segment of the worker's seat
//! instead of streaming through the link's ring.
//!
//! A link's ring holds 256 KiB per direction. A 1 MiB argument streamed through it is copied
//! in four or more pieces, and each piece waits for the other side to drain the last one: the
//! driver and the worker must both be on a CPU at once, over and over, and each time one of
//! them sleeps the hand-off costs a futex wake-up (tens of microseconds on a VM whose idle vCPU
//! is halted). With more workers than free CPUs that is most of the time. Instead, arguments
//! of at least [`BULK_MIN`] bytes are copied once into the seat's bulk segment, and the `Run`
//! frame says how long they are (`ToWorker::Run { bulk: Some(len) }`); the worker decodes them
//! straight out of the area ([`Input::Area`], `ipc_shm::codec::decode_ring`) whenever it gets
//! to the frame. Nobody waits for anybody.
//!
//! | step | who | copies |
//! |---|---|---|
//! | submit: encode the arguments | the caller | 1 |
//! | `offer`: into the bulk segment | the seat's driver | 1 (the link path: into the frame, then into the ring); 0 when the caller encoded them into an area of their own (`wire/shared_args.rs`, a map's large chunks once the process has seen large arguments) |
//! | decode out of the area | the worker | 1: byte strings are filled once, not zero-filled first (the link path: out of the ring into the worker's buffer, then decode) |
//!
//! A chunk of many small arguments (under [`COPY_BELOW_PER_ITEM`] bytes each on average, read
//! from the sequence's length in front) is the exception: the worker copies its bytes out of the
//! area in one go and decodes the copy, because decoding small values one read at a time out of
//! the area costs more than that copy (a map of 1 M trivial tasks: 68-74 M tasks/s against
//! 56-67 M/s decoding in place, interleaved A/B on the 2-vCPU VM; the 1 MiB payloads keep the
//! in-place decode).
//!
//! The seat's segment is created when a seat first sends a large job (sized to the next power
//! of two, at least [`BULK_MIN`] and at most [`BULK_MAX`]; larger arguments take the link path),
//! and grows when a larger one comes. Every area (the seat's, or one a caller encoded into) is
//! handed to a worker once, as a transferred [`Segment`] (`ToWorker::Bulk { id }`, its
//! descriptor by `SCM_RIGHTS`, its header validated by the worker like any other handle's), and
//! the worker keeps it mapped ([`KEPT_AREAS`] areas, [`KEPT_BYTES`] bytes at most, the least
//! recently used dropped first); the driver keeps the same account by the same rule, so an area
//! the worker has is named by id (`ToWorker::UseBulk`), not handed again. Mapping an area anew
//! for every job (a `mmap`, a page fault per 16 pages on first read, a `munmap`) cost the
//! worker almost what the driver's copy it replaced had cost: a map of 16 x 1 MiB arguments
//! took 352 us per task before areas of their own, 256 us with them and kept mappings (medians
//! of 8 interleaved pairs on the 2-vCPU VM; no gain without keeping them). The caller's
//! buffers and areas are recycled (`wire/recycle.rs`, `wire/shared_args.rs`) and the worker
//! keeps its freed heap, so a steady stream of large arguments faults no page after the first.
//!
//! ## Who may touch the bytes
//!
//! The driver writes the seat's area only while its worker holds no job (and a caller writes
//! its own area only while no job holds it: `wire/shared_args.rs`): a driver sends one `Run` and
//! waits for that job to end before the next (`Driver::run_registered`), and the worker decodes
//! every argument of a job out of the area before it runs the first or reports anything about
//! the job (`task::call_chunk`). So the worker never reads bytes being written. Even if a peer
//! broke that rule, no reference to the shared bytes is ever formed (both copies go through
//! [`ipc_shm::ShmRing`], bounds-checked against the segment's own length, and the decode reads
//! at most the announced length) and the length in the frame is checked against the area before
//! the decode: a broken peer can change the values the worker decodes (which the codec then
//! rejects as data, or the task sees as wrong values), never make a copy leave the segment.

use std::sync::atomic::{AtomicU64, Ordering};

use ipc_shm::{ByteRing, Segment, SegmentBuilder, ShmRing, TypeTag};

use serde::de::DeserializeOwned;

use crate::task::Failure;
use crate::wire::args;
use crate::wire::codec::{self, CodecDecodeError};
use crate::wire::protocol::{self, Link, ToWorker};

/// Arguments at least this long go through the bulk area (smaller ones fit the ring with room
/// to spare, and take one copy fewer there than a separate message would cost).
pub(crate) const BULK_MIN: usize = 128 << 10;
/// Arguments longer than this take the link path, so that one huge argument does not pin a
/// segment of its size to the seat for the pool's life.
pub(crate) const BULK_MAX: usize = 64 << 20;
/// The type tag of bulk segments.
const TAG: TypeTag = TypeTag::from_name("pool-bulk/v1");

/// One bulk segment, with a process-unique id that tells a driver whether its worker was
/// already handed this very segment.
#[derive(Debug)]
pub(crate) struct Area {
    seg: Segment,
    id: u64,
}

impl Area {
    /// A new area of at least `len` bytes (the next power of two), or `None` if the segment
    /// could not be made.
    pub(crate) fn new(len: usize) -> Option<Area> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let cap = len.checked_next_power_of_two()?;
        let seg = SegmentBuilder::new(cap).type_tag(TAG).create().ok()?;
        Some(Area {
            seg,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Its process-unique id.
    #[cfg(test)]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// How many bytes it holds.
    pub(crate) fn cap(&self) -> usize {
        area_cap(&self.seg)
    }

    /// Its bytes, as a ring (bounds-checked copies; no reference to the shared bytes).
    pub(crate) fn ring(&self) -> Option<ShmRing<&Segment>> {
        ShmRing::new(&self.seg, 0, self.cap()).ok()
    }
}

/// How many areas a worker keeps mapped at most (the driver keeps the same account of them).
const KEPT_AREAS: usize = 32;
/// How many bytes of areas a worker keeps mapped at most.
const KEPT_BYTES: usize = 64 << 20;

/// The areas a worker keeps mapped, least recently used first: the worker's own list, and
/// the driver's account of it, kept by the same rule from the same frames, so the driver
/// knows which areas it need not hand over again. An area that falls out is unmapped by the
/// worker; if the caller has dropped it too, its memory goes back to the system.
#[derive(Debug)]
struct Kept<T> {
    areas: Vec<(u64, usize, T)>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept { areas: Vec::new() }
    }
}

impl<T> Kept<T> {
    /// Adds area `id` of `cap` bytes as the most recently used, dropping the least recently
    /// used ones beyond the limits.
    fn add(&mut self, id: u64, cap: usize, area: T) {
        self.areas.retain(|(i, _, _)| *i != id);
        self.areas.push((id, cap, area));
        while self.areas.len() > KEPT_AREAS
            || self.areas.iter().map(|(_, c, _)| c).sum::<usize>() > KEPT_BYTES
        {
            self.areas.remove(0);
        }
    }

    /// Area `id`, now the most recently used, if it is kept.
    fn touch(&mut self, id: u64) -> Option<&T> {
        let at = self.areas.iter().position(|(i, _, _)| *i == id)?;
        let entry = self.areas.remove(at);
        self.areas.push(entry);
        self.areas.last().map(|(_, _, a)| a)
    }

    /// The most recently used area's id.
    fn current(&self) -> Option<u64> {
        self.areas.last().map(|(id, _, _)| *id)
    }
}

/// The driver's side: the seat's own area, and its account of the areas its worker keeps.
#[derive(Debug, Default)]
pub(crate) struct BulkOut {
    area: Option<Area>,
    /// The worker (by pid) the account is of.
    worker: Option<u32>,
    /// The areas that worker keeps; the last one is the one it reads from.
    kept: Kept<()>,
}

impl BulkOut {
    /// Makes the arguments of a job readable by the worker `pid` at the other end of `link`
    /// in a bulk area, handing it the area first if it does not have it (a `Bulk` frame built
    /// in `frame`), or telling it to read from an area it keeps (`UseBulk`): `filled`, the area
    /// the caller encoded them into (`wire/shared_args.rs`), or else the seat's own area, into
    /// which `bytes` are copied. Returns the length to put in the `Run` frame, or `None`: the
    /// arguments take the link path (short, too long, or the area could not be made or handed
    /// over; the link path always works, and a broken link shows on the `Run` frame that
    /// follows).
    pub(crate) fn offer(
        &mut self,
        link: &mut dyn Link,
        pid: u32,
        bytes: &[u8],
        filled: Option<(&Area, usize)>,
        frame: &mut Vec<u8>,
    ) -> Option<u64> {
        if let Some((area, len)) = filled {
            self.hand(link, pid, area, frame)?;
            return u64::try_from(len).ok();
        }
        if !(BULK_MIN..=BULK_MAX).contains(&bytes.len()) {
            return None;
        }
        if self.area.as_ref().is_none_or(|a| a.cap() < bytes.len()) {
            self.area = None;
            self.area = Some(Area::new(bytes.len())?);
        }
        let area = self.area.take()?;
        let handed = self.hand(link, pid, &area, frame);
        if handed.is_some() {
            area.ring()?.write_at(0, bytes);
        }
        self.area = Some(area);
        handed?;
        u64::try_from(bytes.len()).ok()
    }

    /// Forgets what the worker keeps: a new worker starts with no area.
    pub(crate) fn forget(&mut self) {
        self.worker = None;
        self.kept = Kept::default();
    }

    /// Makes `area` the one the worker `pid` reads from: nothing if it is already, `UseBulk`
    /// if the worker keeps it, else a `Bulk` frame that hands it over.
    fn hand(
        &mut self,
        link: &mut dyn Link,
        pid: u32,
        area: &Area,
        frame: &mut Vec<u8>,
    ) -> Option<()> {
        if self.worker != Some(pid) {
            self.worker = Some(pid);
            self.kept = Kept::default();
        }
        if self.kept.current() == Some(area.id) {
            return Some(());
        }
        let sent = if self.kept.touch(area.id).is_some() {
            protocol::frame(&ToWorker::UseBulk { id: area.id }, &[], frame).ok()?;
            link.send_with_fds(frame, None)
        } else {
            let handed = args::encode(std::slice::from_ref(&area.seg)).ok()?;
            let header = ToWorker::Bulk {
                fds: handed.batch_id(),
                id: area.id,
            };
            protocol::frame(&header, &handed.bytes, frame).ok()?;
            self.kept.add(area.id, area.cap(), ());
            link.send_with_fds(frame, handed.fds.as_deref())
        };
        if sent.is_err() {
            // The worker's state is unknown now (the link is likely broken): start over.
            self.worker = None;
            return None;
        }
        Some(())
    }
}

/// Where a job's encoded arguments are, in the worker: in the frame, or in the bulk area.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input<'a> {
    /// In the frame's payload.
    Bytes(&'a [u8]),
    /// The first `len` bytes of the seat's bulk area (`len` checked against it).
    Area {
        ring: ShmRing<&'a Segment>,
        len: usize,
    },
}

/// A chunk in the area whose arguments average fewer bytes than this is copied out and decoded
/// from the copy: with many small arguments the decoder's per-read cost out of the area (a
/// bounds-checked window per read) outweighs one copy of the whole chunk, while large byte
/// strings are still filled straight from the area.
const COPY_BELOW_PER_ITEM: usize = 64;

impl Input<'_> {
    /// Decodes the `T` that must use all of these bytes (for [`Input::Area`], straight out of
    /// the area, or from a copy when the bytes are a sequence of small items).
    #[inline]
    pub(crate) fn decode<T: DeserializeOwned>(self) -> Result<T, CodecDecodeError> {
        match self {
            Input::Bytes(bytes) => codec::decode(bytes),
            Input::Area { ring, len } if small_items(&ring, len) => {
                let mut copy = Vec::with_capacity(len);
                ring.append(0, len, &mut copy);
                codec::decode(&copy)
            }
            Input::Area { ring, len } => codec::decode_ring(&ring, 0, len),
        }
    }
}

/// Whether the `len` bytes at the start of `ring`, read as a sequence (its element count
/// first, [`ipc_shm::codec::sequence_len`]), average fewer than [`COPY_BELOW_PER_ITEM`] bytes per item.
/// Only a hint: bytes that are no sequence answer anything, and the decode judges them.
fn small_items(ring: &ShmRing<&Segment>, len: usize) -> bool {
    let mut head = [0u8; ipc_shm::codec::SEQUENCE_LEN_BYTES];
    let n = head.len().min(len);
    ring.read_at(0, &mut head[..n]);
    ipc_shm::codec::sequence_len(&head[..n])
        .is_some_and(|count| count > 0 && (len as u64) / count < COPY_BELOW_PER_ITEM as u64)
}

/// The worker's side: the areas it was handed and keeps, the last one the one it reads from.
#[derive(Debug, Default)]
pub(crate) struct BulkIn {
    kept: Kept<Option<Segment>>,
}

impl BulkIn {
    /// Adopts the area `id` of a `Bulk` frame's payload (decoded with its descriptors in
    /// force: the caller runs this inside the frame's transfer context) as the one to read
    /// from. A payload that is not one bulk segment is kept as a missing area of no bytes: the
    /// `Run` frames that need it fail alone, with `DecodeArgument`. The driver counted it at its
    /// real size, so it drops areas from its account no later than the worker does from its
    /// list: at worst it hands over again an area the worker still has, never names one the
    /// worker dropped.
    pub(crate) fn adopt(&mut self, id: u64, payload: &[u8]) {
        let seg = crate::wire::codec::decode::<Vec<Segment>>(payload)
            .ok()
            .and_then(|mut v| v.pop())
            .filter(|seg| seg.type_tag() == TAG);
        let cap = seg.as_ref().map_or(0, area_cap);
        self.kept.add(id, cap, seg);
    }

    /// Reads from the kept area `id` from now on (`UseBulk`); one the worker does not keep
    /// leaves it without an area, so the next `Run` that needs one fails alone.
    pub(crate) fn select(&mut self, id: u64) {
        if self.kept.touch(id).is_none() {
            self.kept.add(id, 0, None);
        }
    }

    /// The `len` argument bytes the driver placed in the area, to be decoded straight out of
    /// it.
    pub(crate) fn input(&self, len: u64) -> Result<Input<'_>, Failure> {
        let missing = || Failure::DecodeArgument("the pool's bulk area is missing".into());
        let seg = self
            .kept
            .areas
            .last()
            .and_then(|(_, _, seg)| seg.as_ref())
            .ok_or_else(missing)?;
        let ring = ShmRing::new(seg, 0, area_cap(seg)).map_err(|_| missing())?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= ring.cap())
            .ok_or_else(|| {
                Failure::DecodeArgument(format!(
                    "{len} argument bytes announced in a bulk area of {}",
                    ring.cap()
                ))
            })?;
        Ok(Input::Area { ring, len })
    }
}

/// The usable part of a bulk segment: the largest power of two that fits its payload.
fn area_cap(seg: &Segment) -> usize {
    match seg.len() {
        0 => 0,
        n => 1 << n.ilog2(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's side that reads from `seg`.
    fn bulk_in(seg: Segment) -> BulkIn {
        let mut bulk = BulkIn::default();
        bulk.kept.add(1, area_cap(&seg), Some(seg));
        bulk
    }

    fn area(len: usize) -> Segment {
        SegmentBuilder::new(len)
            .type_tag(TAG)
            .create()
            .expect("segment")
    }

    #[test]
    fn the_worker_decodes_exactly_what_was_placed_and_refuses_lengths_beyond_the_area() {
        let seg = area(300 << 10); // usable: 256 KiB
        let value = vec!["a".repeat(1000), "b".into()];
        let bytes = codec::encode(&value).expect("encodes");
        let ring = ShmRing::new(&seg, 0, area_cap(&seg)).expect("ring");
        ring.write_at(0, &bytes);
        // Garbage after the value: only the announced length is read.
        ring.write_at(bytes.len(), &[0xff; 64]);
        let bulk = bulk_in(seg);
        let input = bulk.input(bytes.len() as u64).expect("in the area");
        assert_eq!(input.decode::<Vec<String>>().expect("decodes"), value);
        // One byte more is a trailing garbage byte, refused by the codec.
        let longer = bulk.input(bytes.len() as u64 + 1).expect("in the area");
        assert!(longer.decode::<Vec<String>>().is_err());
        assert!(matches!(
            bulk.input((256 << 10) + 1),
            Err(Failure::DecodeArgument(m)) if m.contains("bulk area of 262144")
        ));
        assert!(matches!(
            bulk.input(u64::MAX),
            Err(Failure::DecodeArgument(_))
        ));
    }

    /// Many small arguments are decoded from a copy, large byte strings straight from the
    /// area; both give the values placed.
    #[test]
    fn small_items_are_copied_out_and_large_ones_decoded_in_place_alike() {
        let seg = area(300 << 10);
        let ring = ShmRing::new(&seg, 0, area_cap(&seg)).expect("ring");
        let small: Vec<u64> = (0..30_000).collect();
        let bytes = codec::encode(&small).expect("encodes");
        ring.write_at(0, &bytes);
        assert!(small_items(&ring, bytes.len()));
        let bulk = bulk_in(seg);
        let input = bulk.input(bytes.len() as u64).expect("in the area");
        assert_eq!(input.decode::<Vec<u64>>().expect("decodes"), small);

        let large = vec!["x".repeat(100 << 10)];
        let bytes = codec::encode(&large).expect("encodes");
        let seg = area(300 << 10);
        let ring = ShmRing::new(&seg, 0, area_cap(&seg)).expect("ring");
        ring.write_at(0, &bytes);
        assert!(!small_items(&ring, bytes.len()));
        // An empty sequence and bytes too short for a sequence length are no small items.
        ring.write_at(0, &[0; 8]);
        assert!(!small_items(&ring, 8));
        ring.write_at(0, &[1; 8]);
        assert!(!small_items(&ring, 7));
        ring.write_at(0, &bytes);
        let bulk = bulk_in(seg);
        let input = bulk.input(bytes.len() as u64).expect("in the area");
        assert_eq!(input.decode::<Vec<String>>().expect("decodes"), large);
    }

    /// The driver's account and the worker's list follow one rule: the least recently used
    /// area goes first, past a number of areas or of bytes; a kept area comes back by id.
    #[test]
    fn kept_areas_are_bounded_and_the_least_recently_used_goes_first() {
        let mut kept = Kept::default();
        for id in 0..KEPT_AREAS as u64 {
            kept.add(id, 4096, id);
        }
        assert_eq!(
            kept.touch(0),
            Some(&0),
            "kept, and now the most recently used"
        );
        kept.add(100, 4096, 100);
        assert_eq!(kept.areas.len(), KEPT_AREAS);
        assert!(kept.touch(1).is_none(), "the least recently used went");
        assert_eq!(kept.touch(0), Some(&0));
        assert_eq!(kept.current(), Some(0));
        // Bytes: one area as large as the limit leaves room for nothing else.
        kept.add(200, KEPT_BYTES, 200);
        assert_eq!(kept.areas.len(), 1);
        assert_eq!(kept.current(), Some(200));
        // Re-adding an id replaces it rather than keeping two.
        kept.add(200, 4096, 201);
        assert_eq!(kept.areas.len(), 1);
        assert_eq!(kept.touch(200), Some(&201));
    }

    /// A worker reads from the area it was told to: handed over, then selected again by id
    /// after another one came between.
    #[test]
    fn a_worker_reads_from_the_area_selected_by_id() {
        let (a, b) = (area(4096), area(4096));
        ShmRing::new(&a, 0, 4096)
            .expect("ring")
            .write_at(0, &codec::encode(&1u32).unwrap());
        ShmRing::new(&b, 0, 4096)
            .expect("ring")
            .write_at(0, &codec::encode(&2u32).unwrap());
        let mut bulk = BulkIn::default();
        bulk.kept.add(10, 4096, Some(a));
        bulk.kept.add(11, 4096, Some(b));
        let read = |bulk: &BulkIn| {
            bulk.input(4).and_then(|i| {
                i.decode::<u32>()
                    .map_err(|e| Failure::DecodeArgument(e.to_string()))
            })
        };
        assert_eq!(read(&bulk).expect("decodes"), 2);
        bulk.select(10);
        assert_eq!(read(&bulk).expect("decodes"), 1);
        // An id it never kept: no area, the job fails alone.
        bulk.select(12);
        assert!(read(&bulk).is_err());
    }

    #[test]
    fn a_worker_without_an_area_fails_the_job_and_a_foreign_payload_is_not_adopted() {
        let mut bulk = BulkIn::default();
        assert!(matches!(bulk.input(1), Err(Failure::DecodeArgument(m)) if m.contains("missing")));
        bulk.adopt(1, b"not a segment");
        assert!(matches!(bulk.input(1), Err(Failure::DecodeArgument(m)) if m.contains("missing")));
        assert_eq!(area_cap(&area(1)), 1);
    }
}
