//! Invalidation from PostgreSQL's write-ahead log, for writes that bypass the proxy: pgoutput's
//! logical replication messages decoded into the relations and replica-identity keys they touch.

#[cfg_attr(not(test), expect(dead_code, reason = "wired into the invalidator next"))]
mod decode;
