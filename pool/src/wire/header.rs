//! The two headers of every task's round trip, `ToWorker::Run` and `FromWorker::Results`,
//! written and read by hand: the very bytes serde and bincode make of them, in a few
//! instructions instead of serde's enum and struct visitors (which were a good part of an
//! `apply`'s own work on each side).
//!
//! The format is the one of [`ipc_shm::codec`] (bincode, the workspace's configuration), and it
//! is defined by the serde decoder alone. Integers are fixed-width little-endian: a variant
//! index is a `u32` (4 bytes), a `u64` and an `i64` 8 bytes; an `Option` is a `0` or `1` byte,
//! then its value; a `bool` is one `0` or `1` byte.
//!
//! Writing produces exactly serde's bytes (the tests compare them over the whole range of each
//! field). Reading recognises only a header it can take whole: the expected message, an
//! `Option` tag and a `bool` that are `0` or `1`, and nothing after it. Anything
//! else ([`None`]) goes to the serde decoder ([`protocol::unframe`]), which reads it or says
//! why it is wrong, so a header is never read differently here than there. Every read is
//! bounds-checked against the header's bytes, whose length the frame header gave and
//! [`ipc_shm::codec::frame_len`] validated.

use ipc_shm::codec::{FrameHeader, HEADER_LEN, frame_len};

use crate::task::TaskRef;
use crate::wire::codec::CodecEncodeError;
#[cfg(doc)]
use crate::wire::protocol;

/// `ToWorker::Run`'s variant index.
const RUN: u32 = 0;
/// `FromWorker::Results`' variant index.
const RESULTS: u32 = 1;

/// Appends `v` as the codec writes a `u64` (or a sequence's length).
#[inline]
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends an `Option<u64>`.
#[inline]
fn put_option(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
    }
}

/// Writes the frame header in front of the `len` bytes written after `start`.
#[inline]
fn seal(out: &mut [u8], start: usize) -> Result<(), CodecEncodeError> {
    let len = out.len() - start - HEADER_LEN;
    // A header is a few dozen bytes: never too long for a frame, but not unwrapped.
    let header = FrameHeader::new(len).map_err(|_| {
        CodecEncodeError::from(ipc_shm::codec::EncodeError::TooLong {
            len,
            max: ipc_shm::codec::MAX_FRAME_LEN,
        })
    })?;
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// Builds in `out` (replacing its contents) the head of a `Run` frame: the bytes of
/// `protocol::frame(&ToWorker::Run { job, task, fds, bulk }, &[], out)`.
#[inline]
pub(crate) fn run_head(
    job: u64,
    task: TaskRef,
    fds: Option<u64>,
    bulk: Option<u64>,
    out: &mut Vec<u8>,
) -> Result<(), CodecEncodeError> {
    out.clear();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&RUN.to_le_bytes());
    put_u64(out, job);
    let (trampoline, func) = task.offsets();
    out.extend_from_slice(&trampoline.to_le_bytes());
    out.extend_from_slice(&func.to_le_bytes());
    put_option(out, fds);
    put_option(out, bulk);
    seal(out, 0)
}

/// Builds in `out` (replacing its contents) the head of a `Results` frame whose payload is a
/// sequence of `count` outcomes encoded one after the other: the bytes of
/// `protocol::seq_frame_head(&FromWorker::Results { job, first, count, done }, count, out)`.
#[inline]
pub(crate) fn results_head(
    job: u64,
    first: u64,
    count: u64,
    done: bool,
    out: &mut Vec<u8>,
) -> Result<(), CodecEncodeError> {
    out.clear();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&RESULTS.to_le_bytes());
    put_u64(out, job);
    put_u64(out, first);
    put_u64(out, count);
    out.push(u8::from(done));
    seal(out, 0)?;
    // The sequence's length, which belongs to the payload.
    put_u64(out, count);
    Ok(())
}

