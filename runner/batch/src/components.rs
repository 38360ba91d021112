//! Loads the configured components (built-in or from files) once per process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use floe_host::{
    Host, HostError, Limits, MergeBuilder, RowTransform, Transformer, ValidatingTransformer,
    Validator,
};

use crate::config::{ComponentRef, ComponentsConfig, OnFailure};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_components.rs"));
}

/// The built-in components' bytes, by kind.
pub fn builtin_bytes(kind: &str) -> &'static [u8] {
    match kind {
        "validator" => builtin::VALIDATOR,
        "transformer" => builtin::TRANSFORMER,
        "merge_builder" => builtin::MERGE_BUILDER,
        _ => &[],
    }
}

/// The components of a pipeline, compiled and ready to instantiate per batch.
pub struct Components {
    /// The configured `chains` in order, then the default chain (the pipeline's
    /// `validator`, `transformer` and `transforms`), which matches every topic.
    pub chains: Vec<Chain>,
    pub merge_builder: MergeBuilder,
    /// What a failed component call does to the run.
    pub on_failure: OnFailure,
    /// Most component calls at once (`components.parallelism`, resolved: at least 1).
    pub parallelism: usize,
}

/// The components for the topics a pattern matches: validators in order, the
/// transformer, then row transforms in order.
pub struct Chain {
    /// `None`: every topic (the default chain).
    pub topics: Option<Regex>,
    pub validators: Vec<Arc<Validator>>,
    pub transformer: Arc<Transformer>,
    pub transforms: Vec<Arc<RowTransform>>,
    /// When the validators are exactly the built-in validator and the transformer is
    /// the built-in one: both in one call (`validate-and-transform`), each envelope
    /// parsed once. The host then calls it instead of `validators` and `transformer`.
    pub fused: Option<Arc<ValidatingTransformer>>,
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

pub fn bytes_of(kind: &str, r: &ComponentRef) -> Result<(String, Vec<u8>), HostError> {
    match r {
        ComponentRef::Builtin => {
            let b = builtin_bytes(kind);
            if !["validator", "transformer", "merge_builder"].contains(&kind) {
                return Err(HostError::Load {
                    component: format!("builtin {kind}"),
                    message: format!("there is no built-in {kind}; name a component file"),
                });
            }
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
    if let Some(dir) = &cfg.precompiled_dir {
        host = host.with_precompiled(dir.clone());
    }
    let limits = Limits {
        max_memory_bytes: cfg.max_memory_mib * 1024 * 1024,
        deadline: Duration::from_millis(cfg.deadline_ms),
        fuel: cfg.fuel,
        wasi: floe_host::Grants::default(),
    };
    Ok((host, limits))
}

/// Compiles components with the configured limits and grants.
struct Loader<'a> {
    host: &'a Host,
    limits: &'a Limits,
    cfg: &'a ComponentsConfig,
}

impl Loader<'_> {
    /// The sandbox limits with the WASI capabilities granted to `r`.
    fn limits_of(&self, r: &ComponentRef) -> Limits {
        Limits {
            wasi: self.cfg.grants_of(r),
            ..self.limits.clone()
        }
    }

    /// Component `r` of `kind`: from `cache` when an earlier chain named it (each file
    /// is compiled once), else compiled with `new`.
    fn load<T>(
        &self,
        cache: &mut HashMap<ComponentRef, Arc<T>>,
        kind: &str,
        r: ComponentRef,
        new: fn(&Host, &str, &[u8], Limits) -> Result<T, HostError>,
    ) -> Result<Arc<T>, HostError> {
        if let Some(c) = cache.get(&r) {
            return Ok(c.clone());
        }
        let (name, bytes) = bytes_of(kind, &r)?;
        let c = Arc::new(new(self.host, &name, &bytes, self.limits_of(&r))?);
        cache.insert(r, c.clone());
        Ok(c)
    }
}

impl Components {
    /// Compiles every configured component with the configured sandbox limits.
    pub fn load(cfg: &ComponentsConfig) -> Result<Components, HostError> {
        let (host, limits) = sandbox(cfg, cfg.fuel.is_some())?;
        let loader = Loader {
            host: &host,
            limits: &limits,
            cfg,
        };
        let (mut compiled_validators, mut compiled_transformers, mut compiled_transforms) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        let mut chains = Vec::new();
        let configured = cfg.chains.len();
        for (i, c) in cfg.all_chains().iter().enumerate() {
            let topics = if i < configured {
                Some(Regex::new(&c.topics).map_err(|e| HostError::Load {
                    component: format!("chain {}", c.topics),
                    message: e.to_string(),
                })?)
            } else {
                None
            };
            let validator_refs = c.validator_refs(cfg);
            let builtins_only = validator_refs == [ComponentRef::Builtin]
                && c.transformer_ref(cfg) == ComponentRef::Builtin;
            let validators = validator_refs
                .into_iter()
                .map(|r| loader.load(&mut compiled_validators, "validator", r, Validator::new))
                .collect::<Result<_, _>>()?;
            let transformer = loader.load(
                &mut compiled_transformers,
                "transformer",
                c.transformer_ref(cfg),
                Transformer::new,
            )?;
            let transforms = c
                .transform_refs(cfg)
                .into_iter()
                .map(|r| {
                    loader.load(
                        &mut compiled_transforms,
                        "row transform",
                        r,
                        RowTransform::new,
                    )
                })
                .collect::<Result<_, _>>()?;
            let fused = if builtins_only {
                let fused = transformer.validating().ok_or_else(|| HostError::Load {
                    component: transformer.name().to_owned(),
                    message: "the built-in transformer does not export validate-and-transform: run `make components` (functions/build.sh), then rebuild".into(),
                })?;
                Some(Arc::new(fused))
            } else {
                None
            };
            chains.push(Chain {
                topics,
                validators,
                transformer,
                transforms,
                fused,
            });
        }
        let merge_ref = cfg.merge_builder_ref();
        let (mn, mb) = bytes_of("merge_builder", &merge_ref)?;
        let merge_limits = loader.limits_of(&merge_ref);
        Ok(Components {
            chains,
            merge_builder: MergeBuilder::new(&host, &mn, &mb, merge_limits)?,
            on_failure: cfg.on_failure,
            parallelism: cfg.parallelism(),
        })
    }
}

impl Components {
    /// Loads the components of `cfg` and checks each chain answers a probe batch within
    /// the contract (validators: one verdict per event; transformer and row transforms:
    /// a checked answer), so a replacement that loads but cannot serve is refused before
    /// it replaces anything.
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
            if let Some(fused) = &chain.fused {
                fused.validate_and_transform(&probe)?;
            }
            for v in &chain.validators {
                v.validate(&probe)?;
            }
            let mut rows = chain.transformer.transform(&probe)?;
            for t in &chain.transforms {
                rows = t.transform_rows(&rows)?;
            }
        }
        Ok(c)
    }
}

