//! Loads the configured components (built-in or from files) once per process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use floe_host::{Host, HostError, Limits, MergeBuilder, Transformer, Validator};

use crate::config::{ComponentRef, ComponentsConfig, OnFailure};

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

/// The components of a pipeline, compiled and ready to instantiate per batch.
pub struct Components {
    /// Validator chains: the configured `chains` in order, then the default chain
    /// (`validator` alone), which matches every topic.
    pub chains: Vec<Chain>,
    pub transformer: Transformer,
    pub merge_builder: MergeBuilder,
    /// What a failed component call does to the run.
    pub on_failure: OnFailure,
}

/// An ordered chain of validators for the topics its pattern matches.
pub struct Chain {
    /// `None`: every topic (the default chain).
    pub topics: Option<Regex>,
    pub validators: Vec<Arc<Validator>>,
}

impl Components {
    /// Index in [`Components::chains`] of the chain validating `topic`.
    pub fn chain_for(&self, topic: &str) -> usize {
        self.chains
            .iter()
            .position(|c| c.topics.as_ref().is_none_or(|re| re.is_match(topic)))
            .unwrap_or(self.chains.len() - 1)
    }
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

/// The engine (with the precompiled-component cache, when on) and the per-call limits
/// `cfg` asks for; `fuel` turns on fuel metering.
pub fn sandbox(cfg: &ComponentsConfig, fuel: bool) -> Result<(Host, Limits), HostError> {
    let mut host = Host::new(fuel)?;
    if let Some(dir) = cfg.cache_path() {
        host = host.with_cache(dir);
    }
    let limits = Limits {
        max_memory_bytes: cfg.max_memory_mib * 1024 * 1024,
        deadline: Duration::from_millis(cfg.deadline_ms),
        fuel: cfg.fuel,
    };
    Ok((host, limits))
}

impl Components {
    /// Compiles all three components with the configured sandbox limits.
    pub fn load(cfg: &ComponentsConfig) -> Result<Components, HostError> {
        let (host, limits) = sandbox(cfg, cfg.fuel.is_some())?;
        // Each validator is compiled once, however many chains use it.
        let mut loaded: HashMap<ComponentRef, Arc<Validator>> = HashMap::new();
        let mut validator = |r: ComponentRef| -> Result<Arc<Validator>, HostError> {
            if let Some(v) = loaded.get(&r) {
                return Ok(v.clone());
            }
            let (name, bytes) = bytes_of("validator", &r)?;
            let v = Arc::new(Validator::new(&host, &name, &bytes, limits.clone())?);
            loaded.insert(r, v.clone());
            Ok(v)
        };
        let mut chains = Vec::new();
        for c in &cfg.chains {
            let topics = Regex::new(&c.topics).map_err(|e| HostError::Load {
                component: format!("chain {}", c.topics),
                message: e.to_string(),
            })?;
            let validators = c
                .validator_refs()
                .into_iter()
                .map(&mut validator)
                .collect::<Result<_, _>>()?;
            chains.push(Chain {
                topics: Some(topics),
                validators,
            });
        }
        chains.push(Chain {
            topics: None,
            validators: vec![validator(cfg.validator_ref())?],
        });
        let (tn, tb) = bytes_of("transformer", &cfg.transformer_ref())?;
        let (mn, mb) = bytes_of("merge_builder", &cfg.merge_builder_ref())?;
        Ok(Components {
            chains,
            transformer: Transformer::new(&host, &tn, &tb, limits.clone())?,
            merge_builder: MergeBuilder::new(&host, &mn, &mb, limits)?,
            on_failure: cfg.on_failure,
        })
    }
}

impl Components {
    /// Loads the components of `cfg` and checks each validator answers a probe batch
    /// within the contract (one verdict per event), so a replacement that loads but
    /// cannot serve is refused before it replaces anything.
    pub fn load_checked(cfg: &ComponentsConfig) -> Result<Components, HostError> {
        let c = Components::load(cfg)?;
        let probe = floe_host::types::Batch {
            topics: vec!["dbz.public.floe_probe".into()],
            events: vec![floe_host::types::Event {
                topic: 0,
                partition: 0,
                offset: 0,
                timestamp_ms: None,
                key: Some(br#"{"id":1}"#.to_vec()),
                value: Some(
                    br#"{"op":"c","before":null,"after":{"id":1},"source":{"schema":"public","table":"floe_probe","lsn":1}}"#
                        .to_vec(),
                ),
            }],
        };
        for chain in &c.chains {
            for v in &chain.validators {
                v.validate(&probe)?;
            }
        }
        Ok(c)
    }
}

/// The component files a configuration names (built-ins have none), for change
/// detection.
pub fn files_of(cfg: &ComponentsConfig) -> Vec<std::path::PathBuf> {
    let mut refs = vec![
        cfg.validator_ref(),
        cfg.transformer_ref(),
        cfg.merge_builder_ref(),
    ];
    for c in &cfg.chains {
        refs.extend(c.validator_refs());
    }
    let mut files: Vec<std::path::PathBuf> = refs
        .into_iter()
        .filter_map(|r| match r {
            ComponentRef::Path(p) => Some(p),
            ComponentRef::Builtin => None,
        })
        .collect();
    files.sort();
    files.dedup();
    files
}