/// A reader over a header's bytes: every read bounds-checked, `None` past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (a, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*a)
    }

    #[inline]
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    #[inline]
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    #[inline]
    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    #[inline]
    fn option(&mut self) -> Option<Option<u64>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }

    #[inline]
    fn boolean(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

/// Splits a frame into its header's bytes and its payload, the header's length validated as
/// [`protocol::unframe`] does; `None` if it is not valid (the serde path then says why).
#[inline]
fn split(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let (head, rest) = frame.split_first_chunk::<HEADER_LEN>()?;
    let len = frame_len(*head, rest.len()).ok()?;
    Some(rest.split_at(len))
}

/// A `Run` header, as [`read_run`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) job: u64,
    pub(crate) task: TaskRef,
    pub(crate) fds: Option<u64>,
    pub(crate) bulk: Option<u64>,
}

/// Reads a frame whose header is a `ToWorker::Run`: the header and the payload, or `None` for
/// any other frame (see the module docs).
#[inline]
pub(crate) fn read_run(frame: &[u8]) -> Option<(Run, &[u8])> {
    let (header, payload) = split(frame)?;
    let mut r = Reader(header);
    if r.u32()? != RUN {
        return None;
    }
    let job = r.u64()?;
    let trampoline = r.i64()?;
    let func = r.i64()?;
    let fds = r.option()?;
    let bulk = r.option()?;
    if !r.0.is_empty() {
        return None;
    }
    let task = TaskRef::from_offsets(trampoline, func);
    Some((
        Run {
            job,
            task,
            fds,
            bulk,
        },
        payload,
    ))
}

/// A `Results` header, as [`read_results`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Results {
    pub(crate) job: u64,
    pub(crate) first: u64,
    pub(crate) count: u64,
    pub(crate) done: bool,
}

