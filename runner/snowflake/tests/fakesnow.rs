//! Round trip of every column type through a running fakesnow server (`fakesnow -s`).
//!
//! Ignored by default; run with the server's URL:
//! `FLOE_SNOWFLAKE_URL=http://127.0.0.1:17080 cargo test -p floe-snowflake -- --include-ignored`

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floe_snowflake::{Auth, Bind, Client, ConnectOptions, Error, Secret};

fn url() -> String {
    std::env::var("FLOE_SNOWFLAKE_URL")
        .expect("FLOE_SNOWFLAKE_URL must point at a running fakesnow server (fakesnow -s -p PORT)")
}

fn options(database: Option<&str>, auth: Auth) -> ConnectOptions {
    ConnectOptions {
        account_url: url(),
        account: "floe-test".into(),
        user: "floe".into(),
        auth,
        database: database.map(str::to_owned),
        schema: database.map(|_| "IT".to_owned()),
        warehouse: None,
        role: None,
        request_timeout: Duration::from_secs(60),
        session_parameters: Default::default(),
    }
}

fn password() -> Auth {
    Auth::Password(Secret::new("unused-by-fakesnow"))
}

/// A database of its own for each run, so reruns against one server do not collide.
async fn fresh_database() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("FLOE_IT_{}_{nanos}", std::process::id());
    let admin = Client::connect(options(None, password())).await.unwrap();
    admin
        .execute(&format!("CREATE DATABASE {name}"), &[])
        .await
        .unwrap();
    admin
        .execute(&format!("CREATE SCHEMA {name}.IT"), &[])
        .await
        .unwrap();
    admin.close().await.unwrap();
    name
}

