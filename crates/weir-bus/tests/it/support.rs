use serde_json::{Value as Json, json};

pub const TXN_SCHEMA: &str = r#"{
  "type": "record", "name": "CardTransaction", "namespace": "weir.test",
  "fields": [
    {"name": "user", "type": "string"},
    {"name": "merchant", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}
  ]
}"#;

pub use weir_test_support::Harness;

pub fn txn(i: usize) -> Json {
    json!({
        "user": format!("u{}", i % 7),
        "merchant": format!("m{}", i % 5),
        "amount": i as f64 * 1.25,
        "ts": 1_700_000_000_000_i64 + i as i64 * 1000,
    })
}
