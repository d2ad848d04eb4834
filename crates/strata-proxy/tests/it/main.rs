//! Integration tests of strata-proxy against the harness's real PostgreSQL, with real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod caching;
mod catalog;
mod console;
mod dashboard;
mod differential;
mod faults;
mod keys;
mod leaks;
mod pipelining;
mod pooling;
mod psycopg;
mod redis_down;
mod seam;
mod semantic;
mod sessions;
mod shared_redis;
mod support;
mod tls;
mod wal;
mod wal_cases;
mod wal_fleet;
mod writer_faults;
