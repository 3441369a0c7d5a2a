//! Model cost tracking and per-key budgets (LiteLLM's `max_budget` /
//! `budget_duration`, Helicone's cost tracking).
//!
//! - [`Pricing`] prices an answer's usage by the model that served it
//!   (`[pricing]`: `provider/model`, then the model's name, then the name the
//!   client asked for).
//! - [`Ledger`] keeps each API key's spend of its current budget
//!   [`Period`] as an integer count of nano-USD in an atomic word (no lock
//!   on the request path), persisted to `uat_key_spend_replica` in the
//!   storage database (SQLite or PostgreSQL) by a background task: each
//!   replica upserts its own rows, absolute totals per key and period (a
//!   write repeated or landing late counts once), every second and at
//!   shutdown, and on PostgreSQL the sum of every replica's rows (and of
//!   the older `uat_key_spend`'s, left as it is, while it exists) is read
//!   back every few seconds, so replicas sharing the database see each
//!   other's spend. A replica that stops cleanly, none of its writes having
//!   failed, folds its rows into one per key and period; a replica killed,
//!   or one a write of which failed, leaves its rows (still summed, just
//!   not compacted).
//!   Enforcement across replicas is therefore eventually consistent, by a
//!   few seconds. The database is never waited for by a
//!   request: while it is unreachable the spend is kept in memory (logged
//!   once per outage) and written when it is back.
//! - [`record`] and [`record_unpriced`] feed `uat_spend_usd_total{key,model}`
//!   and `uat_spend_unpriced_total{model}`.

mod ledger;
mod metrics;
mod period;
mod pricing;

pub use ledger::{Account, KeyBudget, Ledger, LedgerOptions};
pub use metrics::{record, record_estimated, record_unpriced};
pub use period::{Period, unix_now};
pub use pricing::{Price, Pricing};

/// Nano-USD in one USD: spend is counted in whole nano-USD.
pub const NANOS_PER_USD: u64 = 1_000_000_000;

/// An error of the spend ledger.
#[derive(Debug, thiserror::Error)]
pub enum SpendError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The ledger's background task is gone (the runtime is shutting down).
    #[error("the spend ledger's task has stopped")]
    Stopped,
}

/// USD of a count of nano-USD.
pub fn usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD as f64
}

/// Nano-USD of an amount of USD (rounded; negative or not a number: 0).
pub fn nanos(usd: f64) -> u64 {
    // `as` saturates: a huge amount is u64::MAX, NaN is 0.
    (usd * NANOS_PER_USD as f64).round() as u64
}

/// Nano-USD written as USD with up to nine decimals and no trailing zeros
/// (`125000` -> `0.000125`, `2_500_000_000` -> `2.5`, `0` -> `0`): exact,
/// where a float's text could read `0.00012500000000000003`.
pub fn format_usd(nanos: u64) -> String {
    let (whole, frac) = (nanos / NANOS_PER_USD, nanos % NANOS_PER_USD);
    if frac == 0 {
        return whole.to_string();
    }
    let text = format!("{whole}.{frac:09}");
    text.trim_end_matches('0').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_is_written_exactly() {
        assert_eq!(format_usd(0), "0");
        assert_eq!(format_usd(125_000), "0.000125");
        assert_eq!(format_usd(1), "0.000000001");
        assert_eq!(format_usd(2_500_000_000), "2.5");
        assert_eq!(format_usd(25 * NANOS_PER_USD), "25");
        assert_eq!(nanos(25.0), 25 * NANOS_PER_USD);
        assert_eq!(nanos(0.000125), 125_000);
        assert_eq!(nanos(-1.0), 0);
        assert_eq!(nanos(f64::NAN), 0);
        assert_eq!(usd(2_500_000_000), 2.5);
    }
}
