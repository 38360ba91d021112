use wasmtime::Store;

use crate::engine::{Host, Limits, StoreState};
use crate::error::{HostError, classify_trap};
use crate::gen_;
use crate::types::{Batch, Error as GuestError, MergeInput, MergePlan, Transformed, Verdict};

fn load_err(name: &str, e: wasmtime::Error) -> HostError {
    HostError::Load {
        component: name.to_string(),
        message: format!("{e:#}"),
    }
}

/// Longest reason or message taken from a guest, in bytes: they end up in logs and
/// dead-letter headers, so a component cannot make them arbitrarily large.
pub const MAX_REASON_BYTES: usize = 4096;

/// `text`, cut at [`MAX_REASON_BYTES`] (on a character boundary) with a note of how
/// much was dropped.
pub fn bounded(mut text: String) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let total = text.len();
    let mut cut = MAX_REASON_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("... ({} more bytes cut)", total - cut));
    text
}

fn guest_err(name: &str, e: GuestError) -> HostError {
    let message = bounded(match e {
        GuestError::InvalidInput(m) => format!("invalid input: {m}"),
        GuestError::Internal(m) => m,
    });
    HostError::Guest {
        component: name.to_string(),
        message,
    }
}

fn contract(name: &str, message: String) -> HostError {
    HostError::Contract {
        component: name.to_string(),
        message,
    }
}

/// What one call used of its sandbox limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The world called (`validate`, `transform`, `validate-and-transform`,
    /// `transform-rows`, `build-merge`), as trace spans and metrics name it.
    pub kind: &'static str,
    /// Wall time of the call (instantiation included).
    pub elapsed: std::time::Duration,
    /// Largest linear memory the component reached or asked for, in bytes.
    pub memory_peak_bytes: usize,
    /// Fuel (roughly: WebAssembly instructions) consumed, when fuel metering is on.
    pub fuel_used: Option<u64>,
}

/// What the three component kinds share: the compiled, linked component and how to
/// call it in a fresh store.
struct Loaded<P> {
    host: Host,
    /// The world, as trace spans name it (`validate`, `transform`, ...).
    kind: &'static str,
    name: String,
    limits: Limits,
    pre: P,
}

impl<P> Loaded<P> {
    /// Compiles the component, checks its imports against the granted capabilities,
    /// links it once (with nothing, or with WASI when granted), then checks it exports
    /// the world (`typed`).
    fn new(
        host: &Host,
        kind: &'static str,
        name: &str,
        wasm: &[u8],
        limits: Limits,
        typed: impl FnOnce(wasmtime::component::InstancePre<StoreState>) -> wasmtime::Result<P>,
    ) -> Result<Self, HostError> {
        let component = host.compile(name, wasm)?;
        limits.wasi.check_imports(name, &host.engine, &component)?;
        let pre = host
            .linker(name, &limits.wasi)?
            .instantiate_pre(&component)
            .and_then(typed)
            .map_err(|e| load_err(name, e))?;
        Ok(Loaded {
            host: host.clone(),
            kind,
            name: name.to_string(),
            limits,
            pre,
        })
    }

