//! Which target table each source table's rows go to, and the guarantee that two
//! sources never share one by accident.
//!
//! A source is a table read from a topic: the same `public.orders` of two captured
//! databases (two Debezium connectors, two topic prefixes) are two sources. The target
//! is `sink.snowflake.tables[schema.table or topic]` when mapped explicitly (used as
//! written), else the `sink.snowflake.table_name` template (default `{topic}`, so
//! `dbz.public.orders` loads into `DBZ_PUBLIC_ORDERS`, as the Snowflake Kafka connector
//! and Debezium's JDBC sink name tables) in the configured identifier case.
//!
//! The first source seen for a target owns it for the run; rows and truncates of any
//! other source that maps to the same target are refused (dead-lettered with category
//! `schema`) unless `sink.snowflake.shared_targets` names the target: then its sources
//! are merged into it on purpose. Explicit mappings that collide are refused at start.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{IdentifierCase, SnowflakeConfig};

/// Placeholders of `sink.snowflake.table_name`.
pub const PLACEHOLDERS: [&str; 4] = ["{topic}", "{prefix}", "{schema}", "{table}"];

/// The target name parts (database, schema, table) of `source_table` (`schema.table`)
/// read from `topic`.
pub fn target_for(cfg: &SnowflakeConfig, topic: &str, source_table: &str) -> Vec<String> {
    let table = match cfg
        .tables
        .get(source_table)
        .or_else(|| cfg.tables.get(topic))
    {
        Some(mapped) => mapped.clone(),
        None => {
            let name = render(&cfg.table_name, topic, source_table);
            match cfg.identifier_case {
                IdentifierCase::Upper => name.to_uppercase(),
                IdentifierCase::Preserve => name,
            }
        }
    };
    vec![cfg.database.clone(), cfg.schema.clone(), table]
}

/// The table name `template` gives: `{topic}` is the topic with `.` as `_`,
/// `{schema}` and `{table}` the source table's parts, `{prefix}` the topic without its
/// last two dot-separated segments (Debezium's `topic.prefix`) with `.` as `_`.
pub fn render(template: &str, topic: &str, source_table: &str) -> String {
    let (schema, table) = source_table.split_once('.').unwrap_or(("", source_table));
    let prefix = {
        let mut parts: Vec<&str> = topic.split('.').collect();
        parts.truncate(parts.len().saturating_sub(2));
        parts.join("_")
    };
    template
        .replace("{topic}", &topic.replace('.', "_"))
        .replace("{prefix}", &prefix)
        .replace("{schema}", schema)
        .replace("{table}", table)
}

/// The source that owns a target this run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    topic: Arc<str>,
    table: String,
}

/// Target resolution with ownership (see the module docs).
#[derive(Debug)]
pub struct Targets {
    cfg: SnowflakeConfig,
    owners: HashMap<Vec<String>, Source>,
    resolved: HashMap<(Arc<str>, String), Vec<String>>,
}

impl Targets {
    pub fn new(cfg: &SnowflakeConfig) -> Targets {
        Targets {
            cfg: cfg.clone(),
            owners: HashMap::new(),
            resolved: HashMap::new(),
        }
    }

    fn is_shared(&self, target: &[String]) -> bool {
        let table = target.last().map(String::as_str).unwrap_or_default();
        self.cfg
            .shared_targets
            .iter()
            .any(|s| s.eq_ignore_ascii_case(table))
    }

    /// The target of `table` read from `topic`, or why its rows may not load there.
    pub fn resolve(&mut self, topic: &Arc<str>, table: &str) -> Result<Vec<String>, String> {
        let key = (topic.clone(), table.to_owned());
        let target = match self.resolved.get(&key) {
            Some(t) => t.clone(),
            None => {
                let t = target_for(&self.cfg, topic, table);
                self.resolved.insert(key, t.clone());
                t
            }
        };
        let source = Source {
            topic: topic.clone(),
            table: table.to_owned(),
        };
        match self.owners.get(&target) {
            None => {
                self.owners.insert(target.clone(), source);
                Ok(target)
            }
            Some(owner) if *owner == source || self.is_shared(&target) => Ok(target),
            Some(owner) => Err(format!(
                "schema: table {table} (topic {topic}) maps to target {}, which already \
                 receives table {} (topic {}): two sources are never merged into one \
                 table unless sink.snowflake.shared_targets names it; give one of them \
                 its own target (sink.snowflake.tables or sink.snowflake.table_name)",
                target.join("."),
                owner.table,
                owner.topic
            )),
        }
    }
}

