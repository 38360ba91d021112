//! floe-lambda: floe as an AWS Lambda on an Amazon MSK (or self-managed Kafka) event
//! source mapping.
//!
//! ```text
//! MSK -> event source mapping -> bootstrap: records -> floe-batch (components, MERGE,
//!        dead letters) -> {"batchItemFailures": [...]}
//! ```
//!
//! `main.rs` is thin: it reads the configuration ([`config`]), builds the container's
//! state once ([`handler::Floe::init`]) and hands each event to
//! [`handler::Floe::handle`]. See docs/lambda.md.

pub mod access;
pub mod aws;
pub mod config;
pub mod event;
pub mod handler;
pub mod letters;
pub mod response;
