//! What a cluster caller and a node say to each other over JetStream: one task message per
//! chunk, one result message per chunk, and the build identity both sides compare.
//!
//! Both are frames of the pool's local wire ([`crate::wire::protocol::frame`]): one
//! [`ipc_shm::codec`] frame carrying the header, then the payload, so every byte a node or a
//! caller reads from the network is bounded by the same frame check and the same decode limit
//! as a local worker's frame.
//!
//! ```text
//! task   | TaskHeader   | args: one bincode Vec<A> of `count` elements            |
//! result | ResultHeader | outcomes: the Segment::Outcomes payloads, back to back  |
//! ```
//!
//! A result is validated before anything of it is delivered ([`validate`]): every task of the
//! chunk is covered exactly once, every byte range lies inside the payload, or the whole result
//! is refused as [`ClusterError::BadFrame`](super::ClusterError::BadFrame).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Exit, TaskError};
use crate::stats::{WorkerState, WorkerStats};
use crate::task::{ResliceRef, TaskRef};

/// A build's identity: the length of its executable and a 64-bit hash of all its bytes. Two
/// copies of the same build on different machines have the same identity (unlike the local
/// pool's device and inode), and a rebuilt program has another.
pub(crate) type BuildId = (u64, u64);

/// This executable's [`BuildId`], computed once per process (`(0, 0)` if `/proc/self/exe`
/// cannot be read, which matches no real build).
pub(crate) fn build_id() -> BuildId {
    static ID: OnceLock<BuildId> = OnceLock::new();
    *ID.get_or_init(|| match std::fs::read("/proc/self/exe") {
        Ok(bytes) => (bytes.len() as u64, hash(&bytes)),
        Err(_) => (0, 0),
    })
}

/// A fast 64-bit hash of `bytes` (multiply-rotate over 8-byte words, then a final mix): this
/// tells builds apart, it is no defence against someone forging a build on purpose.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = 0x243f_6a88_85a3_08d3u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    h ^= h >> 31;
    h = h.wrapping_mul(K);
    h ^ (h >> 29)
}

/// The most tasks one message may carry: a caller splits larger chunks, a node refuses a
/// message that claims more (so a hostile count cannot make it report millions of failures).
pub(crate) const MAX_TASKS_PER_MESSAGE: u64 = 1 << 20;

/// Caller → node: run `task` over the payload's `count` arguments.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskHeader {
    /// The chunk's id within its pool (results carry it back; duplicates are dropped by it).
    pub(crate) job: u64,
    /// The function and its trampoline, by offset from the anchor.
    pub(crate) task: TaskRef,
    /// The argument type's re-slicer, by offset from the anchor.
    pub(crate) reslice: ResliceRef,
    /// How many arguments the payload holds.
    pub(crate) count: u64,
    /// The caller's build.
    pub(crate) build: BuildId,
    /// Deliveries after which the node reports the chunk lost instead of running it.
    pub(crate) max_attempts: u32,
    /// The caller's `task_timeout`, in milliseconds.
    pub(crate) timeout_ms: Option<u64>,
    /// Where the result goes (inside the cluster's results subjects).
    pub(crate) reply: String,
}

/// Node → caller: what became of chunk `job`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ResultHeader {
    /// The chunk's id ([`TaskHeader::job`]).
    pub(crate) job: u64,
    /// Which node answered (its host name and pid).
    pub(crate) node: String,
    /// Which delivery of the chunk this was (1 for the first).
    pub(crate) attempt: u32,
    /// The outcome.
    pub(crate) body: ResultBody,
}

/// What a node did with a chunk.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ResultBody {
    /// It ran: the outcome of every task, in segments.
    Ran(Vec<Segment>),
    /// It refused the whole chunk without running any of it.
    Refused(Refusal),
}

/// Outcomes of some tasks of a chunk (indexes relative to the chunk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Segment {
    /// `len` payload bytes (the next ones) encode the outcomes of tasks `first..first + count`
    /// as one `Vec<Result<R, Failure>>`.
    Outcomes { first: u64, count: u64, len: u64 },
    /// Task `index` failed on the node for a reason of the node's local pool.
    Failed { index: u64, error: WireError },
}

