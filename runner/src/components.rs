//! Loads the configured components (built-in or from files) once per process.

use std::time::Duration;

use floe_host::{Host, HostError, Limits, MergeBuilder, Transformer, Validator};

use crate::config::{ComponentRef, ComponentsConfig};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_components.rs"));
}

/// The built-in components' bytes, by kind.
pub fn builtin_bytes(kind: &str) -> &'static [u8] {
    match kind {
        "validator" => builtin::VALIDATOR,
        "transformer" => builtin::TRANSFORMER,
        _ => builtin::MERGE_BUILDER,
    }
}

/// The three components of a pipeline, compiled and ready to instantiate per batch.
pub struct Components {
    pub validator: Validator,
    pub transformer: Transformer,
    pub merge_builder: MergeBuilder,
}

fn bytes_of(kind: &str, r: &ComponentRef) -> Result<(String, Vec<u8>), HostError> {
    match r {
        ComponentRef::Builtin => {
            let b = builtin_bytes(kind);
            if b.is_empty() {
                return Err(HostError::Load {
                    component: format!("builtin {kind}"),
                    message: "this floe binary was built without its built-in components: run `make components` (functions/build.sh), then rebuild".into(),
                });
            }
            Ok((format!("builtin-{kind}"), b.to_vec()))
        }
        ComponentRef::Path(p) => {
            let bytes = std::fs::read(p).map_err(|e| HostError::Load {
                component: p.display().to_string(),
                message: format!("cannot read the component file: {e}"),
            })?;
            Ok((p.display().to_string(), bytes))
        }
    }
}

impl Components {
    /// Compiles all three components with the configured sandbox limits.
    pub fn load(cfg: &ComponentsConfig) -> Result<Components, HostError> {
        let host = Host::new(cfg.fuel.is_some())?;
        let limits = Limits {
            max_memory_bytes: cfg.max_memory_mib * 1024 * 1024,
            deadline: Duration::from_millis(cfg.deadline_ms),
            fuel: cfg.fuel,
        };
        let (vn, vb) = bytes_of("validator", &cfg.validator_ref())?;
        let (tn, tb) = bytes_of("transformer", &cfg.transformer_ref())?;
        let (mn, mb) = bytes_of("merge_builder", &cfg.merge_builder_ref())?;
        Ok(Components {
            validator: Validator::new(&host, &vn, &vb, limits.clone())?,
            transformer: Transformer::new(&host, &tn, &tb, limits.clone())?,
            merge_builder: MergeBuilder::new(&host, &mn, &mb, limits)?,
        })
    }
}