/// The component files a configuration names (built-ins have none), for change
/// detection.
pub fn files_of(cfg: &ComponentsConfig) -> Vec<std::path::PathBuf> {
    let mut refs = vec![cfg.merge_builder_ref()];
    for c in cfg.all_chains() {
        refs.extend(c.validator_refs(cfg));
        refs.push(c.transformer_ref(cfg));
        refs.extend(c.transform_refs(cfg));
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

/// Compiles every component `cfg` names (the built-ins and the files) ahead of time
/// for this architecture's baseline CPU into `dir`, where
/// `components.precompiled_dir` finds them. Returns the files written.
pub fn precompile(
    cfg: &ComponentsConfig,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, HostError> {
    let mut sources: Vec<(String, Vec<u8>)> = Vec::new();
    for kind in ["validator", "transformer", "merge_builder"] {
        sources.push(bytes_of(kind, &ComponentRef::Builtin)?);
    }
    for file in files_of(cfg) {
        sources.push(bytes_of("component", &ComponentRef::Path(file))?);
    }
    std::fs::create_dir_all(dir).map_err(|e| HostError::Load {
        component: "precompile".into(),
        message: format!("cannot create {}: {e}", dir.display()),
    })?;
    let mut written = Vec::new();
    for (name, bytes) in sources {
        let compiled = floe_host::precompile_portable(cfg.fuel.is_some(), &bytes)?;
        let path = dir.join(floe_host::precompiled_name(&bytes));
        std::fs::write(&path, compiled).map_err(|e| HostError::Load {
            component: name.clone(),
            message: format!("cannot write {}: {e}", path.display()),
        })?;
        tracing::info!(component = %name, path = %path.display(), "precompiled");
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChainConfig;

    fn example(name: &str) -> String {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/components/examples")
            .join(format!("{name}.wasm"))
            .display()
            .to_string()
    }

    fn with_transform(transform: String) -> ComponentsConfig {
        ComponentsConfig {
            chains: vec![ChainConfig {
                topics: "customers".into(),
                validators: Some(vec![example("example_rules_validator")]),
                transforms: Some(vec![transform]),
                ..ChainConfig::default()
            }],
            cache: false,
            ..ComponentsConfig::default()
        }
    }

    #[test]
    fn chains_load_self_check_and_watch_every_file_they_name() {
        let cfg = with_transform(example("example_pii_transform"));
        let c = Components::load_checked(&cfg).unwrap();
        assert_eq!(c.chains.len(), 2, "the chain and the default one");
        assert_eq!(c.chain_for("dbz.public.customers"), 0);
        assert_eq!(c.chain_for("dbz.public.orders"), 1);
        assert_eq!(c.chains[0].transforms.len(), 1);
        assert!(c.chains[1].transforms.is_empty());
        assert!(
            c.chains[0].fused.is_none(),
            "a chain with a user validator calls its components one by one"
        );
        assert!(
            c.chains[1].fused.is_some(),
            "the built-ins' chain calls validate-and-transform"
        );
        assert!(
            Arc::ptr_eq(&c.chains[0].transformer, &c.chains[1].transformer),
            "the built-in transformer is compiled once for both chains"
        );
        let watched = files_of(&cfg);
        assert_eq!(watched.len(), 2, "{watched:?}");

        // A validator named as a transform does not load: a reload would keep the
        // running components.
        let wrong = with_transform(example("example_rules_validator"));
        match Components::load_checked(&wrong) {
            Err(HostError::Load { component, .. }) => {
                assert!(component.ends_with("example_rules_validator.wasm"))
            }
            Err(other) => panic!("expected a load error, got {other}"),
            Ok(_) => panic!("a validator loaded as a row transform"),
        }
    }
}