/// Why a node refused a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// The node runs another build; its identity.
    BuildMismatch { node_build: BuildId },
    /// The chunk was delivered this many times already (its nodes were lost each time).
    AttemptsExhausted { attempts: u32 },
    /// The chunk's header or arguments are malformed.
    BadTask { detail: String },
    /// The node's local pool cannot take work.
    NodePool { message: String },
    /// The node heard no heartbeat from the pool for this long and stopped its chunk.
    CallerSilent { silent_ms: u64 },
}

/// A local pool's [`TaskError`] on a node, as it travels back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireError {
    Panicked {
        message: String,
        location: Option<crate::PanicLocation>,
        backtrace: Option<String>,
    },
    WorkerLost {
        pid: u32,
        exit: Exit,
    },
    Timeout(Duration),
    Argument(String),
    Result(String),
    Terminated,
    Other(String),
}

impl From<TaskError> for WireError {
    fn from(e: TaskError) -> WireError {
        match e {
            TaskError::Panicked {
                message,
                location,
                backtrace,
                ..
            } => WireError::Panicked {
                message,
                location,
                backtrace: backtrace.map(|b| b.as_str().to_owned()),
            },
            TaskError::WorkerLost { pid, exit } => WireError::WorkerLost { pid, exit },
            TaskError::Timeout { limit } => WireError::Timeout(limit),
            TaskError::Argument(m) => WireError::Argument(m),
            TaskError::Result(m) => WireError::Result(m),
            TaskError::Terminated => WireError::Terminated,
            other => WireError::Other(other.to_string()),
        }
    }
}

impl WireError {
    /// The caller's error for a task that failed on node `node`.
    pub(crate) fn into_task_error(self, node: &str) -> TaskError {
        match self {
            WireError::Panicked {
                message,
                location,
                backtrace,
            } => TaskError::Panicked {
                message,
                location,
                backtrace: backtrace.map(crate::error::WorkerBacktrace::new),
            },
            WireError::WorkerLost { pid, exit } => TaskError::WorkerLost { pid, exit },
            WireError::Timeout(limit) => TaskError::Timeout { limit },
            WireError::Argument(m) => TaskError::Argument(m),
            WireError::Result(m) => TaskError::Result(m),
            WireError::Terminated | WireError::Other(_) => {
                let message = match self {
                    WireError::Other(m) => m,
                    _ => "the node's local pool was terminated".to_owned(),
                };
                super::ClusterError::Node {
                    node: node.to_owned(),
                    message,
                }
                .into()
            }
        }
    }
}

/// Checks that `segments` cover tasks `0..count` exactly once and that their byte lengths add
/// up to `payload_len`; returns the byte offset of each segment's payload (0 for `Failed`).
pub(crate) fn validate(
    segments: &[Segment],
    count: u64,
    payload_len: usize,
) -> Result<Vec<usize>, String> {
    let count_usize = usize::try_from(count).map_err(|_| "chunk too large".to_owned())?;
    let mut covered = vec![false; count_usize];
    let mut left = count_usize;
    let mut offsets = Vec::with_capacity(segments.len());
    let mut offset = 0usize;
    let mut mark = |index: u64, covered: &mut Vec<bool>| -> Result<(), String> {
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| covered.get_mut(i))
            .ok_or_else(|| format!("task {index} is outside the chunk of {count}"))?;
        if std::mem::replace(slot, true) {
            return Err(format!("task {index} has two outcomes"));
        }
        left -= 1;
        Ok(())
    };
    for segment in segments {
        match segment {
            Segment::Outcomes {
                first,
                count: n,
                len,
            } => {
                let end = first
                    .checked_add(*n)
                    .filter(|&e| e <= count && *n > 0)
                    .ok_or_else(|| format!("outcomes {first}+{n} outside the chunk of {count}"))?;
                for i in *first..end {
                    mark(i, &mut covered)?;
                }
                let len = usize::try_from(*len).map_err(|_| "segment too long".to_owned())?;
                offsets.push(offset);
                offset = offset
                    .checked_add(len)
                    .filter(|&o| o <= payload_len)
                    .ok_or_else(|| format!("segment of {len} bytes past the payload"))?;
            }
            Segment::Failed { index, .. } => {
                mark(*index, &mut covered)?;
                offsets.push(0);
            }
        }
    }
    if left != 0 {
        return Err(format!("{left} of {count} tasks have no outcome"));
    }
    if offset != payload_len {
        return Err(format!(
            "{} payload bytes belong to no segment",
            payload_len - offset
        ));
    }
    Ok(offsets)
}