    /// Runs one guest call of a batch of `events` events in a fresh store, maps every
    /// failure to a [`HostError`] and reports what the call used. Traced as one span
    /// (child of the caller's current span).
    fn call_measured<R>(
        &self,
        events: usize,
        call: impl FnOnce(&P, &mut Store<StoreState>) -> wasmtime::Result<Result<R, GuestError>>,
    ) -> (Result<R, HostError>, Usage) {
        let span = tracing::info_span!(
            target: crate::TRACE_TARGET,
            "component",
            otel.name = %format_args!("{} {}", self.kind, self.name),
            floe.component.kind = self.kind,
            floe.component.name = %self.name,
            floe.events = crate::span_int(events),
            floe.component.fuel = tracing::field::Empty,
            floe.component.memory_peak_bytes = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let _entered = span.enter();
        let (result, usage) = self.call_in_store(call);
        if !span.is_disabled() {
            span.record(
                "floe.component.memory_peak_bytes",
                crate::span_int(usage.memory_peak_bytes),
            );
            if let Some(fuel) = usage.fuel_used {
                span.record("floe.component.fuel", crate::span_int(fuel));
            }
            if let Err(e) = &result {
                crate::span_failed(&span, e.error_code(), e);
            }
        }
        (result, usage)
    }

    fn call_in_store<R>(
        &self,
        call: impl FnOnce(&P, &mut Store<StoreState>) -> wasmtime::Result<Result<R, GuestError>>,
    ) -> (Result<R, HostError>, Usage) {
        let started = std::time::Instant::now();
        let mut store = match self.host.store(&self.name, &self.limits) {
            Ok(store) => store,
            Err(e) => {
                let usage = Usage {
                    kind: self.kind,
                    ..Usage::default()
                };
                return (Err(e), usage);
            }
        };
        let fuel_before = store.get_fuel().ok();
        let outcome = call(&self.pre, &mut store);
        if let Some(wasi) = &store.data().wasi {
            wasi.log_output(&self.name);
        }
        let usage = Usage {
            kind: self.kind,
            elapsed: started.elapsed(),
            memory_peak_bytes: store.data().memory_peak,
            fuel_used: fuel_before
                .zip(store.get_fuel().ok())
                .map(|(before, after)| before.saturating_sub(after)),
        };
        let result = match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(guest_err(&self.name, e)),
            Err(e) => {
                let exceeded = store.data().memory_exceeded;
                Err(classify_trap(&self.name, e, exceeded))
            }
        };
        (result, usage)
    }
}

/// A loaded validator component (world `validator`).
pub struct Validator(Loaded<gen_::validator::ValidatorPre<StoreState>>);

impl Validator {
    /// Compiles and links the component once; each [`Validator::validate`] instantiates
    /// it afresh.
    pub fn new(host: &Host, name: &str, wasm: &[u8], limits: Limits) -> Result<Self, HostError> {
        Loaded::new(
            host,
            "validate",
            name,
            wasm,
            limits,
            gen_::validator::ValidatorPre::new,
        )
        .map(Validator)
    }

    /// The component's name, as given when loading.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// One verdict per event of the batch, in order.
    pub fn validate(&self, batch: &Batch) -> Result<Vec<Verdict>, HostError> {
        self.validate_measured(batch).0
    }

    /// [`Validator::validate`], also reporting what the call used of its limits.
    pub fn validate_measured(&self, batch: &Batch) -> (Result<Vec<Verdict>, HostError>, Usage) {
        let (result, usage) = self.0.call_measured(batch.events.len(), |pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_validate(&mut *store, batch)
        });
        (
            result.and_then(|v| checked_verdicts(&self.0.name, batch, v)),
            usage,
        )
    }
}

/// The contract checks of a validator's answer: one verdict per event; reasons bounded.
fn checked_verdicts(
    name: &str,
    batch: &Batch,
    mut verdicts: Vec<Verdict>,
) -> Result<Vec<Verdict>, HostError> {
    if verdicts.len() != batch.events.len() {
        return Err(contract(
            name,
            format!(
                "{} verdicts for {} events",
                verdicts.len(),
                batch.events.len()
            ),
        ));
    }
    for v in &mut verdicts {
        if let Verdict::Rejected(reason) = v {
            *reason = bounded(std::mem::take(reason));
        }
    }
    Ok(verdicts)
}

/// A loaded transformer component (world `transformer`).
pub struct Transformer(Loaded<gen_::transformer::TransformerPre<StoreState>>);

impl Transformer {
    pub fn new(host: &Host, name: &str, wasm: &[u8], limits: Limits) -> Result<Self, HostError> {
        Loaded::new(
            host,
            "transform",
            name,
            wasm,
            limits,
            gen_::transformer::TransformerPre::new,
        )
        .map(Transformer)
    }

    /// The component's name, as given when loading.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The same component's `validate-and-transform` (world `validating-transformer`),
    /// when it exports one, as floe's built-in transformer does; linked from the
    /// compiled component, not compiled again.
    pub fn validating(&self) -> Option<ValidatingTransformer> {
        let instance_pre = self.0.pre.instance_pre().clone();
        let pre = gen_::validating_transformer::ValidatingTransformerPre::new(instance_pre).ok()?;
        Some(ValidatingTransformer(Loaded {
            host: self.0.host.clone(),
            kind: "validate-and-transform",
            name: self.0.name.clone(),
            limits: self.0.limits.clone(),
            pre,
        }))
    }

