//! The shared conformance suite on PostgreSQL, each case in its own fresh schema
//! (dropped afterwards), so cases run in parallel on one database.
//!
//! The database comes from `GRAFTER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). If it cannot be reached the cases
//! are skipped with a loud message, except under CI (`CI` set), where they fail.

mod common;

use common::postgres;
use grafter_store_tests::conformance_suite;

conformance_suite!(postgres());
