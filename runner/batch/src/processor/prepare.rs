//! Preparing a batch (CPU-bound): size limits, message formats, each topic's chain of
//! validators, transformer and row transforms, target naming, truncate ordering and one
//! MERGE plan per target table; every event that will not be loaded becomes a dead
//! letter with its reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floe_cdc_core::DELETED_COLUMN;
use floe_host::types::{Batch, MergeInput, MergePlan, Op, Row, TableShape, Transformed, Verdict};

use crate::config::{DeleteMode, IdentifierCase, TruncateMode};
use crate::dlq::DeadLetter;
use crate::events::{
    ComponentCalled, ComponentFailed, Position, Stats, ToastValueUnknown, TruncateIgnored,
};
use crate::format::Formats;
use crate::message::{Message, Moved, Pick, batch_taking, give_back};
use crate::sinks::{TableLoad, Truncation};

use super::Preparer;
use super::shares::{map_parallel, restore, shares};

/// A batch after the components ran: what to load and what it amounted to.
pub(super) struct Prepared {
    pub(super) loads: Vec<TableLoad>,
    pub(super) rows: u64,
    pub(super) skipped: u64,
    pub(super) wasm: Duration,
    /// Events that will not be loaded, and why.
    pub(super) dead: Vec<DeadLetter>,
    /// The messages of the truncates in `loads`.
    pub(super) truncates: Vec<usize>,
}

/// Whether change `a` comes before change `b` of the same table, each given as (batch
/// position, LSN): by LSN when both have one (offsets do not order a keyless truncate
/// against row changes in other partitions), else by position in the batch.
fn precedes(a: (u32, i64), b: (u32, i64)) -> bool {
    if a.1 >= 0 && b.1 >= 0 {
        a.1 < b.1
    } else {
        a.0 < b.0
    }
}

/// The source commit time (Debezium `source.ts_ms`, in the transformer's
/// `__source_ts_ms` column) of the latest change among `rows` (the highest LSN, else the
/// last in the batch): what the table's freshness is measured from once it is loaded.
/// Only that one row's data is read.
fn latest_source_ms(rows: &[Row]) -> Option<i64> {
    let latest = rows.iter().reduce(|a, b| {
        if precedes((b.event, b.lsn), (a.event, a.lsn)) {
            a
        } else {
            b
        }
    })?;
    let key = format!("\"{}\":", floe_cdc_core::SOURCE_TS_MS_COLUMN);
    let at = latest.data.find(&key)? + key.len();
    // Written as a JSON string (NUMBER(38,0) keeps every digit that way), or a number.
    let value = latest.data[at..].trim_start();
    let digits = value.strip_prefix('"').unwrap_or(value);
    let end = digits
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Every event of `indexes` is dead for the same reason (a component failed).
fn all_dead(
    dead: &mut Vec<DeadLetter>,
    indexes: impl Iterator<Item = usize>,
    stage: &'static str,
    component: &str,
    reason: &str,
) {
    dead.extend(indexes.map(|index| DeadLetter {
        index,
        category: "wasm-trap",
        stage,
        component: component.to_owned(),
        reason: reason.to_owned(),
    }));
}

fn case_of(c: IdentifierCase) -> floe_host::types::IdentifierCase {
    match c {
        IdentifierCase::Upper => floe_host::types::IdentifierCase::Upper,
        IdentifierCase::Preserve => floe_host::types::IdentifierCase::Preserve,
    }
}

/// Why the target cannot hold `shape`'s columns apart under `case`, if it cannot: two
/// columns with one identifier, or one named like a column the MERGE itself uses.
fn shape_problem(shape: &TableShape, case: IdentifierCase) -> Option<String> {
    let core = crate::sinks::core_shape(shape);
    let core_case = crate::sinks::snowflake::core_case(case);
    if let Err(e) = floe_cdc_core::sql::validate_shape(&core, core_case) {
        return Some(format!("schema: {e}"));
    }
    let reserved = floe_cdc_core::sql::identifier(floe_cdc_core::UNAVAILABLE_COLUMN, core_case);
    shape
        .columns
        .iter()
        .find(|c| floe_cdc_core::sql::identifier(&c.name, core_case) == reserved)
        .map(|c| {
            format!(
                "schema: table shape '{}': column {:?} is named like floe's '{}' MERGE column",
                shape.name,
                c.name,
                floe_cdc_core::UNAVAILABLE_COLUMN
            )
        })
}

/// The bounded category of a validator's rejection: `parse` when the reason says the
/// payload could not be read, else `validation`.
fn rejection_type(reason: &str) -> &'static str {
    if reason.starts_with("parse") {
        "parse"
    } else {
        "validation"
    }
}

