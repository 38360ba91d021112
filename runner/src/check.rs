//! `floe check COMPONENT.wasm --events FILE.jsonl`: loads a validator or row transform
//! component with the configured sandbox limits, runs it over sample events
//! (fixture-format JSON lines) in batches, and reports every verdict (for a row
//! transform: the row as it would load, or why it would not), the time taken and how
//! much of its limits each call used. Contract violations, traps and guest errors are
//! reported per batch and make the check fail.

use std::path::{Path, PathBuf};
use std::time::Instant;

use floe_host::types::{Transformed, Verdict};
use floe_host::{HostError, RowTransform, Transformer, Usage, Validator};
use serde::Serialize;

use crate::config::{ComponentsConfig, SchemaRegistryConfig};
use crate::sources::file::read_file;
use crate::sources::{SourceError, batch_of};
use floe_batch::avro::{RegistryError, Resolved, SchemaRegistry, decode_message, schema_ids};

/// Why a check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}: cannot read the component: {1}")]
    Read(PathBuf, std::io::Error),
    #[error(transparent)]
    Load(HostError),
    #[error(transparent)]
    Events(#[from] SourceError),
    #[error(transparent)]
    Schemas(#[from] RegistryError),
}

/// One event's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Validator: `ok`, `rejected` or `failed` (its batch's call failed). Row
    /// transform: `loaded`, `skipped` (by the transform, or no row change at all),
    /// `rejected` (a failed row) or `failed`. Either: `unreadable` (an Avro key or
    /// value that could not be decoded; no component saw it).
    pub verdict: &'static str,
    pub reason: Option<String>,
    /// Row transform: the row's data as it would load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
}

/// One call of the component (one batch).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Call {
    pub events: usize,
    pub elapsed_ms: f64,
    pub memory_peak_bytes: usize,
    pub fuel_used: Option<u64>,
    /// The call's error (trap, contract violation, guest error), if it failed.
    pub error: Option<String>,
}

/// What `floe check` found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckReport {
    pub component: String,
    /// `validator` or `row-transform`.
    pub kind: &'static str,
    pub compile_ms: f64,
    pub events: usize,
    /// Accepted (validator) or loaded (row transform).
    pub accepted: usize,
    pub rejected: usize,
    /// Row transform: events it skipped or that carry no row change.
    pub skipped: usize,
    /// Events of batches whose call failed.
    pub failed: usize,
    /// Events whose Avro key or value could not be decoded (they reach no component).
    pub unreadable: usize,
    pub calls: Vec<Call>,
    /// Per event, in file order.
    pub outcomes: Vec<Outcome>,
    pub limits: LimitsReport,
}

/// The limits the component ran under.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LimitsReport {
    pub max_memory_bytes: usize,
    pub deadline_ms: u64,
    pub fuel: Option<u64>,
    /// WASI capabilities granted (empty: the component was linked with nothing).
    pub wasi: Vec<String>,
}

impl CheckReport {
    /// Whether every call answered within the contract.
    pub fn passed(&self) -> bool {
        self.calls.iter().all(|c| c.error.is_none())
    }
}

/// The writer schemas of the Avro keys and values in `files`, from
/// `source.schema_registry` (its `schemas_file`, or the registry), for [`check`].
pub async fn resolve_schemas(
    files: &[PathBuf],
    registry: &SchemaRegistryConfig,
) -> Result<Resolved, CheckError> {
    let mut messages = Vec::new();
    for f in files {
        messages.extend(read_file(f)?);
    }
    let registry = SchemaRegistry::new(registry)?;
    Ok(registry.resolve(&schema_ids(&messages)).await?)
}