    /// Rows, truncates and per-event failures for the batch; every index in the answer
    /// is checked against the batch.
    pub fn transform(&self, batch: &Batch) -> Result<Transformed, HostError> {
        self.transform_measured(batch).0
    }

    /// [`Transformer::transform`], also reporting what the call used of its limits.
    pub fn transform_measured(&self, batch: &Batch) -> (Result<Transformed, HostError>, Usage) {
        let (result, usage) = self.0.call_measured(batch.events.len(), |pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_transform(&mut *store, batch)
        });
        (
            result.and_then(|out| checked_transformed(&self.0.name, batch.events.len(), None, out)),
            usage,
        )
    }
}

/// The contract checks of a transformer's answer for a batch of `events` events:
/// every index in range, none naming an event `verdicts` rejected; reasons bounded.
fn checked_transformed(
    name: &str,
    events: usize,
    verdicts: Option<&[Verdict]>,
    mut out: Transformed,
) -> Result<Transformed, HostError> {
    let tables = out.tables.len();
    let bad_row = out
        .rows
        .iter()
        .find(|r| r.event as usize >= events || r.table as usize >= tables);
    if let Some(r) = bad_row {
        return Err(contract(
            name,
            format!(
                "row refers to event {} / table {} but the batch has {events} events and the answer {tables} tables",
                r.event, r.table
            ),
        ));
    }
    let mut indexes = (out.rows.iter().map(|r| r.event))
        .chain(out.failures.iter().map(|f| f.event))
        .chain(out.truncates.iter().map(|t| t.event));
    if let Some(e) = indexes.clone().find(|&e| e as usize >= events) {
        return Err(contract(
            name,
            format!("answer refers to event {e} but the batch has {events} events"),
        ));
    }
    if let Some(verdicts) = verdicts
        && let Some(e) = indexes.find(|&e| !matches!(verdicts[e as usize], Verdict::Ok))
    {
        return Err(contract(
            name,
            format!("answer refers to event {e}, which its verdict rejected"),
        ));
    }
    for f in &mut out.failures {
        f.reason = bounded(std::mem::take(&mut f.reason));
    }
    Ok(out)
}

/// The built-in validator and transformer in one component (world
/// `validating-transformer`): each event's envelope is parsed once. Made from a loaded
/// [`Transformer`] by [`Transformer::validating`].
pub struct ValidatingTransformer(
    Loaded<gen_::validating_transformer::ValidatingTransformerPre<StoreState>>,
);

impl ValidatingTransformer {
    /// The component's name, as given when loading.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// One verdict per event and the rows, truncates and failures of the accepted
    /// events (indexes into `batch`), checked as [`Validator::validate`] and
    /// [`Transformer::transform`] check theirs; no index names a rejected event.
    pub fn validate_and_transform(
        &self,
        batch: &Batch,
    ) -> Result<(Vec<Verdict>, Transformed), HostError> {
        self.validate_and_transform_measured(batch).0
    }

    /// [`ValidatingTransformer::validate_and_transform`], also reporting what the call
    /// used of its limits.
    #[allow(clippy::type_complexity)]
    pub fn validate_and_transform_measured(
        &self,
        batch: &Batch,
    ) -> (Result<(Vec<Verdict>, Transformed), HostError>, Usage) {
        let (result, usage) = self.0.call_measured(batch.events.len(), |pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_validate_and_transform(&mut *store, batch)
        });
        let checked = result.and_then(|(verdicts, out)| {
            let verdicts = checked_verdicts(&self.0.name, batch, verdicts)?;
            let out = checked_transformed(&self.0.name, batch.events.len(), Some(&verdicts), out)?;
            Ok((verdicts, out))
        });
        (checked, usage)
    }
}

/// A loaded row transform component (world `row-transform`).
pub struct RowTransform(Loaded<gen_::row_transform::RowTransformPre<StoreState>>);

impl RowTransform {
    pub fn new(host: &Host, name: &str, wasm: &[u8], limits: Limits) -> Result<Self, HostError> {
        Loaded::new(
            host,
            "transform-rows",
            name,
            wasm,
            limits,
            gen_::row_transform::RowTransformPre::new,
        )
        .map(RowTransform)
    }

