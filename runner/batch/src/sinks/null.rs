//! `--sink none`: accepts every load without sending it anywhere. The pipeline still
//! validates, transforms and builds every MERGE, so this measures everything but the
//! warehouse.

use super::{LoadReport, Sink, SinkError, TableLoad};

#[derive(Debug, Default)]
pub struct NullSink {
    /// Statements "executed" so far.
    pub statements: u64,
}

impl Sink for NullSink {
    async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
        let statements: u64 = loads.iter().map(|l| l.plan.statements.len() as u64).sum();
        self.statements += statements;
        Ok(LoadReport {
            statements,
            ..LoadReport::default()
        })
    }
}