impl Preparer {
    /// Message `m` (index `index`) as the components get it: its Avro key and value
    /// decoded (with `avro`, from the batch's resolved schemas), its value in its
    /// topic's format. Why not, as a dead letter's reason.
    fn pick(
        &self,
        m: &Message,
        index: usize,
        avro: bool,
        formats: &Formats,
    ) -> Result<Pick, String> {
        let (key, value) = if avro {
            self.schemas.decode_message(m)?
        } else {
            (None, None)
        };
        let format = formats.of(&m.topic);
        let value = match value {
            Some(json) => format.normalize(Some(&json))?.or(Some(json)),
            None => format.normalize(m.value.as_deref())?,
        };
        Ok(Pick { index, key, value })
    }

    /// [`Preparer::prepare`] without the `on_failure` check.
    pub(super) fn prepare_batch(&mut self, messages: &mut [Message]) -> Prepared {
        let wasm_started = Instant::now();
        let mut dead: Vec<DeadLetter> = Vec::new();
        // Message index of each event of the batch.
        let mut entered: Vec<usize> = Vec::with_capacity(messages.len());
        let max_bytes = self.settings.max_message_bytes;
        for (i, m) in messages.iter().enumerate() {
            let len = m.size();
            if len > max_bytes {
                dead.push(DeadLetter {
                    index: i,
                    category: "kafka",
                    stage: "source",
                    component: "floe".into(),
                    reason: format!(
                        "message of {len} bytes exceeds source.max_message_bytes ({max_bytes})"
                    ),
                });
                continue;
            }
            entered.push(i);
        }
        // Avro keys and values as the JsonConverter's JSON, then topics with a
        // configured format: the keys and values the components get.
        let formats = &self.settings.formats;
        let avro = self.settings.schema_registry.is_some();
        let mut picks: Vec<Pick> = Vec::with_capacity(entered.len());
        for &i in &entered {
            let m = &messages[i];
            match self.pick(m, i, avro, formats) {
                Ok(pick) => picks.push(pick),
                Err(reason) => dead.push(DeadLetter {
                    index: i,
                    category: rejection_type(&reason),
                    stage: "source",
                    component: "floe".into(),
                    reason,
                }),
            }
        }
        let entered: Vec<usize> = picks.iter().map(|p| p.index).collect();
        // Per event: which of its key and value were moved from its message.
        let (mut batch, moved) = batch_taking(messages, picks);
        let empty = |wasm: Duration, dead: Vec<DeadLetter>| Prepared {
            loads: Vec::new(),
            rows: 0,
            skipped: 0,
            wasm,
            dead,
            truncates: Vec::new(),
        };
        if batch.events.is_empty() {
            return empty(wasm_started.elapsed(), dead);
        }

        // 1. validate: each event by its topic's chain, every validator of the chain in
        // order; the first rejection is the one reported. A failed call dead-letters
        // the chain's events of this batch (not the other chains'). A chain of built-ins
        // only (`Chain::fused`) is validated in step 2, by the call that transforms.
        let c = &self.components;
        let n = batch.events.len();
        let chain_of: Vec<usize> = batch
            .events
            .iter()
            .map(|e| c.chain_for(&batch.topics[e.topic as usize]))
            .collect();
        // Per event: None = accepted so far. Each share's validators run on its own
        // core (see [`super::shares`]).
        let mut refused: Vec<Option<DeadLetter>> = (0..n).map(|_| None).collect();
        let parallelism = c.parallelism;
        let parts = shares(&mut batch, &chain_of, c.chains.len(), parallelism);
        let stats = &*self.stats;
        let verdicts = map_parallel(&parts, parallelism, |share| {
            // (member position in the share, its rejection), first rejection only.
            let mut out: Vec<Option<DeadLetter>> = (0..share.members.len()).map(|_| None).collect();
            let chain = &c.chains[share.chain];
            // A fused chain validates in step 2, in the same call that transforms.
            let validators = if chain.fused.is_some() {
                &[][..]
            } else {
                &chain.validators[..]
            };
            for v in validators {
                match called(stats, v.name(), || v.validate_measured(&share.input)) {
                    Ok(verdicts) => {
                        for (k, verdict) in verdicts.into_iter().enumerate() {
                            if let (Verdict::Rejected(reason), None) = (verdict, &out[k]) {
                                out[k] = Some(DeadLetter {
                                    index: entered[share.members[k]],
                                    category: rejection_type(&reason),
                                    stage: "validate",
                                    component: v.name().to_owned(),
                                    reason,
                                });
                            }
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        ComponentFailed {
                            component: v.name(),
                            error_code: e.error_code(),
                            error: &msg,
                            events: share.members.len(),
                        }
                        .emit(stats);
                        for (k, &i) in share.members.iter().enumerate() {
                            out[k] = Some(DeadLetter {
                                index: entered[i],
                                category: "wasm-trap",
                                stage: "validate",
                                component: v.name().to_owned(),
                                reason: msg.clone(),
                            });
                        }
                        break;
                    }
                }
            }
            out
        });
        for (share, out) in parts.iter().zip(verdicts) {
            for (&i, letter) in share.members.iter().zip(out) {
                refused[i] = letter;
            }
        }
        restore(&mut batch, parts);
        let mut original: Vec<usize> = Vec::with_capacity(n);
        let mut moved_accepted: Vec<Moved> = Vec::with_capacity(n);
        let mut chain_of_accepted: Vec<usize> = Vec::with_capacity(n);
        let all = std::mem::take(&mut batch.events);
        for (i, (ev, refusal)) in all.into_iter().zip(refused).enumerate() {
            match refusal {
                None => {
                    original.push(entered[i]);
                    moved_accepted.push(moved[i]);
                    chain_of_accepted.push(chain_of[i]);
                    batch.events.push(ev);
                }
                Some(letter) => {
                    give_back(&mut messages[entered[i]], ev, moved[i]);
                    dead.push(letter);
                }
            }
        }
        if batch.events.is_empty() {
            return empty(wasm_started.elapsed(), dead);
        }

        // 2. transform: per chain, its transformer then its row transforms.
        let (out, mut produced, batch) =
            self.transform_chains(batch, &chain_of_accepted, &original, &mut dead);
        for ((&index, event), moved) in original.iter().zip(batch.events).zip(moved_accepted) {
            give_back(&mut messages[index], event, moved);
        }
        let messages: &[Message] = messages;
        let pos = |i: usize| Position {
            topic: &messages[i].topic,
            partition: messages[i].partition,
            offset: messages[i].offset,
        };
        // Every row and truncate goes to its source's target table ([`Targets`]); one
        // that maps to a target another source owns is dead-lettered instead.
        let mut target_of =
            |topic: &Arc<str>, table: &str, index: usize, dead: &mut Vec<DeadLetter>| match self
                .targets
                .resolve(topic, table)
            {
                Ok(target) => Some(target),
                Err(reason) => {
                    dead.push(DeadLetter {
                        index,
                        category: "schema",
                        stage: "merge",
                        component: "floe".into(),
                        reason,
                    });
                    None
                }
            };
        // The last TRUNCATE per target wipes the rows before it; only the rows after it
        // are loaded, and the sink empties the table of rows below its LSN first.
        // "Before" is by LSN where both sides have one: Debezium sends truncates without
        // a key, so on a topic with several partitions a truncate and the table's row
        // changes are not in offset order. Without LSNs, batch order decides.
        let mut truncated_at: HashMap<Vec<String>, (u32, i64, String)> = HashMap::new();
        // The batch messages of each target's truncates: dead-lettered with its rows
        // when its load cannot be built.
        let mut truncate_origins: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
        for t in &out.truncates {
            produced[t.event as usize] = true;
            let index = original[t.event as usize];
            match self.settings.target.truncate {
                TruncateMode::Apply => {
                    let Some(target) =
                        target_of(&messages[index].topic, &t.table, index, &mut dead)
                    else {
                        continue;
                    };
                    let at = truncated_at.entry(target.clone()).or_insert((
                        t.event,
                        t.lsn,
                        t.table.clone(),
                    ));
                    if precedes((at.0, at.1), (t.event, t.lsn)) {
                        *at = (t.event, t.lsn, t.table.clone());
                    }
                    truncate_origins.entry(target).or_default().push(index);
                }
                TruncateMode::Ignore => TruncateIgnored {
                    position: pos(index),
                    table: &t.table,
                }
                .emit(&self.stats),
            }
        }
        // One group of rows per target, in order of first appearance.
        struct Group {
            target: Vec<String>,
            shape: TableShape,
            rows: Vec<Row>,
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<Vec<String>, usize> = HashMap::new();
        for row in out.rows {
            produced[row.event as usize] = true;
            let index = original[row.event as usize];
            let shape = &out.tables[row.table as usize];
            let Some(target) = target_of(&messages[index].topic, &shape.name, index, &mut dead)
            else {
                continue;
            };
            let wiped_in_batch = truncated_at
                .get(&target)
                .is_some_and(|at| precedes((row.event, row.lsn), (at.0, at.1)));
            let wiped_earlier = row.lsn >= 0
                && self
                    .truncated_below
                    .get(&target)
                    .is_some_and(|&below| row.lsn < below);
            if wiped_in_batch || wiped_earlier {
                tracing::debug!(
                    table = %shape.name,
                    lsn = row.lsn,
                    "row change wiped by a later truncate: not loaded"
                );
                continue;
            }
            if row.op == Op::Insert
                && row.data.contains("\"__unavailable\"")
                && !row.data.contains("\"__from\"")
            {
                let columns: Vec<String> = serde_json::from_str::<serde_json::Value>(&row.data)
                    .ok()
                    .and_then(|v| {
                        v.get(floe_cdc_core::UNAVAILABLE_COLUMN)
                            .and_then(|u| u.as_object())
                            .map(|u| u.keys().cloned().collect())
                    })
                    .unwrap_or_default();
                ToastValueUnknown {
                    position: pos(index),
                    table: &shape.name,
                    key: &row.key,
                    columns: &columns,
                }
                .emit(&self.stats);
            }
            let counter = match row.op {
                Op::Insert => &self.stats.ops_insert,
                Op::Update => &self.stats.ops_update,
                Op::Delete => &self.stats.ops_delete,
                Op::Read => &self.stats.ops_read,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.stats
                .rows_transformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let g = match group_of.get(&target) {
                Some(&g) => {
                    // A shared target fed by another source table: the union of columns.
                    let known = &mut groups[g].shape;
                    if known.name != shape.name {
                        for c in &shape.columns {
                            if !known.columns.iter().any(|k| k.name == c.name) {
                                known.columns.push(c.clone());
                            }
                        }
                    }
                    g
                }
                None => {
                    group_of.insert(target.clone(), groups.len());
                    groups.push(Group {
                        target,
                        shape: shape.clone(),
                        rows: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[g].rows.push(row);
        }
        let skipped = produced.iter().filter(|p| !**p).count() as u64;

        // 3. one MERGE plan per target table
        let mut truncate: std::collections::BTreeMap<Vec<String>, (Truncation, String)> =
            truncated_at
                .into_iter()
                .map(|(target, (_, lsn, table))| {
                    let below_lsn = (lsn >= 0).then_some(lsn);
                    (target, (Truncation::new(below_lsn), table))
                })
                .collect();
        let mut loads = Vec::new();
        let mut rows = 0;
        for Group {
            target,
            mut shape,
            rows: rows_of_table,
        } in groups
        {
            let truncate_first = truncate.remove(&target).map(|(t, _)| t);
            let soft = self.settings.target.deletes_of(&shape.name) == DeleteMode::Soft;
            // Under soft deletes `__deleted` is floe's flag: a source column of that
            // name would be overwritten by it.
            let flag_taken = soft.then(|| {
                let case = crate::sinks::snowflake::core_case(self.settings.target.identifier_case);
                let flag = floe_cdc_core::sql::identifier(DELETED_COLUMN, case);
                shape
                    .columns
                    .iter()
                    .find(|c| floe_cdc_core::sql::identifier(&c.name, case) == flag)
                    .map(|c| {
                        format!(
                            "schema: table shape '{}': source column {:?} is floe's soft-delete flag column (sink.snowflake.deletes = \"soft\"); use hard deletes for this table or rename the column",
                            shape.name, c.name
                        )
                    })
            });
            let deletes = match self.settings.target.deletes_of(&shape.name) {
                DeleteMode::Hard => floe_host::types::DeleteMode::Hard,
                DeleteMode::Soft => {
                    if !shape.columns.iter().any(|c| c.name == DELETED_COLUMN) {
                        shape.columns.push(floe_host::types::Column {
                            name: DELETED_COLUMN.to_owned(),
                            data_type: "BOOLEAN".to_owned(),
                            is_key: false,
                        });
                    }
                    floe_host::types::DeleteMode::Soft
                }
            };
            // Columns the target cannot hold apart (`a` and `A` under upper case, or a
            // source column named like a metadata column) are a problem of the data,
            // not of the merge builder: the table's events go to the DLQ as `schema`.
            if let Some(reason) = flag_taken
                .flatten()
                .or_else(|| shape_problem(&shape, self.settings.target.identifier_case))
            {
                let truncates = match truncate_first {
                    Some(_) => truncate_origins.remove(&target).unwrap_or_default(),
                    None => Vec::new(),
                };
                dead.extend(
                    rows_of_table
                        .iter()
                        .map(|r| original[r.event as usize])
                        .chain(truncates)
                        .map(|index| DeadLetter {
                            index,
                            category: "schema",
                            stage: "merge",
                            component: "floe".into(),
                            reason: reason.clone(),
                        }),
                );
                continue;
            }
            let input = MergeInput {
                target: target.clone(),
                identifier_case: case_of(self.settings.target.identifier_case),
                shape,
                rows: rows_of_table,
                deletes,
            };
            match called(&self.stats, c.merge_builder.name(), || {
                c.merge_builder.build_measured(&input)
            }) {
                Ok(plan) => {
                    rows += u64::from(plan.rows_after_dedup);
                    let origins = input
                        .rows
                        .iter()
                        .map(|r| original[r.event as usize])
                        .collect();
                    let requests = plan.statements.iter().map(|_| Arc::default()).collect();
                    loads.push(TableLoad {
                        latest_source_ms: latest_source_ms(&input.rows),
                        source_table: input.shape.name.clone(),
                        target,
                        shape: input.shape,
                        truncate: truncate_first,
                        plan,
                        origins,
                        requests,
                    });
                }
                Err(e) => {
                    let msg = e.to_string();
                    ComponentFailed {
                        component: c.merge_builder.name(),
                        error_code: e.error_code(),
                        error: &msg,
                        events: input.rows.len(),
                    }
                    .emit(&self.stats);
                    // The table's truncate is not applied either: it goes with its rows.
                    let truncates = match truncate_first {
                        Some(_) => truncate_origins.remove(&target).unwrap_or_default(),
                        None => Vec::new(),
                    };
                    all_dead(
                        &mut dead,
                        input
                            .rows
                            .iter()
                            .map(|r| original[r.event as usize])
                            .chain(truncates),
                        "merge",
                        c.merge_builder.name(),
                        &msg,
                    );
                }
            }
        }
        // Targets truncated in this batch with no row left to load.
        for (target, (truncation, table)) in truncate {
            loads.push(TableLoad {
                target,
                shape: TableShape {
                    name: table.clone(),
                    columns: Vec::new(),
                },
                source_table: table,
                truncate: Some(truncation),
                plan: MergePlan {
                    statements: Vec::new(),
                    rows_after_dedup: 0,
                },
                origins: Vec::new(),
                requests: Vec::new(),
                latest_source_ms: None,
            });
        }
        // A truncate applied in this batch also wipes rows below its LSN that arrive in
        // later batches of this run (from other partitions).
        for load in &loads {
            if let Some(lsn) = load.truncate.as_ref().and_then(|t| t.below_lsn) {
                let below = self
                    .truncated_below
                    .entry(load.target.clone())
                    .or_insert(lsn);
                *below = (*below).max(lsn);
            }
        }
        Prepared {
            loads,
            rows,
            skipped,
            wasm: wasm_started.elapsed(),
            dead,
            truncates: truncate_origins.into_values().flatten().collect(),
        }
    }

    /// Step 2 of [`Preparer::prepare`]: each share of `batch` (a chain's events of
    /// some topics, [`super::shares`]) through the chain's transformer and then its row
    /// transforms, shares in parallel, the answers merged into one in batch order
    /// (event indexes into `batch`). A fused chain's share is validated and transformed
    /// in one call. Rows that failed, events a fused call rejected, and every event of a
    /// share whose component call failed, are dead-lettered here; the returned flags
    /// mark those events as handled. `batch` is handed back, its events in order.
    fn transform_chains(
        &self,
        mut batch: Batch,
        chain_of: &[usize],
        original: &[usize],
        dead: &mut Vec<DeadLetter>,
    ) -> (Transformed, Vec<bool>, Batch) {
        let n = batch.events.len();
        let mut handled = vec![false; n];
        let mut out = Transformed {
            tables: Vec::new(),
            rows: Vec::new(),
            truncates: Vec::new(),
            failures: Vec::new(),
        };
        let chains = &self.components.chains;
        let parallelism = self.components.parallelism;
        let parts = shares(&mut batch, chain_of, chains.len(), parallelism);
        let stats = &*self.stats;
        // Each share through its chain's transformer, then its row transforms, on its
        // own core: the answer and which component failed each of its failures, or the
        // failed call and its component.
        // A fused chain's share is validated here too: its rejections (position in the
        // share, reason) come back beside the answer.
        let answers = map_parallel(&parts, parallelism, |share| {
            let chain = &chains[share.chain];
            let mut rejected: Vec<(usize, String)> = Vec::new();
            let mut answer = match &chain.fused {
                Some(fused) => {
                    let (verdicts, answer) = called(stats, fused.name(), || {
                        fused.validate_and_transform_measured(&share.input)
                    })
                    .map_err(|e| (e, fused.name()))?;
                    for (k, verdict) in verdicts.into_iter().enumerate() {
                        if let Verdict::Rejected(reason) = verdict {
                            rejected.push((k, reason));
                        }
                    }
                    answer
                }
                None => called(stats, chain.transformer.name(), || {
                    chain.transformer.transform_measured(&share.input)
                })
                .map_err(|e| (e, chain.transformer.name()))?,
            };
            let mut failed_by: Vec<&str> = vec![chain.transformer.name(); answer.failures.len()];
            for t in &chain.transforms {
                let next = called(stats, t.name(), || t.transform_rows_measured(&answer))
                    .map_err(|e| (e, t.name()))?;
                failed_by.resize(next.failures.len(), t.name());
                answer = next;
            }
            Ok((answer, failed_by, rejected))
        });
        for (share, answer) in parts.iter().zip(answers) {
            let members = &share.members;
            let (answer, failed_by, rejected) = match answer {
                Ok(a) => a,
                Err((e, component)) => {
                    // A failed call dead-letters every event of the share.
                    let msg = e.to_string();
                    ComponentFailed {
                        component,
                        error_code: e.error_code(),
                        error: &msg,
                        events: members.len(),
                    }
                    .emit(&self.stats);
                    all_dead(
                        dead,
                        members.iter().map(|&i| original[i]),
                        "transform",
                        component,
                        &msg,
                    );
                    members.iter().for_each(|&i| handled[i] = true);
                    continue;
                }
            };
            if !rejected.is_empty() {
                // Reported as the built-in validator would have: the fused call is its
                // rules.
                let validator = chains[share.chain].validators[0].name();
                for (k, reason) in rejected {
                    let i = members[k];
                    handled[i] = true;
                    dead.push(DeadLetter {
                        index: original[i],
                        category: rejection_type(&reason),
                        stage: "validate",
                        component: validator.to_owned(),
                        reason,
                    });
                }
            }
            for (f, component) in answer.failures.iter().zip(failed_by) {
                let i = members[f.event as usize];
                handled[i] = true;
                dead.push(DeadLetter {
                    index: original[i],
                    category: "transform",
                    stage: "transform",
                    component: component.to_owned(),
                    reason: f.reason.clone(),
                });
            }
            // Tables by name across chains: a table fed by two chains gets the union
            // of their columns.
            let mut table_at = Vec::with_capacity(answer.tables.len());
            for shape in answer.tables {
                match out.tables.iter().position(|t| t.name == shape.name) {
                    Some(at) => {
                        let known = &mut out.tables[at].columns;
                        for c in shape.columns {
                            if !known.iter().any(|k| k.name == c.name) {
                                known.push(c);
                            }
                        }
                        table_at.push(at as u32);
                    }
                    None => {
                        table_at.push(out.tables.len() as u32);
                        out.tables.push(shape);
                    }
                }
            }
            for mut row in answer.rows {
                row.event = members[row.event as usize] as u32;
                row.table = table_at[row.table as usize];
                out.rows.push(row);
            }
            for mut t in answer.truncates {
                t.event = members[t.event as usize] as u32;
                out.truncates.push(t);
            }
        }
        // Batch order across chains (each chain's answer is in its own order).
        out.rows.sort_by_key(|r| r.event);
        out.truncates.sort_by_key(|t| t.event);
        restore(&mut batch, parts);
        (out, handled, batch)
    }
}

/// One component call (`f`), called again once if its error says a retry may help
/// (e.g. a deadline hit on a loaded machine); each call runs in a fresh instance and
/// what it used is recorded ([`ComponentCalled`]).
fn called<T>(
    stats: &Stats,
    component: &str,
    mut f: impl FnMut() -> (Result<T, floe_host::HostError>, floe_host::Usage),
) -> Result<T, floe_host::HostError> {
    let mut once = || {
        let (result, usage) = f();
        ComponentCalled {
            component,
            usage: &usage,
        }
        .emit(stats);
        result
    };
    match once() {
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, "component call failed; retrying once in a fresh instance");
            once()
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(event: u32, lsn: i64, data: &str) -> Row {
        Row {
            event,
            table: 0,
            op: Op::Update,
            key: "[1]".into(),
            data: data.into(),
            lsn,
        }
    }

    #[test]
    fn freshness_is_measured_from_the_latest_change_by_lsn() {
        let rows = [
            row(
                0,
                20,
                r#"{"id":1,"__lsn":"20","__source_ts_ms":"1700000000200"}"#,
            ),
            // Later in the batch (another partition) but an earlier change. The
            // transformer writes both as JSON strings; a number is read too.
            row(
                1,
                10,
                r#"{"id":1,"__lsn":10,"__source_ts_ms":1700000000100}"#,
            ),
        ];
        assert_eq!(latest_source_ms(&rows), Some(1_700_000_000_200));
        // Without LSNs, the batch order decides.
        let rows = [
            row(0, -1, r#"{"__source_ts_ms": 5,"id":1}"#),
            row(1, -1, r#"{"id":2,"__source_ts_ms":7}"#),
        ];
        assert_eq!(latest_source_ms(&rows), Some(7));
        // A change without a commit time, and no rows at all, measure nothing.
        assert_eq!(
            latest_source_ms(&[row(0, 1, r#"{"__source_ts_ms":null}"#)]),
            None
        );
        assert_eq!(latest_source_ms(&[row(0, 1, r#"{"id":1}"#)]), None);
        assert_eq!(latest_source_ms(&[]), None);
    }
}
