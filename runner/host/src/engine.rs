use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store};

use crate::error::{HostError, classify_trap};
use crate::wasi::{Grants, WasiState};

/// Sandbox limits applied to every call of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory a component may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Wall-clock budget of one call (enforced by epoch interruption).
    pub deadline: Duration,
    /// Optional instruction budget per call (fuel); `None` disables fuel metering.
    pub fuel: Option<u64>,
    /// WASI capabilities granted (none by default: the component is linked with
    /// nothing).
    pub wasi: Grants,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 512 * 1024 * 1024,
            deadline: Duration::from_secs(30),
            fuel: None,
            wasi: Grants::default(),
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
    /// Where compiled components are kept between runs (see [`Host::with_cache`]).
    cache_dir: Option<PathBuf>,
    _ticker: Arc<Ticker>,
}

/// Feeds `Hash` output into SHA-256 (for a cache key that is stable across runs).
struct Sha(Sha256);

impl std::hash::Hasher for Sha {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
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
            cache_dir: None,
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    /// Keeps compiled components in `dir`, keyed by the component's bytes and the
    /// engine's compatibility hash (wasmtime version and settings), so a restart does
    /// not compile them again. The directory must be writable by floe's user only: a
    /// cached file is native code that is loaded as is.
    pub fn with_cache(mut self, dir: PathBuf) -> Host {
        self.cache_dir = Some(dir);
        self
    }

    /// The cache file of a component's bytes for this engine.
    fn cache_path(&self, dir: &Path, bytes: &[u8]) -> PathBuf {
        let mut sha = Sha(Sha256::new());
        self.engine.precompile_compatibility_hash().hash(&mut sha);
        sha.0.update(bytes);
        let digest = sha.0.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("{hex}.cwasm"))
    }

    /// Compiles a component, or loads it from the cache when it was compiled before.
    pub(crate) fn compile(&self, name: &str, bytes: &[u8]) -> Result<Component, HostError> {
        let load_err = |e: wasmtime::Error| HostError::Load {
            component: name.to_string(),
            message: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(load_err);
        };
        let path = self.cache_path(dir, bytes);
        // Read into memory rather than mapped: a cache file replaced or truncated by
        // another process later cannot fault this one.
        if let Ok(compiled) = std::fs::read(&path) {
            // SAFETY: the file was written by `Component::serialize` of an engine with
            // the same compatibility hash (it is in the file name), into a directory
            // only floe's user can write (documented requirement); wasmtime checks the
            // header and the engine settings again before using it.
            #[allow(unsafe_code, reason = "loading floe's own precompiled components")]
            match unsafe { Component::deserialize(&self.engine, &compiled) } {
                Ok(component) => {
                    tracing::debug!(component = name, path = %path.display(), "component loaded precompiled");
                    return Ok(component);
                }
                Err(e) => {
                    tracing::warn!(component = name, path = %path.display(), error = %e, "unusable precompiled component; compiling again");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(load_err)?;
        match component.serialize() {
            Ok(compiled) => {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                let written = std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::write(&tmp, &compiled))
                    .and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!(component = name, dir = %dir.display(), error = %e, "cannot cache the compiled component");
                }
            }
            Err(e) => {
                tracing::warn!(component = name, error = %e, "cannot serialise the compiled component")
            }
        }
        Ok(component)
    }

    /// The linker a component is instantiated with: empty without grants, so a
    /// component that imports anything fails to load; with grants, WASI (whose imports
    /// [`Grants::check_imports`] has limited to the granted capabilities).
    pub(crate) fn linker(
        &self,
        name: &str,
        grants: &Grants,
    ) -> Result<Linker<StoreState>, HostError> {
        let mut linker = Linker::new(&self.engine);
        if !grants.is_empty() {
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| HostError::Load {
                component: name.to_string(),
                message: format!("linking WASI: {e:#}"),
            })?;
        }
        Ok(linker)
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
                wasi: (!limits.wasi.is_empty()).then(|| WasiState::new(&limits.wasi)),
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

/// Per-call store state: the memory limiter, and WASI for a granted component.
pub(crate) struct StoreState {
    max_memory_bytes: usize,
    pub(crate) memory_exceeded: bool,
    /// The largest linear memory size the component reached (or asked for), in bytes.
    pub(crate) memory_peak: usize,
    /// Present when the component was granted WASI capabilities.
    pub(crate) wasi: Option<WasiState>,
}

impl wasmtime_wasi::WasiView for StoreState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        // Only a granted component is linked with WASI, and its stores are built with
        // the state; an empty one serves should that ever not hold.
        let state = self
            .wasi
            .get_or_insert_with(|| WasiState::new(&Grants::default()));
        wasmtime_wasi::WasiCtxView {
            ctx: &mut state.ctx,
            table: &mut state.table,
        }
    }
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
