//! Datasets on a real broker: versions by content, unstructured files with
//! hashes and metadata, tables with their schema, search, and a registry
//! rebuilt from `weir.meta`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use serde_json::json;
use weir_features::datasets::{Datasets, Query, Registration, register};

fn table(path: &std::path::Path, rows: i64) {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("clicks", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("u{i}")),
            )),
            Arc::new(Int64Array::from_iter_values(0..rows)),
        ],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_versioned_by_content_and_found() {
    let weir_test_support::Harness { bus, broker, dir } = weir_test_support::Harness::start().await;

    // Unstructured: a folder of "images" with per-file labels.
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("cats")).unwrap();
    std::fs::write(images.join("cats/1.jpg"), b"\xff\xd8 a cat").unwrap();
    std::fs::write(images.join("dog.jpg"), b"\xff\xd8 a dog").unwrap();
    let cat = images.join("cats/1.jpg").display().to_string();
    let registration = Registration {
        name: "pets".into(),
        paths: vec![images.clone()],
        description: "Photos of pets".into(),
        owner: "vision".into(),
        tags: vec!["images".into()],
        metadata: BTreeMap::from([(
            cat.clone(),
            BTreeMap::from([("label".into(), json!("cat"))]),
        )]),
        ..Default::default()
    };
    let (v1, recorded) = register(
        &bus,
        &Datasets::load(&bus).await.unwrap(),
        registration.clone(),
    )
    .await
    .unwrap();
    assert!(recorded);
    assert_eq!(
        (v1.version, v1.format.as_str(), v1.files.len()),
        (1, "files", 2)
    );
    assert_eq!(v1.files[0].uri, cat, "files in name order");
    assert_eq!(v1.files[0].metadata["label"], json!("cat"));
    assert_eq!(v1.files[0].bytes, 8);
    // sha256("\xff\xd8 a cat")
    assert_eq!(v1.files[0].sha256.len(), 64);
    // The same content again: no new version.
    let (same, recorded) = register(
        &bus,
        &Datasets::load(&bus).await.unwrap(),
        registration.clone(),
    )
    .await
    .unwrap();
    assert!(!recorded);
    assert_eq!(same, v1);
    // A changed file: version 2, another hash.
    std::fs::write(images.join("dog.jpg"), b"\xff\xd8 another dog").unwrap();
    let (v2, recorded) = register(&bus, &Datasets::load(&bus).await.unwrap(), registration)
        .await
        .unwrap();
    assert!(recorded);
    assert_eq!(v2.version, 2);
    assert_ne!(v2.hash, v1.hash);
    assert_eq!(
        v2.files[0].sha256, v1.files[0].sha256,
        "the cat did not change"
    );
    assert_ne!(v2.files[1].sha256, v1.files[1].sha256);

    // A table: its schema and rows.
    let clicks = dir.path().join("clicks.parquet");
    table(&clicks, 42);
    let (t, _) = register(
        &bus,
        &Datasets::load(&bus).await.unwrap(),
        Registration {
            name: "clicks".into(),
            paths: vec![clicks.clone()],
            description: "Clicks per user".into(),
            owner: "growth".into(),
            tags: vec!["web".into()],
            entity: vec!["user_id".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((t.format.as_str(), t.rows), ("parquet", Some(42)));
    assert_eq!(
        t.schema
            .iter()
            .map(|c| (c.name.as_str(), c.r#type.as_str()))
            .collect::<Vec<_>>(),
        [("user_id", "Utf8"), ("clicks", "Int64")]
    );

    // Rebuilt from the topic: every version, and search.
    let datasets = Datasets::load(&bus).await.unwrap();
    assert_eq!(datasets.versions("pets"), &[v1.clone(), v2.clone()]);
    let find = |text: &str| datasets.find(&text.parse().unwrap());
    assert_eq!(find("pets@1"), Some(&v1));
    assert_eq!(find("pets@v1"), Some(&v1));
    assert_eq!(find("pets"), Some(&v2));
    assert_eq!(find("pets@3"), None);
    assert_eq!(find("pets@champion"), None, "datasets have no aliases");
    let names = |query: Query| {
        datasets
            .search(&query)
            .iter()
            .map(|v| v.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(Query {
            text: Some("PHOTOS pets".into()),
            ..Default::default()
        }),
        ["pets"]
    );
    assert_eq!(
        names(Query {
            tag: Some("web".into()),
            ..Default::default()
        }),
        ["clicks"]
    );
    assert_eq!(
        names(Query {
            entity: Some("user_id".into()),
            ..Default::default()
        }),
        ["clicks"]
    );
    assert_eq!(
        names(Query {
            owner: Some("vision".into()),
            ..Default::default()
        }),
        ["pets"]
    );
    assert!(
        names(Query {
            text: Some("photos of web".into()),
            ..Default::default()
        })
        .is_empty()
    );

    // Mistakes say what is wrong.
    let known = Datasets::load(&bus).await.unwrap();
    let cases = [
        (
            Registration {
                name: "no such".into(),
                paths: vec![clicks.clone()],
                ..Default::default()
            },
            "not a dataset name",
        ),
        (
            Registration {
                name: "x".into(),
                paths: vec![dir.path().join("missing.csv")],
                ..Default::default()
            },
            "missing.csv: no such file",
        ),
        (
            Registration {
                name: "x".into(),
                paths: vec![clicks.clone()],
                entity: vec!["customer".into()],
                ..Default::default()
            },
            "entity key `customer` is not a column (user_id, clicks)",
        ),
        (
            Registration {
                name: "x".into(),
                paths: vec![clicks],
                metadata: BTreeMap::from([("other.jpg".into(), BTreeMap::new())]),
                ..Default::default()
            },
            "`other.jpg`, which is not one of the dataset's files",
        ),
    ];
    for (registration, says) in cases {
        let error = register(&bus, &known, registration)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(says), "{error}");
    }
    broker.stop().await;
}