/// Reads a frame whose header is a `FromWorker::Results`: the header and the payload, or
/// `None` for any other frame (see the module docs).
#[inline]
pub(crate) fn read_results(frame: &[u8]) -> Option<(Results, &[u8])> {
    let (header, payload) = split(frame)?;
    let mut r = Reader(header);
    if r.u32()? != RESULTS {
        return None;
    }
    let results = Results {
        job: r.u64()?,
        first: r.u64()?,
        count: r.u64()?,
        done: r.boolean()?,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some((results, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::{self, FromWorker, ToWorker};
    use proptest::prelude::*;

    /// Values at the boundaries of every integer width, and arbitrary ones from proptest.
    const EDGES: [u64; 12] = [
        0,
        1,
        250,
        251,
        252,
        65_535,
        65_536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        1 << 40,
        u64::MAX - 1,
        u64::MAX,
    ];

    fn task(trampoline: i64, func: i64) -> TaskRef {
        TaskRef::from_offsets(trampoline, func)
    }

    fn check_run(job: u64, t: i64, f: i64, fds: Option<u64>, bulk: Option<u64>) {
        let task = task(t, f);
        let mut ours = Vec::new();
        run_head(job, task, fds, bulk, &mut ours).unwrap();
        let mut serde = Vec::new();
        let header = ToWorker::Run {
            job,
            task,
            fds,
            bulk,
        };
        protocol::frame(&header, &[], &mut serde).unwrap();
        assert_eq!(ours, serde, "{header:?}");
        ours.extend_from_slice(b"payload");
        let (run, payload) = read_run(&ours).unwrap();
        assert_eq!(
            run,
            Run {
                job,
                task,
                fds,
                bulk
            }
        );
        assert_eq!(payload, b"payload");
        assert!(read_results(&ours).is_none());
    }

    fn check_results(job: u64, first: u64, count: u64, done: bool) {
        let mut ours = Vec::new();
        results_head(job, first, count, done, &mut ours).unwrap();
        let mut serde = Vec::new();
        let header = FromWorker::Results {
            job,
            first,
            count,
            done,
        };
        protocol::seq_frame_head(&header, count as usize, &mut serde).unwrap();
        assert_eq!(ours, serde, "{header:?}");
        let (got, payload) = read_results(&ours).unwrap();
        assert_eq!(
            got,
            Results {
                job,
                first,
                count,
                done
            }
        );
        let mut len = Vec::new();
        put_u64(&mut len, count);
        assert_eq!(payload, len);
        assert!(read_run(&ours).is_none());
    }

    #[test]
    fn headers_are_serdes_bytes_at_every_integer_boundary() {
        for &v in &EDGES {
            let s = v as i64;
            check_run(v, s, s.wrapping_neg(), None, None);
            check_run(v, i64::MIN, i64::MAX, Some(v), Some(v));
            check_run(1, s, -1, Some(v), None);
            check_results(v, v, v, true);
            check_results(v, 0, 1, false);
        }
    }

    /// A header the hand reader does not take whole is left to serde, which reads it the
    /// same way or refuses it: the reader never accepts what serde would not.
    fn agrees_with_serde(frame: &[u8]) {
        if let Some((run, payload)) = read_run(frame) {
            let (header, p) = protocol::unframe::<ToWorker>(frame).expect("serde reads it");
            assert!(matches!(header, ToWorker::Run { job, task, fds, bulk }
                if job == run.job && task == run.task && fds == run.fds && bulk == run.bulk));
            assert_eq!(p, payload);
        }
        if let Some((res, payload)) = read_results(frame) {
            let (header, p) = protocol::unframe::<FromWorker>(frame).expect("serde reads it");
            assert!(
                matches!(header, FromWorker::Results { job, first, count, done }
                if job == res.job && first == res.first && count == res.count && done == res.done)
            );
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn other_frames_are_left_to_serde() {
        let mut frame = Vec::new();
        protocol::frame(&ToWorker::Exit, &[], &mut frame).unwrap();
        assert!(read_run(&frame).is_none());
        protocol::frame(&FromWorker::InitDone, &[], &mut frame).unwrap();
        assert!(read_results(&frame).is_none());
        // A `bool` other than 0 or 1, and a byte after the header, are serde's to refuse.
        results_head(1, 0, 1, true, &mut frame).unwrap();
        // The `done` byte, before the payload's sequence length.
        let done_at = frame.len() - 9;
        frame[done_at] = 2;
        assert!(read_results(&frame).is_none());
        assert!(protocol::unframe::<FromWorker>(&frame).is_err());
        // Truncated frames.
        run_head(7, task(1, 2), None, None, &mut frame).unwrap();
        for cut in 0..frame.len() {
            assert!(read_run(&frame[..cut]).is_none(), "{cut}");
        }
    }

    proptest! {
        #[test]
        fn any_run_header_is_serdes(job: u64, t: i64, f: i64, fds: Option<u64>, bulk: Option<u64>) {
            check_run(job, t, f, fds, bulk);
        }

        #[test]
        fn any_results_header_is_serdes(job: u64, first: u64, count: u64, done: bool) {
            check_results(job, first, count, done);
        }

        #[test]
        fn garbage_is_read_as_serde_reads_it(
            body in proptest::collection::vec(any::<u8>(), 0..40),
            variant in 0u8..3,
        ) {
            let mut frame = Vec::new();
            frame.extend_from_slice(&[0; HEADER_LEN]);
            frame.extend_from_slice(&u32::from(variant).to_le_bytes());
            frame.extend_from_slice(&body);
            let len = frame.len() - HEADER_LEN;
            let header = FrameHeader::new(len).unwrap().to_bytes();
            frame[..HEADER_LEN].copy_from_slice(&header);
            // Any split of the bytes into header and payload.
            for cut in 0..=len {
                let mut f = frame.clone();
                f[..HEADER_LEN].copy_from_slice(&FrameHeader::new(cut).unwrap().to_bytes());
                agrees_with_serde(&f);
            }
        }
    }
}
