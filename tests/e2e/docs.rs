//! The examples in `docs/` run: every `$ weir ...` line of a page, in order,
//! against a fresh broker, from the repository root.

use crate::support::{Platform, repo, stderr};

fn run_page(page: &str) -> Vec<(String, std::process::Output)> {
    let text = std::fs::read_to_string(repo().join("docs").join(page)).unwrap();
    let platform = Platform::start();
    let mut outputs = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("$ weir ")) {
        let args: Vec<&str> = line.split_whitespace().collect();
        let output = platform.weir(&args).current_dir(repo()).output().unwrap();
        assert!(
            output.status.success(),
            "docs/{page}: `weir {line}` failed:\n{}",
            stderr(&output)
        );
        outputs.push((line.to_string(), output));
    }
    assert!(!outputs.is_empty(), "docs/{page} has no `$ weir` examples");
    outputs
}

#[test]
fn bus_page() {
    let outputs = run_page("bus.md");
    let find = |prefix: &str| {
        outputs
            .iter()
            .find(|(line, _)| line.starts_with(prefix))
            .map(|(_, output)| output)
            .unwrap()
    };
    let published = stderr(find("publish"));
    assert!(published.contains("published 5 records"), "{published}");
    assert!(
        published.contains("transactions.jsonl:4: missing-field at `merchant_id`"),
        "{published}"
    );
    assert!(published.contains("transactions.jsonl:6:"), "{published}");
    let letters = String::from_utf8_lossy(&find("tail weir.dlq").stdout).into_owned();
    assert_eq!(letters.lines().count(), 2, "{letters}");
    assert!(letters.contains(r#""reason":"missing-field""#), "{letters}");
    let first_two =
        String::from_utf8_lossy(&find("tail transactions --from-beginning").stdout).into_owned();
    assert_eq!(first_two.lines().count(), 2);
}