fn text(values: &[Option<&str>]) -> Vec<Bind> {
    values
        .iter()
        .map(|v| match v {
            Some(v) => Bind::text(*v),
            None => Bind::null(),
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs fakesnow: run via make test"]
async fn every_type_round_trips_through_fakesnow() {
    let database = fresh_database().await;
    let client = Client::connect(options(Some(&database), password()))
        .await
        .unwrap();
    client
        .execute(
            "CREATE TABLE all_types (
                id NUMBER(38,0), big NUMBER(38,0), amount NUMBER(12,2), ratio FLOAT,
                flag BOOLEAN, day DATE, clock TIME, at_ntz TIMESTAMP_NTZ, at_tz TIMESTAMP_TZ,
                doc VARIANT, list ARRAY, bytes BINARY, label VARCHAR)",
            &[],
        )
        .await
        .unwrap();

    let insert = "INSERT INTO all_types SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, \
                  PARSE_JSON(?), PARSE_JSON(?), TO_BINARY(?, 'HEX'), ?";
    let rows = [
        [
            Some("1"),
            Some("9007199254740993"),
            Some("-12345.67"),
            Some("1.5"),
            Some("true"),
            Some("2024-01-02"),
            Some("12:34:56.789"),
            Some("2024-01-02 03:04:05.123456"),
            Some("2024-01-02 03:04:05.123456+02:00"),
            Some(r#"{"x": [1, 2.5, "é"], "nested": {"k": null}}"#),
            Some(r#"[1, "a", true]"#),
            Some("DEADBEEF"),
            Some("héllo ✓ 日本語 🚀 'quoted'"),
        ],
        [
            Some("2"),
            Some("-9223372036854775808"),
            Some("1"),
            Some("0.1"),
            Some("false"),
            Some("1969-12-31"),
            Some("00:00:00"),
            Some("1969-12-31 23:59:59.5"),
            Some("2000-02-29 23:30:00-01:00"),
            Some(r#""just a string""#),
            Some("[]"),
            Some(""),
            Some(""),
        ],
        [
            Some("3"),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ],
    ];
    for row in &rows {
        let result = client.execute(insert, &text(row)).await.unwrap();
        assert_eq!(result.rows_inserted, Some(1));
        assert_eq!(result.rows_affected, Some(1));
        assert!(result.query_id.is_some());
    }

    let result = client
        .execute("SELECT * FROM all_types ORDER BY id", &[])
        .await
        .unwrap();
    let names: Vec<&str> = result.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ID", "BIG", "AMOUNT", "RATIO", "FLAG", "DAY", "CLOCK", "AT_NTZ", "AT_TZ", "DOC",
            "LIST", "BYTES", "LABEL"
        ]
    );
    let amount = &result.columns[result.column_index("amount").unwrap()];
    assert_eq!(
        (amount.type_name.as_str(), amount.scale),
        ("FIXED", Some(2))
    );
    assert_eq!(result.rows_affected, None);

    let s = |v: &str| Some(v.to_owned());
    let expected = vec![
        vec![
            s("1"),
            s("9007199254740993"),
            s("-12345.67"),
            s("1.5"),
            s("true"),
            s("2024-01-02"),
            s("12:34:56.789000000"),
            s("2024-01-02 03:04:05.123456000"),
            s("2024-01-02 01:04:05.123456000+00:00"),
            s(r#"{"x":[1,2.5,"é"],"nested":{"k":null}}"#),
            s(r#"[1,"a",true]"#),
            s("deadbeef"),
            s("héllo ✓ 日本語 🚀 'quoted'"),
        ],
        vec![
            s("2"),
            s("-9223372036854775808"),
            s("1.00"),
            s("0.1"),
            s("false"),
            s("1969-12-31"),
            s("00:00:00.000000000"),
            s("1969-12-31 23:59:59.500000000"),
            s("2000-03-01 00:30:00.000000000+00:00"),
            s(r#""just a string""#),
            s("[]"),
            s(""),
            s(""),
        ],
        {
            let mut nulls = vec![None; 13];
            nulls[0] = s("3");
            nulls
        },
    ];
    for (got, want) in result.rows.iter().zip(&expected) {
        for ((column, got), want) in result.columns.iter().zip(got).zip(want) {
            assert_eq!(got, want, "column {}", column.name);
        }
    }
    assert_eq!(result.rows.len(), 3);

    // Binds in a WHERE clause, DML counts for UPDATE, MERGE and DELETE.
    let found = client
        .execute(
            "SELECT label FROM all_types WHERE big = ?",
            &[Bind::text("9007199254740993")],
        )
        .await
        .unwrap();
    assert_eq!(found.rows, vec![vec![s("héllo ✓ 日本語 🚀 'quoted'")]]);
    let updated = client
        .execute(
            "UPDATE all_types SET label = ? WHERE id >= ?",
            &[
                Bind::text("updated"),
                Bind::typed("FIXED", Some("2".into())),
            ],
        )
        .await
        .unwrap();
    assert_eq!(updated.rows_updated, Some(2));
    assert_eq!(updated.rows_affected, Some(2));
    let merged = client
        .execute(
            "MERGE INTO all_types t USING (SELECT column1 AS id FROM VALUES (?), (?)) s \
             ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET label = 'merged' \
             WHEN NOT MATCHED THEN INSERT (id, label) VALUES (s.id, 'new')",
            &[Bind::text("3"), Bind::text("4")],
        )
        .await
        .unwrap();
    assert_eq!(merged.rows_inserted, Some(1));
    assert_eq!(merged.rows_updated, Some(1));
    assert_eq!(merged.rows_affected, Some(2));
    let deleted = client
        .execute("DELETE FROM all_types WHERE id > ?", &[Bind::text("2")])
        .await
        .unwrap();
    assert_eq!(deleted.rows_deleted, Some(2));
    let empty = client
        .execute("SELECT * FROM all_types WHERE id > 100", &[])
        .await
        .unwrap();
    assert!(empty.rows.is_empty());
    assert_eq!(empty.columns.len(), 13);

    // A compilation error is a non-retryable SQL error with Snowflake's code.
    match client.execute("SELECT * FROM no_such_table", &[]).await {
        Err(e @ Error::Sql { .. }) => {
            assert!(!e.is_retryable());
            let Error::Sql { code, .. } = &e else {
                unreachable!()
            };
            assert_eq!(code, "002003");
        }
        other => panic!("unexpected {other:?}"),
    }

    client.close().await.unwrap();
    assert!(matches!(
        client.execute("SELECT 1", &[]).await,
        Err(Error::Closed)
    ));
}

/// fakesnow runs one statement at a time per session (a second concurrent one fails with
/// 002002 "connection is busy"), so concurrency there means one client per task.
#[tokio::test]
#[ignore = "needs fakesnow: run via make test"]
async fn key_pair_login_and_parallel_sessions() {
    let database = fresh_database().await;
    let key_pair = || Auth::KeyPair {
        private_key_pem: Secret::new(include_str!("../testdata/jwt_test_key.p8")),
    };
    let client = Client::connect(options(Some(&database), key_pair()))
        .await
        .unwrap();
    client
        .execute("CREATE TABLE numbers (n NUMBER(38,0))", &[])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let opts = options(Some(&database), key_pair());
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(opts).await.unwrap();
            for n in [worker * 2, worker * 2 + 1] {
                let result = client
                    .execute(
                        "INSERT INTO numbers VALUES (?)",
                        &[Bind::text(n.to_string())],
                    )
                    .await
                    .unwrap();
                assert_eq!(result.rows_inserted, Some(1));
            }
            client.close().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let sum = client
        .execute("SELECT SUM(n) AS total, COUNT(*) AS c FROM numbers", &[])
        .await
        .unwrap();
    assert_eq!(sum.rows, vec![vec![Some("28".into()), Some("8".into())]]);
    client.close().await.unwrap();
}
