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
//! | `offer`: into the bulk segment | the seat's driver | 1 (the link path: into the frame, then into the ring) |
//! | decode out of the area | the worker | 1: byte strings are filled once, not zero-filled first (the link path: out of the ring into the worker's buffer, then decode) |
//!
//! A chunk of many small arguments (under [`COPY_BELOW_PER_ITEM`] bytes each on average, read
//! from the sequence's length in front) is the exception: the worker copies its bytes out of the
//! area in one go and decodes the copy, because decoding small values one read at a time out of
//! the area costs more than that copy (a map of 1 M trivial tasks: 68-74 M tasks/s against
//! 56-67 M/s decoding in place, interleaved A/B on the 2-vCPU VM; the 1 MiB payloads keep the
//! in-place decode).
//!
//! The segment is created when a seat first sends a large job (sized to the next power of two,
//! at least [`BULK_MIN`] and at most [`BULK_MAX`]; larger arguments take the link path), grows
//! when a larger one comes, and is handed to each new worker of the seat once, as a transferred
//! [`Segment`] (`ToWorker::Bulk`, its descriptor by `SCM_RIGHTS`, its header validated by the
//! worker like any other handle's). The caller's buffers are recycled (`wire/recycle.rs`) and the
//! worker keeps its freed heap, so a steady stream of large arguments faults no page after the
//! first.
//!
//! ## Who may touch the bytes
//!
//! The driver writes the area only while its worker holds no job: a driver sends one `Run` and
//! waits for that job to end before the next (`Driver::run_registered`), and the worker decodes
//! every argument of a job out of the area before it runs the first or reports anything about
//! the job (`task::call_chunk`). So the worker never reads bytes being written. Even if a peer
//! broke that rule, no reference to the shared bytes is ever formed (both copies go through
//! [`ipc_shm::ShmRing`], bounds-checked against the segment's own length, and the decode reads
//! at most the announced length) and the length in the frame is checked against the area before
//! the decode: a broken peer can change the values the worker decodes (which the codec then
//! rejects as data, or the task sees as wrong values), never make a copy leave the segment.

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

/// The driver's side: the seat's segment, and which worker has it.
#[derive(Debug, Default)]
pub(crate) struct BulkOut {
    area: Option<Segment>,
    /// The worker (by pid) that was handed the current segment.
    sent_to: Option<u32>,
}

