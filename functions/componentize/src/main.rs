//! `floe-componentize <out-dir> <core.wasm | component.wasm>...`: the build step that
//! turns the guests' `wasm32-unknown-unknown` core modules into components
//! (`wit-component`, the library behind `wasm-tools component new`), validates them, and
//! checks that none imports anything a host has to provide: floe's host instantiates
//! components with an empty linker (no WASI), so a guest that pulled in an import (e.g.
//! through a dependency using `std::time` or `getrandom`) must fail the build, not the
//! runner.
//!
//! An input that already is a component (one built by another language's tool chain,
//! such as the JavaScript example's componentize-js) is not encoded again: it gets the
//! same validation and import check and is copied as is.
//!
//! The only imports allowed are type-only ones: the worlds `use` types from the
//! `floe:cdc/types` interface, which makes each component import that interface (an
//! instance with types and no functions) and the types themselves. Wasmtime needs no
//! definitions for those.
//!
//! `floe_validator.wasm` is written as `<out-dir>/validator.wasm` (the `floe_` prefix
//! is dropped), whichever kind of input it is. Outputs are only rewritten when their
//! bytes change, so a no-op build keeps their timestamps. Run by `functions/build.sh`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use wasmparser::component_types::{ComponentAnyTypeId, ComponentEntityType};
use wasmparser::types::Types;
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

const USAGE: &str = "usage: floe-componentize <out-dir> <core.wasm | component.wasm>...";

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), modules) = (args.next(), args.collect::<Vec<_>>()) else {
        bail!("{USAGE}");
    };
    if modules.is_empty() {
        bail!("{USAGE}");
    }
    let out_dir = PathBuf::from(out_dir);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for module in modules {
        componentize(Path::new(&module), &out_dir)?;
    }
    Ok(())
}

fn componentize(module: &Path, out_dir: &Path) -> Result<()> {
    let start = Instant::now();
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let input_kib = bytes.len().div_ceil(1024);
    let built = checked_component(module, bytes)?;
    let out = out_dir.join(output_name(module)?);
    let unchanged = std::fs::read(&out).is_ok_and(|old| old == built.component);
    if !unchanged {
        std::fs::write(&out, &built.component)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "{}: {} KiB ({}), no host imports ({} type-only), {}{:.1} ms",
        out.display(),
        built.component.len().div_ceil(1024),
        if built.encoded {
            format!("core module {input_kib} KiB")
        } else {
            "built as a component".to_owned()
        },
        built.imports.types_only.len(),
        if unchanged { "unchanged, " } else { "" },
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// A component that passed the checks.
#[derive(Debug)]
struct Checked {
    component: Vec<u8>,
    /// Encoded here from a core module (else the input was a component).
    encoded: bool,
    imports: Imports,
}

/// Encodes a core module into a component (a component is taken as is), validates it
/// and refuses it when it imports anything a host has to provide.
fn checked_component(module: &Path, bytes: Vec<u8>) -> Result<Checked> {
    let encoded = !Parser::is_component(&bytes);
    let component = if encoded {
        wit_component::ComponentEncoder::default()
            .module(&bytes)
            .with_context(|| {
                format!(
                    "{}: not a core module with component type metadata",
                    module.display()
                )
            })?
            .validate(true)
            .encode()
            .with_context(|| format!("{}: encoding the component", module.display()))?
    } else {
        bytes
    };
    let imports = component_imports(&component)
        .with_context(|| format!("{}: reading the component", module.display()))?;
    if !imports.host_provided.is_empty() {
        bail!(
            "{}: the component imports {} (floe components must import nothing a host has \
             to provide: floe's host links no WASI or other functions; remove the dependency \
             that needs them)",
            module.display(),
            imports.host_provided.join(", ")
        );
    }
    Ok(Checked {
        component,
        encoded,
        imports,
    })
}

/// `…/floe_merge_builder.wasm` -> `merge_builder.wasm`.
fn output_name(module: &Path) -> Result<String> {
    let stem = module
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{}: no UTF-8 file name", module.display()))?;
    Ok(format!(
        "{}.wasm",
        stem.strip_prefix("floe_").unwrap_or(stem)
    ))
}

/// The component's own (top-level) imports, split into what a host must provide and
/// what it need not. A world that `use`s types from an interface makes the component
/// import that interface and the types; when the interface holds only (non-resource)
/// types, nothing has to be defined for them (wasmtime's `Linker` ignores structural
/// type imports), so they do not count. Nested core modules' imports are satisfied
/// inside the component and are not looked at.
#[derive(Debug, Default, PartialEq, Eq)]
struct Imports {
    /// Functions, resources, modules, components, values, or instances holding any.
    host_provided: Vec<String>,
    /// Type-only imports.
    types_only: Vec<String>,
}

fn component_imports(component: &[u8]) -> Result<Imports> {
    let types = Validator::new_with_features(WasmFeatures::all()).validate_all(component)?;
    let mut names = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    names.push(import?.name.name.to_owned());
                }
            }
            // A plain core module (not componentized) imports here.
            Payload::ImportSection(reader) if depth == 0 => {
                for import in reader.into_imports() {
                    let import = import?;
                    names.push(format!("{}::{}", import.module, import.name));
                }
            }
            _ => {}
        }
    }
    let mut imports = Imports::default();
    for name in names {
        let needs_host = match types.component_item_for_import(&name) {
            Some(item) => needs_host(&types, &item.ty),
            None => true,
        };
        if needs_host {
            imports.host_provided.push(name);
        } else {
            imports.types_only.push(name);
        }
    }
    Ok(imports)
}

