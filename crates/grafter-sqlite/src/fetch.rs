//! A fetch: the queues without limits in one statement (`leasing`), then each
//! limited queue admitted under its limits (`limits`). Apart from both, so that
//! `limits` can build on `leasing`'s lease statements without a circle.

use grafter_core::LeasedJob;
use grafter_store::{JobsFetch, Limited, Result};
use rusqlite::Connection;

use crate::leasing::{plain_fetch, Budget};
use crate::limits;

/// Leases jobs: from the fetch's queues without limits with one statement
/// (the same as before limits existed), then from each limited queue, each
/// admitted under its limits (`limits::admit`) with what is left of the
/// fetch's `max` and byte budget.
pub fn jobs_fetch(
    conn: &Connection,
    params: &JobsFetch,
    limited: &Limited,
) -> Result<Vec<LeasedJob>> {
    let (limited_queues, plain): (Vec<&str>, Vec<&str>) = params
        .queues
        .iter()
        .map(String::as_str)
        .partition(|q| limited.contains(q));
    let mut leased = if plain.is_empty() {
        Vec::new()
    } else {
        plain_fetch(conn, params, &plain)?
    };
    let mut budget = Budget {
        max: params.max,
        bytes: params.max_bytes,
        first_free: true,
    };
    budget.spend(&leased);
    let mut limited_queues = limited_queues;
    limited_queues.sort_unstable();
    limited_queues.dedup();
    for queue in limited_queues {
        if budget.max == 0 {
            break;
        }
        let got = match limits::admit(conn, params, queue, &budget, limited)? {
            Some(got) => got,
            // Its limits are gone: an ordinary queue again.
            None => plain_fetch(
                conn,
                &JobsFetch {
                    max: budget.max,
                    ..params.clone()
                },
                &[queue],
            )?,
        };
        budget.spend(&got);
        leased.extend(got);
    }
    // RETURNING gives no order; hand jobs out in the order they were chosen.
    leased.sort_by_key(|l| (l.job.priority, l.job.run_at, l.job.id));
    Ok(leased)
}