/// Node → every caller, once a second on the cluster's core subject `pool.<name>.nodes`: what
/// the node is doing, for `Pool::stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeReport {
    pub(crate) node: String,
    pub(crate) in_flight: u64,
    pub(crate) done: u64,
    pub(crate) failed: u64,
    pub(crate) workers: Vec<WorkerReport>,
}

/// One worker of a node, in a [`NodeReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    pid: u32,
    state: u8,
    current_task: Option<u64>,
    running_us: Option<u64>,
    tasks_done: u64,
    tasks_failed: u64,
    restarts: u64,
    rss_bytes: u64,
    cpu_us: u64,
    age_us: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl WorkerReport {
    pub(crate) fn new(w: &WorkerStats) -> WorkerReport {
        WorkerReport {
            pid: w.pid,
            state: match w.state {
                WorkerState::Starting => 0,
                WorkerState::Idle => 1,
                WorkerState::Busy => 2,
                WorkerState::Retiring => 3,
            },
            current_task: w.current_task,
            running_us: w.current_task_runtime.map(micros),
            tasks_done: w.tasks_done,
            tasks_failed: w.tasks_failed,
            restarts: w.restarts,
            rss_bytes: w.rss_bytes,
            cpu_us: micros(w.cpu_time),
            age_us: micros(w.started.elapsed()),
        }
    }

    /// The worker as the caller's `stats` shows it (its start time taken back from its age).
    pub(crate) fn stats(&self) -> WorkerStats {
        let now = Instant::now();
        let ago = |us: u64| now.checked_sub(Duration::from_micros(us)).unwrap_or(now);
        let running = self.running_us.map(Duration::from_micros);
        WorkerStats {
            pid: self.pid,
            state: match self.state {
                0 => WorkerState::Starting,
                2 => WorkerState::Busy,
                3 => WorkerState::Retiring,
                _ => WorkerState::Idle,
            },
            current_task: self.current_task,
            current_task_runtime: running,
            tasks_done: self.tasks_done,
            tasks_failed: self.tasks_failed,
            restarts: self.restarts,
            rss_bytes: self.rss_bytes,
            cpu_time: Duration::from_micros(self.cpu_us),
            started: ago(self.age_us),
            replaced_in: None,
            busy_since: self.running_us.map(ago),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_must_cover_the_chunk_once() {
        let out = |first, count, len| Segment::Outcomes { first, count, len };
        let failed = |index| Segment::Failed {
            index,
            error: WireError::Terminated,
        };
        assert_eq!(
            validate(&[out(0, 2, 5), failed(2), out(3, 1, 3)], 4, 8),
            Ok(vec![0, 0, 5])
        );
        // Missing, doubled, out-of-range tasks and bytes beyond the payload are refused.
        assert!(validate(&[out(0, 2, 5)], 3, 5).is_err());
        assert!(validate(&[out(0, 2, 5), failed(1)], 2, 5).is_err());
        assert!(validate(&[out(0, 2, 5), failed(7)], 2, 5).is_err());
        assert!(validate(&[out(u64::MAX, 2, 5)], 2, 5).is_err());
        assert!(validate(&[out(0, 2, 9)], 2, 5).is_err());
        assert!(validate(&[out(0, 2, 4)], 2, 5).is_err());
        assert!(validate(&[out(0, 0, 0), out(0, 2, 5)], 2, 5).is_err());
    }

    #[test]
    fn the_build_id_is_stable_and_content_based() {
        assert_eq!(build_id(), build_id());
        assert_ne!(build_id(), (0, 0));
        assert_ne!(hash(b"abcdefgh1"), hash(b"abcdefgh2"));
        assert_ne!(hash(&[0; 16]), hash(&[0; 17]));
    }
}
