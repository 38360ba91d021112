//! The monotonic clock a component granted `clocks` sees, with every wait bounded by
//! the call's deadline.
//!
//! wasmtime-wasi's own `subscribe-duration`/`subscribe-instant` make a pollable that a
//! `wasi:io/poll` call then blocks on inside the host, where the epoch deadline that
//! stops running guest code cannot reach: a component could sleep for an hour. floe
//! links its own versions of the clock's functions over wasmtime-wasi's: the same
//! clock, but a pollable is ready at the earlier of what the guest asked for and the
//! call's deadline. A wait then returns at the deadline, and the guest code that runs
//! next meets the epoch deadline as any other code does.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::engine::StoreState;
use crate::error::HostError;

/// The interface floe shadows (the version wasmtime-wasi links; components importing
/// an older 0.2.x are served by it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The start of the guest-visible monotonic clock (nanoseconds since then).
fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A clock wait: ready at `until`.
struct Wait {
    until: tokio::time::Instant,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Wait {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.until).await;
    }
}

/// A pollable ready after `wanted`, or at `deadline` if that is sooner.
fn bounded_wait(
    table: &mut ResourceTable,
    wanted: Duration,
    deadline: Instant,
) -> wasmtime::Result<Resource<DynPollable>> {
    let left = deadline.saturating_duration_since(Instant::now());
    let until = tokio::time::Instant::now() + wanted.min(left);
    let wait = table.push(Wait { until })?;
    subscribe(table, wait)
}

fn table(state: &mut StoreState) -> wasmtime::Result<&mut ResourceTable> {
    state
        .wasi
        .as_mut()
        .map(|w| &mut w.table)
        .ok_or_else(|| wasmtime::format_err!("WASI clock used without WASI state"))
}

/// Links floe's `now`, `subscribe-duration` and `subscribe-instant` over
/// wasmtime-wasi's (the linker must already hold WASI).
pub(crate) fn bound_waits(name: &str, linker: &mut Linker<StoreState>) -> Result<(), HostError> {
    let err = |e: wasmtime::Error| HostError::Load {
        component: name.to_string(),
        message: format!("linking the bounded clock: {e:#}"),
    };
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK).map_err(err)?;
    clock
        .func_wrap("now", |_store, (): ()| Ok((now_ns(),)))
        .map_err(err)?;
    clock
        .func_wrap("subscribe-duration", |mut store, (ns,): (u64,)| {
            let state = store.data_mut();
            let deadline = state.deadline;
            Ok((bounded_wait(
                table(state)?,
                Duration::from_nanos(ns),
                deadline,
            )?,))
        })
        .map_err(err)?;
    clock
        .func_wrap("subscribe-instant", |mut store, (when,): (u64,)| {
            let state = store.data_mut();
            let deadline = state.deadline;
            let wanted = Duration::from_nanos(when.saturating_sub(now_ns()));
            Ok((bounded_wait(table(state)?, wanted, deadline)?,))
        })
        .map_err(err)?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A hostile component granted `clocks` that asks to sleep for an hour.

    use super::*;
    use crate::engine::{Host, Limits};
    use crate::wasi::{Capability, Grants};

    /// `run` subscribes to a one-hour duration and blocks on it (`wasi:io/poll`).
    const SLEEPER: &str = r#"
    (component
      (type $poll-ty (instance
        (export "pollable" (type (sub resource)))
        (type (borrow 0))
        (type (func (param "self" 1)))
        (export "[method]pollable.block" (func (type 2)))))
      (import "wasi:io/poll@0.2.0" (instance $poll (type $poll-ty)))
      (alias export $poll "pollable" (type $pollable))
      (type $clock-ty (instance
        (alias outer 1 $pollable (type))
        (export "pollable" (type (eq 0)))
        (type (own 1))
        (type (func (param "when" u64) (result 2)))
        (export "subscribe-duration" (func (type 3)))))
      (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock (type $clock-ty)))
      (alias export $clock "subscribe-duration" (func $subscribe))
      (alias export $poll "[method]pollable.block" (func $block))
      (core func $subscribe-lowered (canon lower (func $subscribe)))
      (core func $block-lowered (canon lower (func $block)))
      (core module $m
        (import "host" "subscribe" (func $s (param i64) (result i32)))
        (import "host" "block" (func $b (param i32)))
        (func (export "run")
          (call $b (call $s (i64.const 3600000000000)))))
      (core instance $host
        (export "subscribe" (func $subscribe-lowered))
        (export "block" (func $block-lowered)))
      (core instance $i (instantiate $m (with "host" (instance $host))))
      (func (export "run") (canon lift (core func $i "run"))))
    "#;

    #[test]
    fn an_hour_long_clock_wait_ends_at_the_calls_deadline() {
        let host = Host::new(false).unwrap();
        let grants = Grants::new([Capability::Clocks]);
        let limits = Limits {
            deadline: Duration::from_millis(300),
            wasi: grants.clone(),
            ..Limits::default()
        };
        let component =
            wasmtime::component::Component::new(&host.engine, wat::parse_str(SLEEPER).unwrap())
                .unwrap();
        let linker = host.linker("sleeper", &grants).unwrap();
        let mut store = host.store("sleeper", &limits).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let instance = linker.instantiate(&mut store, &component).unwrap();
            let run = instance
                .get_typed_func::<(), ()>(&mut store, "run")
                .unwrap();
            let _ = tx.send(run.call(&mut store, ()).map_err(|e| format!("{e:#}")));
        });
        let result = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the component slept past its deadline");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}: {result:?}");
        assert!(took >= Duration::from_millis(250), "it did wait: {took:?}");
    }
}
