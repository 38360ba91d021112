//! `floe plan`: a sink that renders each load (target, truncation, MERGE SQL and its
//! binds) as text instead of sending it anywhere. The pipeline runs for real (validate,
//! transform, dedup, build), so the output is exactly what `floe run` would execute.

use std::fmt::Write as _;

use super::{LoadReport, Sink, SinkError, TableLoad};

#[derive(Debug, Default)]
pub struct PlanSink {
    /// The rendered plan so far.
    pub text: String,
    /// Print bind values (else only their type and size).
    pub show_binds: bool,
    batches: u64,
}

impl PlanSink {
    pub fn new(show_binds: bool) -> PlanSink {
        PlanSink {
            show_binds,
            ..PlanSink::default()
        }
    }
}

impl Sink for PlanSink {
    async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
        self.batches += 1;
        let mut statements = 0;
        for load in loads {
            let out = &mut self.text;
            let _ = writeln!(
                out,
                "-- batch {} · {} -> {} · {} row(s) after dedup from {} event(s)",
                self.batches,
                load.source_table,
                load.target.join("."),
                load.plan.rows_after_dedup,
                load.origins.len()
            );
            if let Some(t) = &load.truncate {
                let _ = match t.below_lsn {
                    Some(lsn) => writeln!(
                        out,
                        "-- truncate first: rows loaded from changes below LSN {lsn} are deleted"
                    ),
                    None => writeln!(out, "-- truncate first: the table is emptied"),
                };
            }
            for st in &load.plan.statements {
                statements += 1;
                let _ = writeln!(out, "{};", st.sql.trim_end().trim_end_matches(';'));
                for (i, b) in st.binds.iter().enumerate() {
                    let _ = match (&b.value, self.show_binds) {
                        (None, _) => writeln!(out, "-- bind {} ({}): NULL", i + 1, b.data_type),
                        (Some(v), true) => {
                            writeln!(out, "-- bind {} ({}): {v}", i + 1, b.data_type)
                        }
                        (Some(v), false) => writeln!(
                            out,
                            "-- bind {} ({}): {} bytes",
                            i + 1,
                            b.data_type,
                            v.len()
                        ),
                    };
                }
            }
            out.push('\n');
        }
        Ok(LoadReport {
            statements,
            ..LoadReport::default()
        })
    }
}
