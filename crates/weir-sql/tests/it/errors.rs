//! Bad views are refused before anything is deployed, with a message that
//! names the problem and its `file:line:col`.

use weir_sql::registry::{self, Registry};

use crate::support::Harness;

const HEADER: &str = "---\nname: bad\nentity: [user_id]\nsources:\n  transactions: { topic: transactions, event_time: event_time, lateness: 5s, schema: { user_id: string, merchant_id: string, amount: double, event_time: long } }\ntables:\n  merchants: { topic: merchants, key: merchant_id, schema: { merchant_id: string, category: string } }\n---\n";

/// The SQL starts on this line of the file.
const SQL_LINE: usize = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_views_say_what_and_where() {
    let h = Harness::start().await;
    h.bus
        .admin()
        .ensure_topic(&weir_bus::TopicSpec::new("merchants", 1))
        .await
        .unwrap();
    let window = "GROUP BY user_id, tumble(event_time, INTERVAL '1 minute')";
    // (query, what the message must say, line of the query it must point at, column)
    let cases: Vec<(String, &str, usize, usize)> = vec![
        ("SELEC user_id FROM transactions".into(), "SELEC", 1, 1),
        (format!("SELECT user_id, sum(amout) AS s\nFROM transactions\n{window}"), "amout", 1, 21),
        (format!("SELECT user_id, count(*) AS n\nFROM transactionz\n{window}"), "transactionz", 2, 6),
        (format!("SELECT user_id, cnt(*) AS n\nFROM transactions\n{window}"), "cnt", 1, 17),
        (format!("SELECT user_id, count(*) AS n\nFROM transactions\n{window}\nORDER BY n"), "ORDER BY", 4, 1),
        (format!("SELECT user_id, count(*) AS n\nFROM transactions\n{window}\nLIMIT 10"), "LIMIT", 4, 1),
        ("SELECT user_id, count(*) AS n\nFROM transactions\nGROUP BY user_id".into(), "window", 3, 1),
        (
            "SELECT a.user_id, count(*) AS n\nFROM transactions a JOIN transactions b ON a.user_id = b.user_id\nGROUP BY a.user_id, tumble(a.event_time, INTERVAL '1 minute')".into(),
            "two streams",
            2,
            21,
        ),
        (format!("SELECT user_id, sum(merchant_id) AS s\nFROM transactions\n{window}"), "sum", 1, 17),
        (
            "SELECT user_id, count(*) AS n\nFROM transactions\nGROUP BY user_id, tumble(amount, INTERVAL '1 minute')".into(),
            "event time",
            3,
            19,
        ),
        (
            "SELECT user_id, count(*) AS n\nFROM transactions\nGROUP BY user_id, tumble(event_time, INTERVAL '1 month')".into(),
            "month",
            3,
            19,
        ),
        (
            "SELECT t.user_id, count(*) AS n\nFROM transactions t JOIN merchants m ON t.user_id = m.category\nGROUP BY t.user_id, tumble(t.event_time, INTERVAL '1 minute')".into(),
            "table's key",
            2,
            38,
        ),
        (
            "SELECT user_id, row_number() OVER (PARTITION BY user_id) AS r\nFROM transactions".into(),
            "OVER",
            1,
            30,
        ),
        ("SELECT merchant_id, count(*) AS n\nFROM transactions\nGROUP BY merchant_id, tumble(event_time, INTERVAL '1 minute')".into(), "entity column `user_id`", 0, 0),
    ];
    let mut failures = Vec::new();
    for (i, (sql, says, line, column)) in cases.iter().enumerate() {
        let path = h.view(&format!("bad{i}"), &format!("{HEADER}{sql}\n"));
        let view = weir_sql::ViewFile::load(&path).unwrap();
        let known = Registry::load(&h.bus).await.unwrap();
        let error = registry::apply(&h.bus, &known, &[view], &h.state())
            .await
            .expect_err(&format!("case {i} must fail: {sql}"))
            .to_string();
        let at = if *line == 0 {
            format!("{}:2:1:", path.display())
        } else {
            format!("{}:{}:{column}:", path.display(), SQL_LINE + line - 1)
        };
        if !error.starts_with(&at) || !error.contains(says) {
            failures.push(format!("case {i}: want `{at} … {says} …`, got `{error}`"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was recorded.
    let registry = Registry::load(&h.bus).await.unwrap();
    assert_eq!(registry.names().count(), 0);
}
