//! The dead letter queue (`floe_batch::dlq`, shared with the Lambda) and its replay
//! (`floe dlq replay`), which consumes dead letter topics and so belongs to the runner.

pub mod replay;

pub use floe_batch::dlq::*;
