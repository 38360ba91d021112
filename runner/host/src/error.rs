use std::fmt;

/// Why a component call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The component bytes are not a valid component, or it does not implement the
    /// expected world (wrong exports, unexpected imports).
    #[error("component {component} could not be loaded: {message}")]
    Load { component: String, message: String },
    /// The guest trapped: a panic, the epoch deadline, fuel exhaustion, the memory cap.
    #[error("component {component} trapped ({kind}): {message}")]
    Trap {
        component: String,
        kind: TrapKind,
        message: String,
    },
    /// The guest returned its WIT `error` value for the whole call.
    #[error("component {component} failed the batch: {message}")]
    Guest { component: String, message: String },
    /// The guest answered, but the answer breaks the contract (e.g. not one verdict per
    /// event, an index out of range).
    #[error("component {component} broke the contract: {message}")]
    Contract { component: String, message: String },
}

impl HostError {
    /// Whether running the same call again could succeed. A fresh instance after a
    /// deadline may succeed on a less loaded machine; a guest's own error, a contract
    /// violation or a panic will repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HostError::Trap {
                kind: TrapKind::Deadline,
                ..
            }
        )
    }

    /// A short, bounded label for metrics and DLQ headers.
    pub fn error_code(&self) -> &'static str {
        match self {
            HostError::Load { .. } => "load",
            HostError::Trap { kind, .. } => kind.as_str(),
            HostError::Guest { .. } => "guest_error",
            HostError::Contract { .. } => "contract",
        }
    }
}

/// What kind of trap stopped a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The per-call epoch deadline passed.
    Deadline,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The guest tried to grow memory beyond the cap.
    Memory,
    /// The guest panicked or hit `unreachable`.
    Panic,
    /// Any other trap (stack overflow, out-of-bounds access, ...).
    Other,
}

impl TrapKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TrapKind::Deadline => "deadline",
            TrapKind::OutOfFuel => "out_of_fuel",
            TrapKind::Memory => "memory",
            TrapKind::Panic => "panic",
            TrapKind::Other => "trap",
        }
    }
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an error raised by a wasmtime call into a [`HostError::Trap`].
pub(crate) fn classify_trap(
    component: &str,
    err: wasmtime::Error,
    memory_exceeded: bool,
) -> HostError {
    let kind = if memory_exceeded {
        TrapKind::Memory
    } else {
        match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => TrapKind::Deadline,
            Some(wasmtime::Trap::OutOfFuel) => TrapKind::OutOfFuel,
            Some(wasmtime::Trap::UnreachableCodeReached) => TrapKind::Panic,
            Some(_) => TrapKind::Other,
            None if format!("{err:#}").contains("memory") => TrapKind::Memory,
            None => TrapKind::Other,
        }
    };
    HostError::Trap {
        component: component.to_string(),
        kind,
        message: format!("{err:#}"),
    }
}
