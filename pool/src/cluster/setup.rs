//! Connecting to the server and making the cluster's two streams, the same way on callers and
//! nodes (both create them if missing, with the same settings).
//!
//! | stream                  | subjects                 | retention  | who reads                 |
//! |-------------------------|--------------------------|------------|---------------------------|
//! | `POOL_<name>_TASKS`     | `pool.<name>.tasks.>`    | work queue | the nodes' one durable consumer `nodes` |
//! | `POOL_<name>_RESULTS`   | `pool.<name>.results.>`  | limits     | each pool's own ordered consumer, on its own subject |
//!
//! Each pool publishes to `pool.<name>.tasks.<pool id>` and reads `pool.<name>.results.<pool
//! id>`, with a pool id unique to the pool; it purges both subjects and deletes its consumer on
//! close. A pool whose process died leaves messages that no other pool reads, and the streams'
//! `max_age` (the cluster's `ttl`) removes them; its ordered consumer is ephemeral and the
//! server removes it once it is inactive.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use super::{ClusterError, NatsCluster, NatsError};

/// How long to wait for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with the cluster's credentials and TLS settings.
pub(crate) async fn connect(
    c: &NatsCluster,
    name: &str,
) -> Result<async_nats::Client, ClusterError> {
    let fail = |e: NatsError| ClusterError::Connect {
        url: c.url.clone(),
        source: e,
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None::<usize>);
    if let Some((user, password)) = &c.auth.user_password {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &c.auth.token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &c.auth.nkey {
        options = options.nkey(seed.clone());
    }
    if let Some(path) = &c.auth.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| fail(NatsError::new(e)))?;
    }
    for root in &c.tls.root_certificates {
        options = options.add_root_certificates(root.clone());
    }
    if let Some((cert, key)) = &c.tls.client_certificate {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if c.tls.require {
        options = options.require_tls(true);
    }
    options
        .connect(c.url.as_str())
        .await
        .map_err(|e| fail(NatsError::new(e)))
}

/// The cluster's streams (made if missing).
pub(crate) struct Streams {
    pub(crate) tasks: stream::Stream,
    pub(crate) results: stream::Stream,
}

/// Makes (or finds) the task and result streams of cluster `c`.
pub(crate) async fn streams(
    js: &jetstream::Context,
    c: &NatsCluster,
) -> Result<Streams, ClusterError> {
    let tasks = js
        .get_or_create_stream(stream::Config {
            name: c.tasks_stream(),
            subjects: vec![format!("pool.{}.tasks.>", c.name)],
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: c.ttl,
            max_bytes: c.max_stream_bytes,
            duplicate_window: Duration::from_secs(120).min(c.ttl),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::jetstream("creating the task stream", e))?;
    let results = js
        .get_or_create_stream(stream::Config {
            name: c.results_stream(),
            subjects: vec![format!("pool.{}.results.>", c.name)],
            retention: stream::RetentionPolicy::Limits,
            max_age: c.ttl,
            max_bytes: c.max_stream_bytes,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::jetstream("creating the result stream", e))?;
    Ok(Streams { tasks, results })
}

/// The nodes' one shared durable consumer of the task stream.
pub(crate) async fn node_consumer(
    tasks: &stream::Stream,
    ack_wait: Duration,
) -> Result<consumer::Consumer<consumer::pull::Config>, ClusterError> {
    tasks
        .get_or_create_consumer(
            "nodes",
            consumer::pull::Config {
                durable_name: Some("nodes".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                // Attempts are counted per pool (each task carries its `max_attempts`).
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ClusterError::jetstream("creating the nodes' consumer", e))
}
