//! End-to-end L1 hit through QueryCache against a raw quick_cache get (written below).
fn main() {}
