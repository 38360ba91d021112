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

/// Most core instances, linear memories and tables one call's store may hold. A
/// component made by `wit-bindgen` or `componentize-js` needs a handful of each; the
/// bounds keep a hostile component from making thousands.
pub const MAX_INSTANCES: usize = 64;
pub const MAX_MEMORIES: usize = 16;
pub const MAX_TABLES: usize = 64;
/// Most elements one table may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Sandbox limits applied to every call of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most linear memory a component may hold, in bytes: the sum of all its
    /// memories (a component can have several).
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
    /// Components compiled ahead of time for this architecture (see
    /// [`Host::with_precompiled`]).
    precompiled_dir: Option<PathBuf>,
    _ticker: Arc<Ticker>,
}

/// The engine settings of every host (and of [`precompile_portable`]).
fn engine_config(fuel: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    config.wasm_component_model(true);
    config.max_wasm_stack(1024 * 1024);
    // For profiling guests with `perf` (docs/benchmarks.md "Profiles"): perf then names
    // the guest's functions instead of showing JIT addresses.
    #[cfg(feature = "profiling")]
    match std::env::var("FLOE_WASM_PROFILER").as_deref() {
        Ok("perfmap") => {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Ok("jitdump") => {
            config.profiler(wasmtime::ProfilingStrategy::JitDump);
        }
        _ => {}
    }
    config
}

/// The file name [`Host::with_precompiled`] looks for: the component's SHA-256.
pub fn precompiled_name(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.cwasm")
}

/// This architecture's target triple.
const PORTABLE_TARGET: &str = if cfg!(target_arch = "aarch64") {
    "aarch64-unknown-linux-gnu"
} else {
    "x86_64-unknown-linux-gnu"
};

/// Compiles a component ahead of time for this architecture's baseline CPU (no
/// optional CPU features: the result loads on any machine of the architecture, such as
/// Lambda's), with the settings of a host with `fuel` on or off. Written as
/// [`precompiled_name`] into a directory given to [`Host::with_precompiled`].
pub fn precompile_portable(fuel: bool, bytes: &[u8]) -> Result<Vec<u8>, HostError> {
    let err = |e: wasmtime::Error| HostError::Load {
        component: "precompile".into(),
        message: format!("{e:#}"),
    };
    let mut config = engine_config(fuel);
    config.target(PORTABLE_TARGET).map_err(err)?;
    let engine = Engine::new(&config).map_err(err)?;
    engine.precompile_component(bytes).map_err(err)
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
        let engine = Engine::new(&engine_config(fuel)).map_err(|e| HostError::Load {
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
            precompiled_dir: None,
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

    /// Looks for components in `dir` first, as [`precompile_portable`] wrote them
    /// (`<sha256 of the component>.cwasm`): shipped with floe (the Lambda package), they
    /// load without compiling. A file the engine cannot use (another wasmtime, another
    /// architecture) is logged and the component compiled as usual. `dir` must be
    /// writable by floe's deployer only: a precompiled file is native code.
    pub fn with_precompiled(mut self, dir: PathBuf) -> Host {
        self.precompiled_dir = Some(dir);
        self
    }

    /// The component of `bytes` from the precompiled directory, when it holds a usable one.
    fn precompiled(&self, name: &str, bytes: &[u8]) -> Option<Component> {
        let dir = self.precompiled_dir.as_ref()?;
        let path = dir.join(precompiled_name(bytes));
        let compiled = std::fs::read(&path).ok()?;
        // SAFETY: the file was written by `precompile_portable` (wasmtime's
        // `precompile_component`) into the deployer's read-only package; wasmtime checks
        // its header, version, target and settings before using it.
        #[allow(unsafe_code, reason = "loading floe's own precompiled components")]
        match unsafe { Component::deserialize(&self.engine, &compiled) } {
            Ok(component) => {
                tracing::debug!(component = name, path = %path.display(), "component loaded precompiled");
                Some(component)
            }
            Err(e) => {
                tracing::warn!(component = name, path = %path.display(), error = %format!("{e:#}"), "unusable precompiled component; compiling it");
                None
            }
        }
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
        if let Some(component) = self.precompiled(name, bytes) {
            return Ok(component);
        }
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
            // Clock waits end at the call's deadline (see `clocks`).
            crate::clocks::bound_waits(name, &mut linker)?;
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
                memory_total: 0,
                memory_peak: 0,
                deadline: std::time::Instant::now() + limits.deadline,
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
    /// The sum of the component's linear memories now, in bytes.
    memory_total: usize,
    /// When the call's time is up (the epoch deadline; also the end of any clock wait).
    pub(crate) deadline: std::time::Instant,
    /// The largest sum of its linear memories the component reached (or asked for), in
    /// bytes.
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
    /// Called when a memory is created (`current` 0) and when it grows: the cap is on
    /// the sum of every memory of the store.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        self.memory_peak = self.memory_peak.max(total);
        if total > self.max_memory_bytes {
            self.memory_exceeded = true;
            return Err(wasmtime::format_err!(
                "memory cap exceeded: the component asked for {total} bytes in all its memories, the limit is {}",
                self.max_memory_bytes
            ));
        }
        self.memory_total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

#[cfg(test)]
mod tests {
    //! The limiter against hostile core modules: several memories, many memories,
    //! tables and instances in one store.

    use super::*;

    fn limits(max_memory_bytes: usize) -> Limits {
        Limits {
            max_memory_bytes,
            ..Limits::default()
        }
    }

    /// Instantiates `wat` `times` times in one store.
    fn instantiate(wat: &str, times: usize, limits: &Limits) -> Result<(), String> {
        let host = Host::new(false).unwrap();
        let module = wasmtime::Module::new(&host.engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = host.store("hostile", limits).unwrap();
        let linker: wasmtime::Linker<StoreState> = wasmtime::Linker::new(&host.engine);
        for _ in 0..times {
            linker
                .instantiate(&mut store, &module)
                .map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }

    fn memories(n: usize, pages: usize) -> String {
        let ms: String = (0..n).map(|_| format!("(memory {pages})")).collect();
        format!("(module {ms})")
    }

    #[test]
    fn the_memory_cap_is_on_the_sum_of_all_memories() {
        let mib = 1 << 20;
        // 64 pages = 4 MiB each: two fit in 10 MiB, three do not.
        instantiate(&memories(2, 64), 1, &limits(10 * mib)).unwrap();
        let e = instantiate(&memories(3, 64), 1, &limits(10 * mib)).unwrap_err();
        assert!(e.contains("memory cap exceeded"), "{e}");
        // Also across instances of one store.
        let e = instantiate(&memories(1, 64), 3, &limits(10 * mib)).unwrap_err();
        assert!(e.contains("memory cap exceeded"), "{e}");
        // And when a memory grows.
        let grow =
            r#"(module (memory 64) (func (export "g") (result i32) (memory.grow (i32.const 64))))"#;
        let host = Host::new(false).unwrap();
        let module = wasmtime::Module::new(&host.engine, wat::parse_str(grow).unwrap()).unwrap();
        let mut store = host.store("hostile", &limits(6 * mib)).unwrap();
        let linker: wasmtime::Linker<StoreState> = wasmtime::Linker::new(&host.engine);
        let i = linker.instantiate(&mut store, &module).unwrap();
        let g = i.get_typed_func::<(), i32>(&mut store, "g").unwrap();
        assert!(g.call(&mut store, ()).is_err() || store.data().memory_exceeded);
        assert!(store.data().memory_peak > 6 * mib);
    }

    #[test]
    fn counts_of_memories_tables_and_instances_are_bounded() {
        let big = 1 << 30;
        instantiate(&memories(MAX_MEMORIES, 0), 1, &limits(big)).unwrap();
        assert!(instantiate(&memories(MAX_MEMORIES + 1, 0), 1, &limits(big)).is_err());
        let tables = |n: usize| {
            let ts: String = (0..n).map(|_| "(table 0 funcref)").collect();
            format!("(module {ts})")
        };
        instantiate(&tables(MAX_TABLES), 1, &limits(big)).unwrap();
        assert!(instantiate(&tables(MAX_TABLES + 1), 1, &limits(big)).is_err());
        let empty = "(module)";
        instantiate(empty, MAX_INSTANCES, &limits(big)).unwrap();
        assert!(instantiate(empty, MAX_INSTANCES + 1, &limits(big)).is_err());
        let huge_table = "(module (table 2000000 funcref))";
        assert!(instantiate(huge_table, 1, &limits(big)).is_err());
    }
}
