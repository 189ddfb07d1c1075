//! The worker's side: greet the pool, then run jobs until told to exit or the pool is gone.
//!
//! Per argument the worker stores its index in the progress slot, runs the task (catching a
//! panic, which fails that argument only), and appends the outcome to a results buffer. The
//! buffer is sent when the job is done, and also every millisecond or so during a long job, so
//! that a death loses as little as possible.
//!
//! This is the one place where a task reference received from the pool becomes a call, hence
//! the `unsafe` below: its justification is the executable check of the handshake.
#![allow(unsafe_code)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::codec::{self, SeqReader, SeqWriter};
use crate::protocol::{self, FromWorker, Link, LinkError, OUTCOME_FAILED, OUTCOME_OK, ToWorker};
use crate::slot::Slot;
use crate::task::Failure;

/// Exit codes of a worker process.
pub(crate) mod code {
    /// Told to exit, or the pool went away.
    pub(crate) const OK: i32 = 0;
    /// The transport broke.
    pub(crate) const LINK: i32 = 70;
    /// The pool sent something that does not decode.
    pub(crate) const PROTOCOL: i32 = 71;
    /// The initializer failed.
    pub(crate) const INIT_FAILED: i32 = 72;
}

const FLUSH_EVERY: Duration = Duration::from_millis(1);
const FLUSH_BYTES: usize = 1 << 20;

/// Runs the worker loop on `link`; returns the process exit code.
pub(crate) fn run(link: &mut dyn Link, slot: &Slot) -> i32 {
    let mut frame = Vec::new();
    let hello = FromWorker::Hello {
        pid: std::process::id(),
        exe: crate::os::exe_identity().unwrap_or_default(),
    };
    if send(link, &hello, &[], &mut frame).is_err() {
        return code::LINK;
    }
    let mut buf = Vec::new();
    let mut results = Vec::new();
    loop {
        match link.recv(&mut buf, None) {
            Ok(()) => {}
            Err(LinkError::Disconnected) => return code::OK,
            Err(_) => return code::LINK,
        }
        let Ok((header, payload)) = protocol::unframe::<ToWorker>(&buf) else {
            return code::PROTOCOL;
        };
        match header {
            ToWorker::Exit => return code::OK,
            ToWorker::Init { task } => {
                let outcome = SeqReader::new(payload)
                    .ok()
                    .and_then(|mut r| r.next_item())
                    .map(|item| item.map_err(|e| Failure::DecodeArgument(e.to_string())))
                    .unwrap_or_else(|| Err(Failure::DecodeArgument("no argument".into())))
                    .and_then(|arg| {
                        let mut out = Vec::new();
                        // SAFETY: the pool checked this worker's executable identity (Hello)
                        // before sending any task, so `task` refers to this same build.
                        unsafe { task.run(arg, &mut out) }
                    });
                match outcome {
                    Ok(()) => {
                        if send(link, &FromWorker::InitDone, &[], &mut frame).is_err() {
                            return code::LINK;
                        }
                    }
                    Err(failure) => {
                        let _ = send(link, &FromWorker::InitFailed { failure }, &[], &mut frame);
                        return code::INIT_FAILED;
                    }
                }
            }
            ToWorker::Run { job, task, first } => {
                if run_job(
                    link,
                    slot,
                    job,
                    task,
                    first,
                    payload,
                    &mut results,
                    &mut frame,
                )
                .is_err()
                {
                    return code::LINK;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_job(
    link: &mut dyn Link,
    slot: &Slot,
    job: u64,
    task: crate::task::TaskRef,
    first: u64,
    payload: &[u8],
    results: &mut Vec<u8>,
    frame: &mut Vec<u8>,
) -> Result<(), LinkError> {
    let words = slot.words();
    words.job.store(job, Ordering::Release);
    let mut items = match SeqReader::new(payload) {
        Ok(items) => items,
        Err(_) => {
            // A payload that does not even hold a count: report the job done with no outcomes;
            // the pool fails its arguments as lost results.
            results.clear();
            SeqWriter::new(results).finish();
            return flush(link, job, first, true, results, frame);
        }
    };
    let mut index = first;
    let mut batch_first = first;
    results.clear();
    let mut writer = SeqWriter::new(results);
    let mut last_flush = Instant::now();
    let mut done = words.done.load(Ordering::Relaxed);
    while let Some(item) = items.next_item() {
        words.item.store(index + 1, Ordering::Release);
        let _ = writer.push_with(|out| {
            let mark = out.len();
            out.push(OUTCOME_OK);
            let outcome = item
                .map_err(|e| Failure::DecodeArgument(e.to_string()))
                // SAFETY: the pool checked this worker's executable identity (Hello) before
                // sending any task, so `task` refers to this same build.
                .and_then(|arg| unsafe { task.run(arg, out) });
            if let Err(failure) = outcome {
                out.truncate(mark);
                out.push(OUTCOME_FAILED);
                let _ = codec::encode_into(&failure, out);
            }
        });
        index += 1;
        done += 1;
        words.done.store(done, Ordering::Release);
        let count = writer.count();
        let more = items.remaining() > 0;
        if more && (count.is_multiple_of(16) || count == 1) {
            let len_now = writer_len(&writer);
            if len_now >= FLUSH_BYTES || last_flush.elapsed() >= FLUSH_EVERY {
                writer.finish();
                flush(link, job, batch_first, false, results, frame)?;
                batch_first = index;
                results.clear();
                writer = SeqWriter::new(results);
                last_flush = Instant::now();
            }
        }
    }
    writer.finish();
    words.item.store(0, Ordering::Release);
    flush(link, job, batch_first, true, results, frame)
}

fn writer_len(writer: &SeqWriter<'_>) -> usize {
    writer.len()
}

fn flush(
    link: &mut dyn Link,
    job: u64,
    first: u64,
    done: bool,
    results: &[u8],
    frame: &mut Vec<u8>,
) -> Result<(), LinkError> {
    send(
        link,
        &FromWorker::Results { job, first, done },
        results,
        frame,
    )
}

fn send(
    link: &mut dyn Link,
    header: &FromWorker,
    payload: &[u8],
    frame: &mut Vec<u8>,
) -> Result<(), LinkError> {
    protocol::frame(header, payload, frame).map_err(|_| LinkError::Broken)?;
    link.send(frame)
}
