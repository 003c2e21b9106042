use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value as Json, json};
use tower::ServiceExt;
use weir_bus::registry::{Compatibility, RegistryError, http};
use weir_bus::{Bus, BusConfig, SchemaType};

use crate::support::{Harness, TXN_SCHEMA};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_versions_come_from_the_log_and_replay_identically() {
    let h = Harness::start().await;
    let registry = h.bus.registry();
    let a = registry
        .register("a-value", SchemaType::Avro, TXN_SCHEMA)
        .await
        .unwrap();
    // Registering again is idempotent, whitespace aside.
    let again = registry
        .register("a-value", SchemaType::Avro, &TXN_SCHEMA.replace('\n', " "))
        .await
        .unwrap();
    assert_eq!((again.schema.id, again.version), (a.schema.id, 1));
    // The same schema under another subject keeps its id.
    let b = registry
        .register("b-value", SchemaType::Avro, TXN_SCHEMA)
        .await
        .unwrap();
    assert_eq!(b.schema.id, a.schema.id);
    let v2 = TXN_SCHEMA.replace(
        r#"{"name": "amount", "type": "double"},"#,
        r#"{"name": "amount", "type": "double"}, {"name": "note", "type": ["null", "string"], "default": null},"#,
    );
    let a2 = registry
        .register("a-value", SchemaType::Avro, &v2)
        .await
        .unwrap();
    assert_eq!(a2.version, 2);
    assert_ne!(a2.schema.id, a.schema.id);

    // Removing a field without a default breaks BACKWARD compatibility.
    let broken = TXN_SCHEMA
        .replace(r#"{"name": "amount", "type": "double"},"#, "")
        .replace(
            r#"{"name": "merchant", "type": "string"},"#,
            r#"{"name": "merchant", "type": "string"}, {"name": "extra", "type": "int"},"#,
        );
    let error = registry
        .register("a-value", SchemaType::Avro, &broken)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Incompatible { .. }),
        "{error}"
    );
    // ... and is accepted once the subject's level is NONE.
    registry
        .set_compatibility(Some("a-value"), Some(Compatibility::None))
        .await
        .unwrap();
    let a3 = registry
        .register("a-value", SchemaType::Avro, &broken)
        .await
        .unwrap();
    assert_eq!(a3.version, 3);

    let invalid = registry
        .register("c-value", SchemaType::Avro, "{\"type\": \"recrd\"}")
        .await;
    assert!(matches!(invalid, Err(RegistryError::InvalidSchema(_))));

    // A second node replaying weir.schemas reaches the same state.
    let other = Bus::connect(BusConfig::new(h.broker.bootstrap_servers()))
        .await
        .unwrap();
    let replayed = other.registry();
    assert_eq!(replayed.subjects(), vec!["a-value", "b-value"]);
    for version in ["1", "2", "3"] {
        let here = registry.version("a-value", version).unwrap();
        let there = replayed.version("a-value", version).unwrap();
        assert_eq!(here.schema.id, there.schema.id);
        assert_eq!(here.schema.text, there.schema.text);
    }
    assert_eq!(
        replayed.compatibility(Some("a-value")).unwrap(),
        Compatibility::None
    );
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Json>,
) -> (StatusCode, Json) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Json::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_speaks_confluent() {
    let h = Harness::start().await;
    let app = http::router(h.bus.registry().clone());

    let (status, body) = call(
        &app,
        "POST",
        "/subjects/t-value/versions?normalize=False",
        Some(json!({"schema": TXN_SCHEMA, "schemaType": "AVRO", "references": []})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_u64().unwrap();

    let (status, body) = call(
        &app,
        "GET",
        &format!("/schemas/ids/{id}?subject=t-value"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["schema"], json!(TXN_SCHEMA));
    assert!(body.get("schemaType").is_none(), "AVRO is implied");

    let (_, body) = call(&app, "GET", "/subjects", None).await;
    assert_eq!(body, json!(["t-value"]));
    let (_, body) = call(&app, "GET", "/subjects/t-value/versions", None).await;
    assert_eq!(body, json!([1]));
    let (_, body) = call(&app, "GET", "/subjects/t-value/versions/latest", None).await;
    assert_eq!(body["version"], json!(1));
    assert_eq!(body["id"], json!(id));

    let (status, body) = call(
        &app,
        "POST",
        "/subjects/t-value?normalize=False&deleted=True",
        Some(json!({"schema": TXN_SCHEMA})),
    )
    .await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(1))
    );

    let (status, body) = call(
        &app,
        "POST",
        "/compatibility/subjects/t-value/versions/latest?verbose=true",
        Some(json!({"schema": r#"{"type": "record", "name": "CardTransaction", "namespace": "weir.test", "fields": [{"name": "other", "type": "int"}]}"#})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["is_compatible"], json!(false));
    assert!(!body["messages"].as_array().unwrap().is_empty());

    // Errors: Confluent codes and statuses.
    let (status, body) = call(&app, "GET", "/subjects/nope/versions/latest", None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::NOT_FOUND, json!(40401))
    );
    let (status, body) = call(&app, "GET", "/subjects/t-value/versions/9", None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::NOT_FOUND, json!(40402))
    );
    let (status, body) = call(&app, "GET", "/schemas/ids/424242", None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::NOT_FOUND, json!(40403))
    );
    let (status, body) = call(
        &app,
        "POST",
        "/subjects/t-value/versions",
        Some(json!({"schema": "{\"type\": \"nonsense\"}"})),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!(42201))
    );
    let (status, body) = call(
        &app,
        "POST",
        "/subjects/t-value/versions",
        Some(json!({"schema": r#"{"type": "record", "name": "CardTransaction", "namespace": "weir.test", "fields": [{"name": "other", "type": "int"}]}"#})),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::CONFLICT, json!(409))
    );

    // Configuration.
    let (_, body) = call(&app, "GET", "/config", None).await;
    assert_eq!(body, json!({"compatibilityLevel": "BACKWARD"}));
    let (status, _) = call(&app, "GET", "/config/t-value", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(
        &app,
        "PUT",
        "/config/t-value",
        Some(json!({"compatibility": "full"})),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"compatibility": "FULL"}))
    );
    let (status, body) = call(
        &app,
        "PUT",
        "/config",
        Some(json!({"compatibility": "SIDEWAYS"})),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!(42203))
    );

    // An unknown route and a wrong method, in Confluent's shape.
    let (status, body) = call(&app, "POST", "/nowhere", Some(json!({"x": 1}))).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::NOT_FOUND, json!(404))
    );
    assert!(
        body["message"].as_str().unwrap().contains("/nowhere"),
        "{body}"
    );
    let (status, body) = call(&app, "DELETE", "/subjects", None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!(405))
    );
}