    /// The component's name, as given when loading.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The transform's answer for `input`, checked against the contract of world
    /// `row-transform`: its rows are a subsequence of the input's rows with the same
    /// event, key, op and lsn; tables keep their key columns; failures name events of
    /// input rows. The input's truncates and failures are kept; the answer's failures
    /// are added (one per event, the input's first).
    pub fn transform_rows(&self, input: &Transformed) -> Result<Transformed, HostError> {
        self.transform_rows_measured(input).0
    }

    /// [`RowTransform::transform_rows`], also reporting what the call used of its limits.
    pub fn transform_rows_measured(
        &self,
        input: &Transformed,
    ) -> (Result<Transformed, HostError>, Usage) {
        let (result, usage) = self.0.call_measured(input.rows.len(), |pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_transform_rows(&mut *store, input)
        });
        (
            result.and_then(|out| checked_row_transform(&self.0.name, input, out)),
            usage,
        )
    }
}

/// The contract checks of a row transform's answer (see [`RowTransform::transform_rows`]).
fn checked_row_transform(
    name: &str,
    input: &Transformed,
    out: Transformed,
) -> Result<Transformed, HostError> {
    {
        let keys = |columns: &[crate::types::Column]| -> Vec<String> {
            columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| c.name.clone())
                .collect()
        };
        for table in &out.tables {
            if let Some(before) = input.tables.iter().find(|t| t.name == table.name)
                && keys(&before.columns) != keys(&table.columns)
            {
                return Err(contract(
                    name,
                    format!(
                        "table {} has key columns {:?}, the input had {:?}",
                        table.name,
                        keys(&table.columns),
                        keys(&before.columns)
                    ),
                ));
            }
        }
        let mut next = 0;
        for row in &out.rows {
            if row.table as usize >= out.tables.len() {
                return Err(contract(
                    name,
                    format!(
                        "row of event {} refers to table {} but the answer has {} tables",
                        row.event,
                        row.table,
                        out.tables.len()
                    ),
                ));
            }
            let same = |r: &crate::types::Row| {
                r.event == row.event && r.key == row.key && r.op == row.op && r.lsn == row.lsn
            };
            match input.rows[next..].iter().position(same) {
                Some(at) => next += at + 1,
                None => {
                    return Err(contract(
                        name,
                        format!(
                            "row of event {} (key {}) is not an input row, or out of order, or repeated, or its key, op or lsn changed",
                            row.event, row.key
                        ),
                    ));
                }
            }
        }
        let mut failures = input.failures.clone();
        for f in out.failures {
            if !input.rows.iter().any(|r| r.event == f.event) {
                return Err(contract(
                    name,
                    format!("failure names event {}, which had no input row", f.event),
                ));
            }
            if failures.iter().any(|g| g.event == f.event) {
                continue;
            }
            failures.push(crate::types::Failure {
                event: f.event,
                reason: bounded(f.reason),
            });
        }
        // A row that also failed is not loaded: the failure wins.
        let failed: std::collections::HashSet<u32> = failures.iter().map(|f| f.event).collect();
        let rows = out
            .rows
            .into_iter()
            .filter(|r| !failed.contains(&r.event))
            .collect();
        Ok(Transformed {
            tables: out.tables,
            rows,
            truncates: input.truncates.clone(),
            failures,
        })
    }
}

/// A loaded MERGE builder component (world `merge-builder`).
pub struct MergeBuilder(Loaded<gen_::merge_builder::MergeBuilderPre<StoreState>>);

impl MergeBuilder {
    pub fn new(host: &Host, name: &str, wasm: &[u8], limits: Limits) -> Result<Self, HostError> {
        Loaded::new(
            host,
            "build-merge",
            name,
            wasm,
            limits,
            gen_::merge_builder::MergeBuilderPre::new,
        )
        .map(MergeBuilder)
    }

    /// The component's name, as given when loading.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The statements that apply one table's rows.
    pub fn build(&self, input: &MergeInput) -> Result<MergePlan, HostError> {
        self.build_measured(input).0
    }