fn needs_host(types: &Types, ty: &ComponentEntityType) -> bool {
    match ty {
        ComponentEntityType::Type {
            created: ComponentAnyTypeId::Resource(_),
            ..
        } => true,
        ComponentEntityType::Type { .. } => false,
        ComponentEntityType::Instance(id) => types[*id]
            .exports
            .values()
            .any(|export| needs_host(types, &export.ty)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert_eq!(
            output_name(Path::new("a/floe_validator.wasm")).unwrap(),
            "validator.wasm"
        );
        assert_eq!(
            output_name(Path::new("floe_merge_builder.wasm")).unwrap(),
            "merge_builder.wasm"
        );
        assert_eq!(output_name(Path::new("other.wasm")).unwrap(), "other.wasm");
    }

    #[test]
    fn counts_top_level_imports_only() {
        // (component (import "f" (func)))
        let with_import = wat_component_with_import();
        let imports = component_imports(&with_import).unwrap();
        assert_eq!(imports.host_provided, vec!["f".to_owned()]);
        assert!(imports.types_only.is_empty());
        // An empty component.
        let empty = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        assert_eq!(component_imports(&empty).unwrap(), Imports::default());
    }

    #[test]
    fn a_component_is_checked_and_kept_as_is() {
        let empty = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let checked = checked_component(Path::new("empty.wasm"), empty.clone()).unwrap();
        assert_eq!(checked.component, empty);
        assert!(!checked.encoded);
        let err = checked_component(Path::new("f.wasm"), wat_component_with_import())
            .unwrap_err()
            .to_string();
        assert!(err.contains("the component imports f "), "{err}");
    }

    /// `(component (type (func)) (import "f" (func (type 0))))`, encoded by hand.
    fn wat_component_with_import() -> Vec<u8> {
        let mut c = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        // type section (id 7), 5 bytes: 1 type, func (0x40), 0 params, no result (0x01 0x00)
        c.extend([0x07, 0x05, 0x01, 0x40, 0x00, 0x01, 0x00]);
        // import section (id 10), 6 bytes: 1 import, name 0x00 "f", func (0x01) type 0
        c.extend([0x0a, 0x06, 0x01, 0x00, 0x01, b'f', 0x01, 0x00]);
        c
    }
}