/// Explicit mappings that send two sources to one target without `shared_targets`.
pub fn check_mappings(cfg: &SnowflakeConfig) -> Result<(), String> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (source, target) in &cfg.tables {
        if let Some(other) = seen.insert(target.as_str(), source.as_str())
            && !cfg
                .shared_targets
                .iter()
                .any(|s| s.eq_ignore_ascii_case(target))
        {
            return Err(format!(
                "sink.snowflake.tables maps both {other:?} and {source:?} to {target:?}; \
                 list {target:?} in sink.snowflake.shared_targets if they are to share it"
            ));
        }
    }
    if !PLACEHOLDERS.iter().any(|p| cfg.table_name.contains(p)) {
        return Err(format!(
            "sink.snowflake.table_name {:?} has none of {}: every table would load into one",
            cfg.table_name,
            PLACEHOLDERS.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(t: &str) -> Arc<str> {
        Arc::from(t)
    }

    #[test]
    fn names_follow_the_template_case_and_mapping() {
        let mut cfg = SnowflakeConfig::default();
        assert_eq!(
            target_for(&cfg, "dbz.public.customers", "public.customers"),
            vec!["FLOE", "CDC", "DBZ_PUBLIC_CUSTOMERS"]
        );
        cfg.table_name = "{table}".into();
        assert_eq!(
            target_for(&cfg, "dbz.public.customers", "public.customers")[2],
            "CUSTOMERS"
        );
        cfg.table_name = "{prefix}__{schema}_{table}".into();
        assert_eq!(
            target_for(&cfg, "a.b.archive.Orders", "archive.Orders")[2],
            "A_B__ARCHIVE_ORDERS"
        );
        cfg.identifier_case = IdentifierCase::Preserve;
        assert_eq!(
            target_for(&cfg, "x.public.Orders", "public.Orders")[2],
            "x__public_Orders"
        );
        cfg.tables
            .insert("public.orders".into(), "ORDERS_V2".into());
        cfg.tables.insert("dbz.public.items".into(), "Items".into());
        assert_eq!(
            target_for(&cfg, "x.public.orders", "public.orders")[2],
            "ORDERS_V2"
        );
        assert_eq!(
            target_for(&cfg, "dbz.public.items", "public.items")[2],
            "Items"
        );
    }

    #[test]
    fn the_default_keeps_schemas_and_databases_apart() {
        let cfg = SnowflakeConfig::default();
        let mut t = Targets::new(&cfg);
        let a = t
            .resolve(&topic("dbz.public.orders"), "public.orders")
            .unwrap();
        let b = t
            .resolve(&topic("dbz.archive.orders"), "archive.orders")
            .unwrap();
        let c = t
            .resolve(&topic("db2.public.orders"), "public.orders")
            .unwrap();
        assert!(a != b && b != c && a != c, "{a:?} {b:?} {c:?}");
    }

    #[test]
    fn a_second_source_for_one_target_is_refused_unless_shared() {
        let mut cfg = SnowflakeConfig {
            table_name: "{table}".into(),
            ..SnowflakeConfig::default()
        };
        let mut t = Targets::new(&cfg);
        let first = t
            .resolve(&topic("dbz.public.orders"), "public.orders")
            .unwrap();
        assert_eq!(
            t.resolve(&topic("dbz.public.orders"), "public.orders")
                .unwrap(),
            first
        );
        let e = t
            .resolve(&topic("dbz.archive.orders"), "archive.orders")
            .unwrap_err();
        assert!(
            e.starts_with("schema: ")
                && e.contains("archive.orders")
                && e.contains("public.orders"),
            "{e}"
        );
        // Also the same table name of a second database (another topic prefix).
        assert!(
            t.resolve(&topic("db2.public.orders"), "public.orders")
                .is_err()
        );
        cfg.shared_targets = vec!["orders".into()];
        let mut t = Targets::new(&cfg);
        t.resolve(&topic("dbz.public.orders"), "public.orders")
            .unwrap();
        t.resolve(&topic("dbz.archive.orders"), "archive.orders")
            .unwrap();
    }

    #[test]
    fn colliding_explicit_mappings_are_refused_at_start() {
        let mut cfg = SnowflakeConfig::default();
        check_mappings(&cfg).unwrap();
        cfg.tables.insert("public.orders".into(), "ORDERS".into());
        cfg.tables.insert("archive.orders".into(), "ORDERS".into());
        let e = check_mappings(&cfg).unwrap_err();
        assert!(e.contains("shared_targets"), "{e}");
        cfg.shared_targets = vec!["ORDERS".into()];
        check_mappings(&cfg).unwrap();
        cfg.table_name = "EVERYTHING".into();
        assert!(check_mappings(&cfg).is_err());
    }
}
