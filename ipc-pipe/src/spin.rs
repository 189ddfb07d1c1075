//! The pipe's adaptive spin, in one place: how many times an end polls a ring counter before it
//! sleeps. (The workspace's shared, time-based backoff in `ipc-sync` is meant to replace this
//! module; nothing else in the crate spins.)
//!
//! A receiver that finds no message spins on the ring's `tail` for an adaptive number of polls
//! (doubled after a spin that succeeded, halved after one that had to sleep, within
//! `[SPIN_MIN, spin limit]`), so hot peers exchange messages near the spin floor and an idle
//! receiver quickly stops spinning. A sender waiting for space spins the current budget without
//! adapting it. (Growing the budget after short sleeps too lets peers busy a few microseconds
//! per message keep spinning: measured 54 -> 4 us for 64 KiB round trips. It is not done yet
//! because it also keeps receivers spinning on machines with fewer cores than busy threads, a
//! process pool on two cores, and its cost there was not measurable above this machine's noise;
//! see the project's issues.)

use crate::error::Fail;
use crate::sync::spin_hint;

/// The fewest spin polls an end keeps (unless the spin limit is lower).
pub(crate) const SPIN_MIN: u32 = 16;

/// Calls `ready` up to `budget` times, each after a spin hint (`PAUSE`; a yield under loom),
/// and returns its first `Some` (or `None` when the budget ran out, or its error).
#[inline]
pub(crate) fn poll<T>(
    budget: u32,
    mut ready: impl FnMut() -> Result<Option<T>, Fail>,
) -> Result<Option<T>, Fail> {
    for _ in 0..budget {
        spin_hint();
        if let Some(v) = ready()? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The next budget after a spin of `budget` polls that succeeded or not, within
/// `[SPIN_MIN, limit]` (or `limit` if that is lower).
#[inline]
pub(crate) fn adapt(budget: u32, succeeded: bool, limit: u32) -> u32 {
    let next = if succeeded {
        budget.saturating_mul(2)
    } else {
        budget / 2
    };
    next.max(SPIN_MIN).min(limit)
}
