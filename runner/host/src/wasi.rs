//! WASI capabilities a component may be granted, and the per-call WASI state.
//!
//! A component gets no WASI at all unless its configuration grants capabilities by
//! name. A grant links only what it names and holds no ambient authority:
//!
//! | capability    | interfaces                                   | what the component gets |
//! |---------------|----------------------------------------------|-------------------------|
//! | `clocks`      | `wasi:clocks/*`                              | wall and monotonic clocks; a wait on the monotonic clock ends at the call's deadline at the latest |
//! | `random`      | `wasi:random/*`                              | random bytes |
//! | `stdio`       | `wasi:cli/stdin`, `stdout`, `stderr`, `terminal-*` | empty stdin; output captured (the first 64 KiB per call and stream; the rest is dropped and counted, never an error) and logged by floe |
//! | `environment` | `wasi:cli/environment`, `wasi:cli/exit`      | no variables, no arguments; `exit` ends the call as an error |
//! | `filesystem`  | `wasi:filesystem/*`                          | the interfaces only: no directory is opened to it |
//!
//! `wasi:io/*` (streams, polling, errors) comes with any grant: it carries no authority
//! of its own. Sockets and HTTP are never linked.

use std::fmt;

use wasmtime::Engine;
use wasmtime::component::{Component, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::error::HostError;
use crate::output::CappedOutput;

/// Bytes of stdout (and of stderr) kept per call of a component granted `stdio`.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// A WASI capability a component can be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    Clocks,
    Random,
    Stdio,
    Environment,
    Filesystem,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Clocks,
        Capability::Random,
        Capability::Stdio,
        Capability::Environment,
        Capability::Filesystem,
    ];

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Clocks => "clocks",
            Capability::Random => "random",
            Capability::Stdio => "stdio",
            Capability::Environment => "environment",
            Capability::Filesystem => "filesystem",
        }
    }

    /// The capability a WASI interface (`wasi:clocks/wall-clock`, no version) needs;
    /// `None` for one no grant allows (sockets, HTTP, anything unknown).
    fn of_interface(interface: &str) -> Option<Option<Capability>> {
        let (package, name) = interface.split_once('/')?;
        Some(match (package, name) {
            ("wasi:io", _) => None,
            ("wasi:clocks", _) => Some(Capability::Clocks),
            ("wasi:random", _) => Some(Capability::Random),
            ("wasi:cli", "environment" | "exit") => Some(Capability::Environment),
            ("wasi:cli", _) => Some(Capability::Stdio),
            ("wasi:filesystem", _) => Some(Capability::Filesystem),
            _ => return None,
        })
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
                format!("unknown WASI capability {s:?}: one of {}", names.join(", "))
            })
    }
}

/// The WASI capabilities granted to one component (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<Capability>);

impl Grants {
    pub fn new(capabilities: impl IntoIterator<Item = Capability>) -> Grants {
        let mut c: Vec<Capability> = capabilities.into_iter().collect();
        c.sort();
        c.dedup();
        Grants(c)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }

    /// The granted capabilities, in [`Capability::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }

    /// Checks every import of `component` against the grants: the floe contract's
    /// type-only interface is always fine, a WASI interface needs its capability, and
    /// nothing else can be satisfied. The error names each missing capability.
    pub(crate) fn check_imports(
        &self,
        name: &str,
        engine: &Engine,
        component: &Component,
    ) -> Result<(), HostError> {
        let mut missing: Vec<String> = Vec::new();
        let mut needed: Vec<Capability> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for (import, _) in component.component_type().imports(engine) {
            let interface = import.split('@').next().unwrap_or(import);
            if interface.starts_with("floe:cdc/") {
                continue;
            }
            match Capability::of_interface(interface) {
                Some(None) => {}
                Some(Some(c)) if self.contains(c) => {}
                Some(Some(c)) => {
                    missing.push(format!("{import} (capability {c})"));
                    if !needed.contains(&c) {
                        needed.push(c);
                    }
                }
                None => refused.push(import.to_string()),
            }
        }
        if !refused.is_empty() {
            return Err(HostError::Load {
                component: name.to_string(),
                message: format!(
                    "the component imports {}, which floe never provides (no sockets, no HTTP, nothing outside floe:cdc and the grantable WASI capabilities)",
                    refused.join(", ")
                ),
            });
        }
        if !missing.is_empty() {
            needed.sort();
            let list: Vec<String> = needed.iter().map(|c| format!("\"{c}\"")).collect();
            return Err(HostError::Load {
                component: name.to_string(),
                message: format!(
                    "the component imports {} but is not granted {}: grant them in the configuration ([components.grants.\"{name}\"] wasi = [{}]) if it may use them",
                    missing.join(", "),
                    if needed.len() == 1 {
                        "that capability"
                    } else {
                        "those capabilities"
                    },
                    list.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// The WASI state of one call of a granted component.
pub(crate) struct WasiState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    stdout: Option<CappedOutput>,
    stderr: Option<CappedOutput>,
}

impl WasiState {
    /// A context with nothing but what `grants` names: no environment, no arguments,
    /// no directories, no network; stdout/stderr captured when `stdio` is granted.
    pub(crate) fn new(grants: &Grants) -> WasiState {
        let mut b = WasiCtxBuilder::new();
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_blocking_current_thread(true);
        let (stdout, stderr) = if grants.contains(Capability::Stdio) {
            let out = CappedOutput::new(MAX_OUTPUT_BYTES);
            let err = CappedOutput::new(MAX_OUTPUT_BYTES);
            b.stdout(out.clone()).stderr(err.clone());
            (Some(out), Some(err))
        } else {
            (None, None)
        };
        WasiState {
            ctx: b.build(),
            table: ResourceTable::new(),
            stdout,
            stderr,
        }
    }

    /// Logs what the component wrote to stdout and stderr during the call.
    pub(crate) fn log_output(&self, component: &str) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let Some(pipe) = pipe else { continue };
            let (bytes, dropped) = pipe.contents();
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                tracing::info!(component, stream, "{line}");
            }
            if dropped > 0 {
                tracing::warn!(
                    component,
                    stream,
                    dropped_bytes = dropped,
                    kept_bytes = bytes.len(),
                    "the component wrote more than floe keeps per call; the rest was dropped"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_map_to_capabilities() {
        let of = Capability::of_interface;
        assert_eq!(of("wasi:io/streams"), Some(None));
        assert_eq!(
            of("wasi:clocks/monotonic-clock"),
            Some(Some(Capability::Clocks))
        );
        assert_eq!(
            of("wasi:random/insecure-seed"),
            Some(Some(Capability::Random))
        );
        assert_eq!(of("wasi:cli/stderr"), Some(Some(Capability::Stdio)));
        assert_eq!(
            of("wasi:cli/terminal-stdout"),
            Some(Some(Capability::Stdio))
        );
        assert_eq!(
            of("wasi:cli/environment"),
            Some(Some(Capability::Environment))
        );
        assert_eq!(
            of("wasi:filesystem/preopens"),
            Some(Some(Capability::Filesystem))
        );
        assert_eq!(of("wasi:sockets/tcp"), None);
        assert_eq!(of("wasi:http/outgoing-handler"), None);
        assert_eq!(of("acme:evil/thing"), None);
        assert_eq!("clocks".parse::<Capability>(), Ok(Capability::Clocks));
        assert!(
            "network"
                .parse::<Capability>()
                .unwrap_err()
                .contains("one of clocks")
        );
    }
}
