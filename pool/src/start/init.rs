//! `init()`: a program started as a worker (`Spawn`) or as the fork server takes its role here,
//! before its own `main` does anything.
//!
//! A program started by the `Spawn` method, or as the fork server, is the very same executable
//! as the pool's. It must take its role before its own `main` does anything, so [`init`] runs
//! first thing: from the `ctor` constructor (default feature `ctor`, before `main`, which is
//! what makes these methods work inside test binaries) or explicitly at the top of `main`.
//!
//! The role is the program's first argument, which the programs a worker starts do not inherit,
//! so nothing is removed from the environment and this module needs no `unsafe`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::forkserver::ROLE_SERVER;
use super::spawn::{ROLE_SPAWN, ROLE_STANDBY};

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Prepares this program for the `Spawn` and `ForkServer` start methods. Call it first thing in
/// `main`, before any other thread exists (with the default `ctor` feature it has already run
/// before `main`, and calling it again does nothing).
///
/// In a process started as a worker or as the fork server, it never returns: the process does
/// that job and exits. With the `nats` feature, a process whose environment has
/// `POOL_CLUSTER_NODE=<url>` becomes a cluster node here and never returns either (see
/// `pool::cluster::serve_if_node`). Everywhere else it returns at once.
///
/// ```
/// pool::init(); // first thing in `main`
/// // ... build pools with any start method ...
/// ```
pub fn init() {
    let role = std::env::args_os().nth(1);
    match role.as_ref().and_then(|r| r.to_str()) {
        Some(ROLE_SPAWN) => std::process::exit(super::spawn::run_spawned_worker()),
        Some(ROLE_STANDBY) => std::process::exit(super::spawn::run_standby()),
        Some(ROLE_SERVER) => std::process::exit(super::forkserver::run_server()),
        _ => {
            // Before any other thread exists: Fork workers must never call `set_hook` (see
            // `install_forwarding_hook`), so the hook that records a task's panic is in place
            // from the start and forwards every other panic to the hook it replaced.
            crate::task::install_forwarding_hook();
            INITIALISED.store(true, Ordering::SeqCst);
            // Node mode (feature `nats`): `POOL_CLUSTER_NODE=<url>` makes this program a
            // cluster node, which serves until it is killed.
            #[cfg(feature = "nats")]
            if let Some(code) = crate::cluster::serve_if_node() {
                std::process::exit(code);
            }
        }
    }
}

#[cfg(feature = "ctor")]
#[ctor::ctor]
fn auto_init() {
    init();
}

/// Whether [`init`] has run in this process.
pub(crate) fn initialised() -> bool {
    INITIALISED.load(Ordering::SeqCst)
}