/// Runs the check: `component` over the events of `files`, `batch_rows` per call. With
/// `schemas` ([`resolve_schemas`]), Avro keys and values are decoded first, as the
/// pipeline does; an event that cannot be decoded is `unreadable` and reaches no
/// component.
pub fn check(
    config: &ComponentsConfig,
    component: &Path,
    files: &[PathBuf],
    batch_rows: usize,
    wasi: floe_host::Grants,
    schemas: Option<&Resolved>,
) -> Result<CheckReport, CheckError> {
    let bytes =
        std::fs::read(component).map_err(|e| CheckError::Read(component.to_path_buf(), e))?;
    let mut messages = Vec::new();
    for f in files {
        messages.extend(read_file(f)?);
    }
    let total = messages.len();
    // (position in the files, outcome) of the events no component sees.
    let mut unreadable: Vec<(usize, Outcome)> = Vec::new();
    if let Some(resolved) = schemas {
        let mut position = 0;
        messages.retain_mut(|m| {
            position += 1;
            match decode_message(resolved, m) {
                Ok(()) => true,
                Err(reason) => {
                    let outcome = Outcome {
                        topic: m.topic.to_string(),
                        partition: m.partition,
                        offset: m.offset,
                        verdict: "unreadable",
                        reason: Some(reason),
                        row: None,
                    };
                    unreadable.push((position - 1, outcome));
                    false
                }
            }
        });
    }
    // Fuel metering is always on here, so the report can say how much a call used.
    let (host, mut limits) = crate::components::sandbox(config, true).map_err(CheckError::Load)?;
    let configured = config.grants_of(&crate::config::ComponentRef::Path(component.to_path_buf()));
    limits.wasi = floe_host::Grants::new(configured.iter().chain(wasi.iter()));
    let name = component.display().to_string();
    let started = Instant::now();
    let kind = match Validator::new(&host, &name, &bytes, limits.clone()) {
        Ok(v) => Kind::Validator(Box::new(v)),
        Err(as_validator) => match RowTransform::new(&host, &name, &bytes, limits.clone()) {
            Ok(t) => {
                // The rows a transform gets come from the configured transformer.
                // (with the grants the configuration gives it, as in the pipeline).
                let r = config.transformer_ref();
                let (tn, tb) =
                    crate::components::bytes_of("transformer", &r).map_err(CheckError::Load)?;
                let granted = floe_host::Limits {
                    wasi: config.grants_of(&r),
                    ..limits.clone()
                };
                let transformer =
                    Transformer::new(&host, &tn, &tb, granted).map_err(CheckError::Load)?;
                Kind::Transform(Box::new((transformer, t)))
            }
            Err(as_transform) => {
                return Err(CheckError::Load(HostError::Load {
                    component: name,
                    message: format!(
                        "not a validator ({}) nor a row transform ({})",
                        load_message(as_validator),
                        load_message(as_transform)
                    ),
                }));
            }
        },
    };
    let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut report = CheckReport {
        component: name,
        kind: match kind {
            Kind::Validator(_) => "validator",
            Kind::Transform(..) => "row-transform",
        },
        compile_ms,
        events: total,
        unreadable: unreadable.len(),
        accepted: 0,
        rejected: 0,
        skipped: 0,
        failed: 0,
        calls: Vec::new(),
        outcomes: Vec::new(),
        limits: LimitsReport {
            max_memory_bytes: limits.max_memory_bytes,
            deadline_ms: config.deadline_ms,
            fuel: config.fuel,
            wasi: limits.wasi.iter().map(|c| c.name().to_owned()).collect(),
        },
    };
    for chunk in messages.chunks(batch_rows.max(1)) {
        let batch = batch_of(chunk);
        let (verdicts, usage) = match &kind {
            Kind::Validator(v) => {
                let (result, usage) = v.validate_measured(&batch);
                let verdicts = result.map(|vs| {
                    vs.into_iter()
                        .map(|v| match v {
                            Verdict::Ok => ("ok", None, None),
                            Verdict::Rejected(r) => ("rejected", Some(r), None),
                        })
                        .collect()
                });
                (verdicts, usage)
            }
            Kind::Transform(pair) => match pair.0.transform(&batch) {
                Err(e) => (Err(e), Usage::default()),
                Ok(rows) => {
                    let (result, usage) = pair.1.transform_rows_measured(&rows);
                    (
                        result.map(|out| row_outcomes(chunk.len(), &rows, out)),
                        usage,
                    )
                }
            },
        };
        let error = verdicts.as_ref().err().map(ToString::to_string);
        report.calls.push(Call {
            events: chunk.len(),
            elapsed_ms: usage.elapsed.as_secs_f64() * 1000.0,
            memory_peak_bytes: usage.memory_peak_bytes,
            fuel_used: usage.fuel_used,
            error: error.clone(),
        });
        for (i, m) in chunk.iter().enumerate() {
            let (verdict, reason, row) = match &verdicts {
                Ok(v) => v[i].clone(),
                Err(_) => ("failed", error.clone(), None),
            };
            match verdict {
                "ok" | "loaded" => report.accepted += 1,
                "rejected" => report.rejected += 1,
                "skipped" => report.skipped += 1,
                _ => report.failed += 1,
            }
            report.outcomes.push(Outcome {
                topic: m.topic.to_string(),
                partition: m.partition,
                offset: m.offset,
                verdict,
                reason,
                row,
            });
        }
    }
    // Unreadable events in their place among the others (file order).
    if !unreadable.is_empty() {
        let checked = std::mem::take(&mut report.outcomes);
        let mut unreadable = unreadable.into_iter().peekable();
        let mut checked = checked.into_iter();
        for position in 0..total {
            match unreadable.next_if(|(p, _)| *p == position) {
                Some((_, o)) => report.outcomes.push(o),
                None => report.outcomes.extend(checked.next()),
            }
        }
    }
    Ok(report)
}

