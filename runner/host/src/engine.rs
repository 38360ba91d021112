use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store};

use crate::error::{HostError, classify_trap};

/// Sandbox limits applied to every call of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory a component may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Wall-clock budget of one call (enforced by epoch interruption).
    pub deadline: Duration,
    /// Optional instruction budget per call (fuel); `None` disables fuel metering.
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 512 * 1024 * 1024,
            deadline: Duration::from_secs(30),
            fuel: None,
        }
    }
}

/// Granularity of the epoch deadline.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The shared wasmtime engine: compiled code, configuration and the epoch ticker.
/// Cheap to clone; build it once per process.
#[derive(Clone)]
pub struct Host {
    pub(crate) engine: Engine,
    pub(crate) fuel_enabled: bool,
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("fuel_enabled", &self.fuel_enabled)
            .finish_non_exhaustive()
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Host {
    /// Builds the engine. `fuel` turns on fuel metering for every component of this
    /// host (it costs 10-40% speed, so it is off unless a limit asks for it).
    pub fn new(fuel: bool) -> Result<Host, HostError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        config.wasm_component_model(true);
        config.max_wasm_stack(1024 * 1024);
        let engine = Engine::new(&config).map_err(|e| HostError::Load {
            component: "engine".into(),
            message: format!("{e:#}"),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticking = engine.clone();
        let stop_flag = stop.clone();
        std::thread::Builder::new()
            .name("floe-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| HostError::Load {
                component: "engine".into(),
                message: format!("cannot start the epoch ticker: {e}"),
            })?;
        Ok(Host {
            engine,
            fuel_enabled: fuel,
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    /// Compiles a component (or deserialises nothing: always from wasm bytes).
    pub(crate) fn compile(&self, name: &str, bytes: &[u8]) -> Result<Component, HostError> {
        Component::new(&self.engine, bytes).map_err(|e| HostError::Load {
            component: name.to_string(),
            message: format!("{e:#}"),
        })
    }

    /// The linker every component is instantiated with: empty, so a component that
    /// imports anything (WASI included) fails to load.
    pub(crate) fn linker(&self) -> Linker<StoreState> {
        Linker::new(&self.engine)
    }

    /// A fresh store for one call, with the limits applied.
    pub(crate) fn store(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Result<Store<StoreState>, HostError> {
        let mut store = Store::new(
            &self.engine,
            StoreState {
                max_memory_bytes: limits.max_memory_bytes,
                memory_exceeded: false,
                memory_peak: 0,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        let ticks = (limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        if self.fuel_enabled {
            let fuel = limits.fuel.unwrap_or(u64::MAX);
            store
                .set_fuel(fuel)
                .map_err(|e| classify_trap(name, e, false))?;
        }
        Ok(store)
    }
}

/// Per-call store state: the memory limiter.
pub(crate) struct StoreState {
    max_memory_bytes: usize,
    pub(crate) memory_exceeded: bool,
    /// The largest linear memory size the component reached (or asked for), in bytes.
    pub(crate) memory_peak: usize,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.memory_peak = self.memory_peak.max(desired);
        if desired > self.max_memory_bytes {
            self.memory_exceeded = true;
            return Err(wasmtime::format_err!(
                "memory cap exceeded: the component asked for {desired} bytes, the limit is {}",
                self.max_memory_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
