//! [`ClusterError`]: why a cluster pool or node could not do what was asked.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// An error of the NATS client (or of the system under it), shared so that [`ClusterError`] can
/// be `Clone` like the pool's other errors. It is the `source()` of the [`ClusterError`] that
/// holds it, and its own `source()` is the client's error.
#[derive(Debug, Clone)]
pub struct NatsError(Arc<dyn Error + Send + Sync + 'static>);

impl NatsError {
    pub(crate) fn new(e: impl Error + Send + Sync + 'static) -> NatsError {
        NatsError(Arc::new(e))
    }

    /// The client's error.
    pub fn inner(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Error for NatsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// Equal when the client reported the same message.
impl PartialEq for NatsError {
    fn eq(&self, other: &NatsError) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for NatsError {}

/// Why a cluster pool (or node) could not take, send or run a task.
///
/// It reaches a caller as [`PoolError::Cluster`](crate::PoolError::Cluster), inside
/// [`TaskError::Pool`](crate::TaskError::Pool) for a task's own failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The cluster settings are invalid.
    #[error("invalid cluster configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// The NATS server could not be reached (or refused the credentials).
    #[error("cannot connect to the NATS server at {url}")]
    Connect {
        /// The server address given.
        url: String,
        /// The client's error.
        #[source]
        source: NatsError,
    },
    /// A JetStream request (stream or consumer set-up, a purge) failed.
    #[error("JetStream request failed: {op}")]
    JetStream {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        #[source]
        source: NatsError,
    },
    /// A task message could not be published before the publish timeout (the server stayed
    /// unreachable, or refused the message).
    #[error("publishing the task failed")]
    Publish {
        /// The client's error.
        #[source]
        source: NatsError,
    },
    /// One task's encoding is larger than the server accepts in one message.
    #[error("the task's message is {len} bytes, the server takes at most {max}")]
    TooLarge {
        /// The message's size.
        len: usize,
        /// The server's `max_payload`.
        max: usize,
    },
    /// The node that took the task runs a different build of the program, so it cannot find
    /// the task's function; it refused the task rather than run the wrong code.
    #[error(
        "node {node} runs a different build of the program than the caller; it refused the task"
    )]
    BuildMismatch {
        /// The node (host name and pid).
        node: String,
    },
    /// The task was delivered `attempts` times and every node that took it was lost (died, or
    /// was cut off) before it reported: it is not tried again (see `NatsCluster::max_attempts`).
    #[error("the task was delivered {attempts} times and its node was lost each time")]
    AttemptsExhausted {
        /// How many deliveries were made.
        attempts: u32,
    },
    /// A frame from the named peer had the wrong size or shape and was refused.
    #[error("a frame from {peer} was refused: {detail}")]
    BadFrame {
        /// Who sent it.
        peer: String,
        /// What was wrong.
        detail: String,
    },
    /// The node's local pool could not run the task.
    #[error("node {node} could not run the task: {message}")]
    Node {
        /// The node (host name and pid).
        node: String,
        /// Its error.
        message: String,
    },
    /// The node heard no heartbeat from this pool for `silent` (the caller was cut off from the
    /// server that long, or looked so) and stopped the task, as it stops those of a caller that
    /// died (see "A caller that dies" in the `cluster` module docs).
    #[error("node {node} heard nothing from this pool for {silent:?} and stopped the task")]
    CallerSilent {
        /// The node (host name and pid).
        node: String,
        /// How long the pool's heartbeat had been silent on the node.
        silent: std::time::Duration,
    },
    /// The pool's private runtime (the threads that run the NATS client) could not start.
    #[error("cannot start the cluster runtime")]
    Runtime(#[source] NatsError),
}

impl From<ClusterError> for crate::TaskError {
    fn from(e: ClusterError) -> crate::TaskError {
        crate::TaskError::Pool(crate::PoolError::Cluster(e))
    }
}

impl ClusterError {
    pub(crate) fn jetstream(op: &'static str, e: impl Error + Send + Sync + 'static) -> Self {
        ClusterError::JetStream {
            op,
            source: NatsError::new(e),
        }
    }
}
