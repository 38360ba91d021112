//! WASI capability grants: a component that imports WASI loads only with the grants it
//! needs, and then runs with them. The component is the JavaScript example
//! `freshness.js` (functions/examples/js-validator), built with the JS engine's WASI
//! features on, so it imports clocks, random, stdio and filesystem interfaces.

use std::path::PathBuf;

use floe_host::types::{Batch, Event, Verdict};
use floe_host::{Capability, Grants, Host, HostError, Limits, Validator};

fn freshness() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/components/examples/wasi/example_js_freshness_validator.wasm");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}; run `make components`", p.display()))
}

fn limits(grants: &[Capability]) -> Limits {
    Limits {
        wasi: Grants::new(grants.iter().copied()),
        ..Limits::default()
    }
}

fn change(id: i64, ts_ms: i64) -> Event {
    let value = serde_json::json!({"op": "c", "before": null, "after": {"id": id},
        "source": {"schema": "public", "table": "events", "ts_ms": ts_ms, "lsn": id}});
    Event {
        topic: 0,
        partition: 0,
        offset: id,
        timestamp_ms: None,
        key: Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
        value: Some(serde_json::to_vec(&value).unwrap()),
    }
}

#[test]
fn a_wasi_component_loads_only_with_the_capabilities_it_imports() {
    // One compile (the component embeds a JS engine), then the cache serves the rest.
    let cache = std::env::temp_dir().join(format!("floe-wasi-test-{}", std::process::id()));
    let host = Host::new(false).unwrap().with_cache(cache.clone());
    let wasm = freshness();

    let message = |r: Result<Validator, HostError>| match r {
        Err(HostError::Load { message, .. }) => message,
        Err(e) => panic!("expected a load error, got {e}"),
        Ok(_) => panic!("loaded without the grants it needs"),
    };
    let none = message(Validator::new(&host, "fresh.wasm", &wasm, limits(&[])));
    assert!(
        none.contains("wasi:clocks/") && none.contains("[components.grants.\"fresh.wasm\"]"),
        "{none}"
    );
    let needed = ["\"clocks\"", "\"filesystem\"", "\"random\"", "\"stdio\""];
    for c in needed {
        assert!(none.contains(c), "{c} missing from: {none}");
    }
    let some = message(Validator::new(
        &host,
        "fresh.wasm",
        &wasm,
        limits(&[Capability::Clocks, Capability::Random]),
    ));
    assert!(
        some.contains("\"stdio\"") && !some.contains("(capability clocks)"),
        "only the missing ones are named: {some}"
    );

    let granted = [
        Capability::Clocks,
        Capability::Random,
        Capability::Stdio,
        Capability::Filesystem,
    ];
    let v = Validator::new(&host, "fresh.wasm", &wasm, limits(&granted)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batch = Batch {
        topics: vec!["dbz.public.events".into()],
        events: vec![change(1, now - 1_000), change(2, now + 3_600_000)],
    };
    let verdicts = v.validate(&batch).unwrap();
    assert!(
        matches!(verdicts[0], Verdict::Ok),
        "a change from a second ago: {:?}",
        verdicts[0]
    );
    match &verdicts[1] {
        Verdict::Rejected(r) => assert!(
            r.starts_with("js-freshness: public.events:") && r.contains("in the future"),
            "{r}"
        ),
        Verdict::Ok => panic!("a change an hour ahead of the clock was accepted"),
    }
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn grants_change_nothing_for_a_component_that_imports_nothing() {
    // The rules example imports nothing: every grant leaves it as it was.
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/components/examples/example_rules_validator.wasm");
    let wasm = std::fs::read(&p).unwrap();
    let host = Host::new(false).unwrap();
    let v = Validator::new(&host, "rules", &wasm, limits(&Capability::ALL)).unwrap();
    let batch = Batch {
        topics: vec!["dbz.public.events".into()],
        events: vec![change(1, 0)],
    };
    let verdicts = v.validate(&batch).unwrap();
    assert!(matches!(verdicts[..], [Verdict::Ok]), "{verdicts:?}");
}

#[test]
fn a_component_that_prints_too_much_is_cut_not_trapped() {
    // chatty.js prints `print` bytes per event: 4 MiB in one call, far beyond the 64 KiB
    // floe keeps of a call's output.
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/components/examples/wasi/example_js_chatty_validator.wasm");
    let wasm =
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}; run `make components`", p.display()));
    let host = Host::new(false).unwrap();
    let granted = [
        Capability::Clocks,
        Capability::Random,
        Capability::Stdio,
        Capability::Filesystem,
    ];
    let v = Validator::new(&host, "chatty.wasm", &wasm, limits(&granted)).unwrap();
    let loud = Event {
        value: Some(br#"{"print": 4194304}"#.to_vec()),
        ..change(1, 0)
    };
    let batch = Batch {
        topics: vec!["dbz.public.events".into()],
        events: vec![loud, change(2, 0)],
    };
    let verdicts = v
        .validate(&batch)
        .expect("printing too much is not a failure");
    assert!(
        matches!(verdicts[..], [Verdict::Ok, Verdict::Ok]),
        "{verdicts:?}"
    );
    // And the next call runs as well.
    assert_eq!(v.validate(&batch).unwrap().len(), 2);
}