impl BulkOut {
    /// Places `bytes` in the bulk area for the worker `pid` at the other end of `link`,
    /// handing it the segment first if it does not have it (a `Bulk` frame built in `frame`).
    /// Returns the length to put in the `Run` frame, or `None`: the arguments take the link
    /// path (short, too long, or the area could not be made or handed over; the link path
    /// always works, and a broken link shows on the `Run` frame that follows).
    pub(crate) fn offer(
        &mut self,
        link: &mut dyn Link,
        pid: u32,
        bytes: &[u8],
        frame: &mut Vec<u8>,
    ) -> Option<u64> {
        if !(BULK_MIN..=BULK_MAX).contains(&bytes.len()) {
            return None;
        }
        let cap = bytes.len().next_power_of_two();
        if self.area.as_ref().is_none_or(|seg| area_cap(seg) < cap) {
            self.area = None;
            self.sent_to = None;
            self.area = Some(SegmentBuilder::new(cap).type_tag(TAG).create().ok()?);
        }
        let seg = self.area.as_ref()?;
        if self.sent_to != Some(pid) {
            let handed = args::encode(std::slice::from_ref(seg)).ok()?;
            let header = ToWorker::Bulk {
                fds: handed.batch_id(),
            };
            protocol::frame(&header, &handed.bytes, frame).ok()?;
            link.send_with_fds(frame, handed.fds.as_deref()).ok()?;
            self.sent_to = Some(pid);
        }
        ShmRing::new(seg, 0, area_cap(seg)).ok()?.write_at(0, bytes);
        u64::try_from(bytes.len()).ok()
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

/// Whether the `len` bytes at the start of `ring`, read as a sequence (bincode's varint length
/// first), average fewer than [`COPY_BELOW_PER_ITEM`] bytes per item. Only a hint: bytes that
/// are no sequence answer anything, and the decode judges them.
fn small_items(ring: &ShmRing<&Segment>, len: usize) -> bool {
    let mut head = [0u8; 9];
    let n = head.len().min(len);
    ring.read_at(0, &mut head[..n]);
    let count = match head[0] {
        b @ 0..=250 => u64::from(b),
        251 => u64::from(u16::from_le_bytes([head[1], head[2]])),
        252 => u64::from(u32::from_le_bytes([head[1], head[2], head[3], head[4]])),
        253 => u64::from_le_bytes([
            head[1], head[2], head[3], head[4], head[5], head[6], head[7], head[8],
        ]),
        _ => return false,
    };
    count > 0 && (len as u64) / count < COPY_BELOW_PER_ITEM as u64
}

/// The worker's side: the segment it was handed.
#[derive(Debug, Default)]
pub(crate) struct BulkIn {
    area: Option<Segment>,
}

impl BulkIn {
    /// Adopts the segment of a `Bulk` frame's payload (decoded with its descriptors in force:
    /// the caller runs this inside the frame's transfer context). A payload that is not one
    /// bulk segment leaves the worker without an area: the next `Run` that needs it fails
    /// alone, with `DecodeArgument`.
    pub(crate) fn adopt(&mut self, payload: &[u8]) {
        self.area = crate::wire::codec::decode::<Vec<Segment>>(payload)
            .ok()
            .and_then(|mut v| v.pop())
            .filter(|seg| seg.type_tag() == TAG);
    }

    /// The `len` argument bytes the driver placed in the area, to be decoded straight out of
    /// it.
    pub(crate) fn input(&self, len: u64) -> Result<Input<'_>, Failure> {
        let missing = || Failure::DecodeArgument("the pool's bulk area is missing".into());
        let seg = self.area.as_ref().ok_or_else(missing)?;
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
        let bulk = BulkIn { area: Some(seg) };
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
        let small: Vec<u64> = (0..40_000).collect();
        let bytes = codec::encode(&small).expect("encodes");
        ring.write_at(0, &bytes);
        assert!(small_items(&ring, bytes.len()));
        let bulk = BulkIn { area: Some(seg) };
        let input = bulk.input(bytes.len() as u64).expect("in the area");
        assert_eq!(input.decode::<Vec<u64>>().expect("decodes"), small);

        let large = vec!["x".repeat(100 << 10)];
        let bytes = codec::encode(&large).expect("encodes");
        let seg = area(300 << 10);
        let ring = ShmRing::new(&seg, 0, area_cap(&seg)).expect("ring");
        ring.write_at(0, &bytes);
        assert!(!small_items(&ring, bytes.len()));
        // An empty sequence and bytes that are no sequence length are no small items.
        ring.write_at(0, &[0]);
        assert!(!small_items(&ring, 1));
        ring.write_at(0, &[0xff; 9]);
        assert!(!small_items(&ring, 9));
        ring.write_at(0, &bytes);
        let bulk = BulkIn { area: Some(seg) };
        let input = bulk.input(bytes.len() as u64).expect("in the area");
        assert_eq!(input.decode::<Vec<String>>().expect("decodes"), large);
    }

    #[test]
    fn a_worker_without_an_area_fails_the_job_and_a_foreign_payload_is_not_adopted() {
        let mut bulk = BulkIn::default();
        assert!(matches!(bulk.input(1), Err(Failure::DecodeArgument(m)) if m.contains("missing")));
        bulk.adopt(b"not a segment");
        assert!(bulk.area.is_none());
        assert_eq!(area_cap(&area(1)), 1);
    }
}
