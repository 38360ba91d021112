//! What the integration tests (tests/all) and the benchmark binaries (src/bin) share.

pub mod runtime_api;