/// What `floe check` runs.
enum Kind {
    Validator(Box<Validator>),
    /// The configured transformer, then the component.
    Transform(Box<(Transformer, RowTransform)>),
}

fn load_message(e: HostError) -> String {
    match e {
        HostError::Load { message, .. } => message,
        other => other.to_string(),
    }
}

type Verdicts = Vec<(&'static str, Option<String>, Option<String>)>;

/// Per event of a batch of `n`: what the row transform's answer `out` does with it,
/// given the transformer's rows `before`.
fn row_outcomes(n: usize, before: &Transformed, out: Transformed) -> Verdicts {
    let mut v: Verdicts = vec![("skipped", None, None); n];
    for r in &before.rows {
        v[r.event as usize] = ("skipped", Some("skipped by the transform".into()), None);
    }
    for r in out.rows {
        v[r.event as usize] = ("loaded", None, Some(r.data));
    }
    for f in out.failures {
        v[f.event as usize] = ("rejected", Some(f.reason), None);
    }
    v
}

/// The report as text: one line per event, then one per call and a summary.
pub fn render(report: &CheckReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for o in &report.outcomes {
        let _ = write!(
            out,
            "{}[{}]@{}\t{}",
            o.topic, o.partition, o.offset, o.verdict
        );
        if let Some(r) = o.reason.as_ref().or(o.row.as_ref()) {
            let _ = write!(out, "\t{r}");
        }
        out.push('\n');
    }
    let mib = |b: usize| b as f64 / 1_048_576.0;
    for (i, c) in report.calls.iter().enumerate() {
        let _ = write!(
            out,
            "call {}: {} events in {:.2} ms ({:.0} ns/event), memory peak {:.1} MiB of {:.0} MiB",
            i + 1,
            c.events,
            c.elapsed_ms,
            c.elapsed_ms * 1e6 / c.events.max(1) as f64,
            mib(c.memory_peak_bytes),
            mib(report.limits.max_memory_bytes)
        );
        if let Some(f) = c.fuel_used {
            let _ = write!(out, ", fuel {f}");
        }
        if let Some(e) = &c.error {
            let _ = write!(out, ", FAILED: {e}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{} ({}): {} events: {} {}, {} rejected, {} skipped, {} in failed calls, {} unreadable; compiled in {:.0} ms; deadline {} ms per call; WASI: {}; {}",
        report.component,
        report.kind,
        report.events,
        report.accepted,
        if report.kind == "validator" {
            "accepted"
        } else {
            "loaded"
        },
        report.rejected,
        report.skipped,
        report.failed,
        report.unreadable,
        report.compile_ms,
        report.limits.deadline_ms,
        if report.limits.wasi.is_empty() {
            "none".to_owned()
        } else {
            report.limits.wasi.join(", ")
        },
        if report.passed() { "PASS" } else { "FAIL" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/components/examples")
            .join(format!("{name}.wasm"))
    }

    fn events(dir: &Path, lines: &[serde_json::Value]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("events.jsonl");
        let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
        std::fs::write(&p, text.join("\n") + "\n").unwrap();
        p
    }

    fn order(id: i64, after: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"topic": "dbz.public.orders", "key": {"id": id},
            "value": {"op": "c", "before": null, "after": after,
                      "source": {"schema": "public", "table": "orders", "lsn": id}}})
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn avro_samples_are_decoded_with_the_schemas_given() {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/avro");
        let mut lines: Vec<serde_json::Value> =
            std::fs::read_to_string(fixtures.join("messages.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["topic"] == "fxavro.public.all_types" && v["value_b64"].is_string())
                .map(|v| {
                    serde_json::json!({"topic": v["topic"], "key_base64": v["key_b64"],
                    "value_base64": v["value_b64"]})
                })
                .collect();
        assert!(lines.len() >= 8, "{lines:?}");
        // Schema id 99 is in no schemas file.
        lines.insert(
            1,
            serde_json::json!({"topic": "fxavro.public.all_types", "value_base64": "AAAAAGMA"}),
        );
        let dir = std::env::temp_dir().join(format!("floe-check-avro-{}", std::process::id()));
        let file = events(&dir, &lines);
        let registry = SchemaRegistryConfig {
            url: None,
            schemas_file: Some(fixtures.join("schemas.json")),
            ..SchemaRegistryConfig::at("")
        };
        let files = std::slice::from_ref(&file);
        let schemas = resolve_schemas(files, &registry).await.unwrap();
        let report = tokio::task::block_in_place(|| {
            check(
                &ComponentsConfig::default(),
                &example("example_pii_transform"),
                files,
                4,
                Default::default(),
                Some(&schemas),
            )
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.events, lines.len());
        assert_eq!(report.unreadable, 1, "{report:?}");
        assert_eq!(report.outcomes.len(), lines.len());
        let bad = &report.outcomes[1];
        assert_eq!(bad.verdict, "unreadable");
        assert!(
            bad.reason.as_deref().unwrap().contains("schema id 99"),
            "{bad:?}"
        );
        // The first insert, decoded from Avro into typed values.
        let row = report.outcomes[0].row.as_deref().unwrap();
        assert!(row.contains(r#""num12_2":"12345.67""#), "{row}");
        assert!(
            row.contains(r#""ts":"2024-03-15 10:20:30.123456""#),
            "{row}"
        );
        assert_eq!(
            report.accepted + report.skipped + report.rejected,
            lines.len() - 1,
            "{report:?}"
        );
    }

    #[test]
    fn reports_verdicts_usage_and_contract_violations() {
        let dir = std::env::temp_dir().join(format!("floe-check-{}", std::process::id()));
        let file = events(
            &dir,
            &[
                order(
                    1,
                    serde_json::json!({"id": 1, "amount": "2.00", "currency": "USD"}),
                ),
                order(
                    2,
                    serde_json::json!({"id": 2, "amount": "-2.00", "currency": "USD"}),
                ),
                order(3, serde_json::json!({"id": 3, "hostile": "count"})),
            ],
        );
        let config = ComponentsConfig::default();
        let report = check(
            &config,
            &example("example_rules_validator"),
            std::slice::from_ref(&file),
            10,
            Default::default(),
            None,
        )
        .unwrap();
        assert!(report.passed(), "{report:?}");
        assert_eq!((report.accepted, report.rejected, report.failed), (2, 1, 0));
        assert_eq!(report.outcomes[1].verdict, "rejected");
        assert!(
            report.outcomes[1]
                .reason
                .as_deref()
                .unwrap()
                .contains("non-negative")
        );
        let call = &report.calls[0];
        assert!(call.memory_peak_bytes > 0, "{call:?}");
        assert!(call.fuel_used.is_some_and(|f| f > 0), "{call:?}");
        let text = render(&report);
        assert!(
            text.contains("dbz.public.orders[0]@1\trejected\trules:"),
            "{text}"
        );
        assert!(text.ends_with("PASS\n"), "{text}");

        // The hostile validator answers one verdict short for the batch with "count".
        let report = check(
            &config,
            &example("example_hostile_validator"),
            &[file],
            2,
            Default::default(),
            None,
        )
        .unwrap();
        assert!(!report.passed());
        assert_eq!((report.accepted, report.failed), (2, 1), "{report:?}");
        assert!(
            report.calls[1]
                .error
                .as_deref()
                .unwrap()
                .contains("0 verdicts for 1 events")
        );
        assert!(render(&report).ends_with("FAIL\n"));

        // Not a component at all.
        let bogus = dir.join("bogus.wasm");
        std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap();
        assert!(matches!(
            check(&config, &bogus, &[], 10, Default::default(), None),
            Err(CheckError::Load(_))
        ));
    }

    #[test]
    fn a_row_transform_is_checked_row_by_row() {
        let dir = std::env::temp_dir().join(format!("floe-check-t-{}", std::process::id()));
        let customer = |id: i64, email: serde_json::Value| {
            serde_json::json!({"topic": "dbz.public.customers", "key": {"id": id},
                "value": {"op": "c", "before": null,
                          "after": {"id": id, "email": email, "ssn": "1"},
                          "source": {"schema": "public", "table": "customers", "lsn": id}}})
        };
        let file = events(
            &dir,
            &[
                customer(1, "ann@example.com".into()),
                customer(2, serde_json::json!(true)),
                serde_json::json!({"topic": "__debezium-heartbeat.dbz",
                    "key": {"serverName": "dbz"}, "value": {"ts_ms": 1}}),
            ],
        );
        let report = check(
            &ComponentsConfig::default(),
            &example("example_pii_transform"),
            std::slice::from_ref(&file),
            10,
            Default::default(),
            None,
        )
        .unwrap();
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.kind, "row-transform");
        assert_eq!(
            (report.accepted, report.rejected, report.skipped),
            (1, 1, 1)
        );
        let loaded = report.outcomes[0].row.as_deref().unwrap();
        assert!(
            loaded.contains("a***@example.com") && !loaded.contains("ssn"),
            "{loaded}"
        );
        assert_eq!(report.outcomes[1].verdict, "rejected");
        assert!(render(&report).contains("(row-transform): 3 events: 1 loaded"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
