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
    name: String,
    limits: Limits,
    pre: P,
}

impl<P> Loaded<P> {
    /// Compiles and links the component once with an empty linker, then checks it
    /// exports the world (`typed`).
    fn new(
        host: &Host,
        name: &str,
        wasm: &[u8],
        limits: Limits,
        typed: impl FnOnce(wasmtime::component::InstancePre<StoreState>) -> wasmtime::Result<P>,
    ) -> Result<Self, HostError> {
        let component = host.compile(name, wasm)?;
        let pre = host
            .linker()
            .instantiate_pre(&component)
            .and_then(typed)
            .map_err(|e| load_err(name, e))?;
        Ok(Loaded {
            host: host.clone(),
            name: name.to_string(),
            limits,
            pre,
        })
    }

    /// Runs one guest call in a fresh store and maps every failure to a [`HostError`].
    fn call<R>(
        &self,
        call: impl FnOnce(&P, &mut Store<StoreState>) -> wasmtime::Result<Result<R, GuestError>>,
    ) -> Result<R, HostError> {
        self.call_measured(call).0
    }

    /// [`Loaded::call`], also reporting what the call used.
    fn call_measured<R>(
        &self,
        call: impl FnOnce(&P, &mut Store<StoreState>) -> wasmtime::Result<Result<R, GuestError>>,
    ) -> (Result<R, HostError>, Usage) {
        let started = std::time::Instant::now();
        let mut store = match self.host.store(&self.name, &self.limits) {
            Ok(store) => store,
            Err(e) => return (Err(e), Usage::default()),
        };
        let fuel_before = store.get_fuel().ok();
        let outcome = call(&self.pre, &mut store);
        let usage = Usage {
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
        Loaded::new(host, name, wasm, limits, gen_::validator::ValidatorPre::new).map(Validator)
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
        let (result, usage) = self.0.call_measured(|pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_validate(&mut *store, batch)
        });
        (result.and_then(|v| self.checked(batch, v)), usage)
    }

    /// The contract checks of a validator's answer; reasons bounded.
    fn checked(
        &self,
        batch: &Batch,
        mut verdicts: Vec<Verdict>,
    ) -> Result<Vec<Verdict>, HostError> {
        if verdicts.len() != batch.events.len() {
            return Err(contract(
                &self.0.name,
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
}

/// A loaded transformer component (world `transformer`).
pub struct Transformer(Loaded<gen_::transformer::TransformerPre<StoreState>>);

impl Transformer {
    pub fn new(host: &Host, name: &str, wasm: &[u8], limits: Limits) -> Result<Self, HostError> {
        Loaded::new(
            host,
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

    /// Rows, truncates and per-event failures for the batch; every index in the answer
    /// is checked against the batch.
    pub fn transform(&self, batch: &Batch) -> Result<Transformed, HostError> {
        let mut out = self.0.call(|pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_transform(&mut *store, batch)
        })?;
        let events = batch.events.len();
        let tables = out.tables.len();
        let bad_row = out
            .rows
            .iter()
            .find(|r| r.event as usize >= events || r.table as usize >= tables);
        if let Some(r) = bad_row {
            return Err(contract(
                &self.0.name,
                format!(
                    "row refers to event {} / table {} but the batch has {events} events and the answer {tables} tables",
                    r.event, r.table
                ),
            ));
        }
        let bad_event = out
            .failures
            .iter()
            .map(|f| f.event)
            .chain(out.truncates.iter().map(|t| t.event))
            .find(|&e| e as usize >= events);
        if let Some(e) = bad_event {
            return Err(contract(
                &self.0.name,
                format!("answer refers to event {e} but the batch has {events} events"),
            ));
        }
        for f in &mut out.failures {
            f.reason = bounded(std::mem::take(&mut f.reason));
        }
        Ok(out)
    }
}

/// A loaded MERGE builder component (world `merge-builder`).
pub struct MergeBuilder(Loaded<gen_::merge_builder::MergeBuilderPre<StoreState>>);

impl MergeBuilder {
    pub fn new(host: &Host, name: &str, wasm: &[u8], limits: Limits) -> Result<Self, HostError> {
        Loaded::new(
            host,
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
        let plan = self.0.call(|pre, store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.call_build_merge(&mut *store, input)
        })?;
        if !input.rows.is_empty() && plan.statements.is_empty() {
            return Err(contract(
                &self.0.name,
                format!("no statement for {} rows", input.rows.len()),
            ));
        }
        Ok(plan)
    }
}