    /// [`MergeBuilder::build`], also reporting what the call used of its limits.
    pub fn build_measured(&self, input: &MergeInput) -> (Result<MergePlan, HostError>, Usage) {
        let (result, usage) = self.0.call_measured(input.rows.len(), |pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_build_merge(&mut *store, input)
        });
        let checked = result.and_then(|plan| {
            if !input.rows.is_empty() && plan.statements.is_empty() {
                return Err(contract(
                    &self.0.name,
                    format!("no statement for {} rows", input.rows.len()),
                ));
            }
            Ok(plan)
        });
        (checked, usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Column, Failure, Op, Row, TableShape, Truncate};

    fn input() -> Transformed {
        let row = |event: u32, key: &str, lsn: i64| Row {
            event,
            table: 0,
            op: Op::Insert,
            key: key.into(),
            data: format!(r#"{{"id":{key}}}"#),
            lsn,
        };
        Transformed {
            tables: vec![TableShape {
                name: "public.t".into(),
                columns: vec![
                    Column {
                        name: "id".into(),
                        data_type: "NUMBER(38,0)".into(),
                        is_key: true,
                    },
                    Column {
                        name: "email".into(),
                        data_type: "VARCHAR".into(),
                        is_key: false,
                    },
                ],
            }],
            rows: vec![row(0, "[1]", 10), row(1, "[2]", 11), row(3, "[3]", 12)],
            truncates: vec![Truncate {
                event: 4,
                table: "public.u".into(),
                lsn: 9,
            }],
            failures: vec![Failure {
                event: 2,
                reason: "not a change".into(),
            }],
        }
    }

    fn violation(out: Transformed) -> String {
        match checked_row_transform("t.wasm", &input(), out) {
            Err(HostError::Contract { message, .. }) => message,
            other => panic!("expected a contract violation, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_answer_keeps_the_inputs_truncates_and_failures() {
        let mut out = input();
        out.truncates.clear();
        out.failures = vec![Failure {
            event: 1,
            reason: "masked badly".into(),
        }];
        out.rows.remove(0);
        out.rows[0].data = r#"{"id":2,"email":"x"}"#.into();
        out.tables[0].columns.push(Column {
            name: "domain".into(),
            data_type: "VARCHAR".into(),
            is_key: false,
        });
        let checked = checked_row_transform("t.wasm", &input(), out).unwrap();
        let truncated: Vec<(u32, &str)> = checked
            .truncates
            .iter()
            .map(|t| (t.event, t.table.as_str()))
            .collect();
        assert_eq!(truncated, vec![(4, "public.u")], "the input's truncates");
        let failed: Vec<u32> = checked.failures.iter().map(|f| f.event).collect();
        assert_eq!(failed, vec![2, 1], "the input's failure, then the answer's");
        let rows: Vec<u32> = checked.rows.iter().map(|r| r.event).collect();
        assert_eq!(rows, vec![3], "row 0 skipped, row 1 failed");
        assert_eq!(checked.tables[0].columns.len(), 3);
    }

    #[test]
    fn every_broken_rule_is_a_contract_violation() {
        let mut out = input();
        out.rows[1].key = "[22]".into();
        assert!(violation(out).contains("not an input row"));

        let mut out = input();
        out.rows[0].lsn = 99;
        assert!(violation(out).contains("not an input row"));

        let mut out = input();
        out.rows[0].op = Op::Delete;
        assert!(violation(out).contains("not an input row"));

        let mut out = input();
        out.rows.swap(0, 1);
        assert!(violation(out).contains("out of order"));

        let mut out = input();
        let again = out.rows[0].clone();
        out.rows.insert(1, again);
        assert!(violation(out).contains("repeated"));

        let mut out = input();
        out.rows[0].table = 5;
        assert!(violation(out).contains("refers to table 5"));

        let mut out = input();
        out.tables[0].columns[0].is_key = false;
        assert!(violation(out).contains("key columns"));

        let mut out = input();
        out.failures = vec![Failure {
            event: 4,
            reason: "no row".into(),
        }];
        assert!(violation(out).contains("event 4"));
    }

    #[test]
    fn a_huge_failure_reason_is_bounded() {
        let mut out = input();
        out.failures = vec![Failure {
            event: 0,
            reason: "x".repeat(1 << 20),
        }];
        let checked = checked_row_transform("t.wasm", &input(), out).unwrap();
        assert!(checked.failures[1].reason.len() < MAX_REASON_BYTES + 100);
    }
}
