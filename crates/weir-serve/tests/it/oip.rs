//! Open Inference Protocol v2 conformance, through Triton's official
//! clients, HTTP and gRPC: health, server and model metadata, readiness,
//! inference at batch sizes 1 to 64 (JSON and binary tensors; raw and
//! typed gRPC contents) — each answer equal to ONNX Runtime's own output
//! for the same rows.

use std::time::Duration;

use serde_json::Value as Json;
use weir_onnx::{Model, SessionOptions};

use crate::{Platform, generate, python, serve, spec};

const CLIENT: &str = r#"
import json, sys
import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

url, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
client = http.InferenceServerClient(url=url)
assert client.is_server_live() and client.is_server_ready()
results = {"server": client.get_server_metadata(), "ready": client.is_model_ready(model)}
metadata = client.get_model_metadata(model)
results["model"] = metadata
tensor = metadata["inputs"][0]
width = tensor["shape"][1]
rng = np.random.default_rng(3)
results["batches"] = []
for n in range(1, 65):
    x = rng.normal(size=(n, width)).astype(np.float32)
    binary = n % 2 == 0
    given = http.InferInput(tensor["name"], [n, width], "FP32")
    given.set_data_from_numpy(x, binary_data=binary)
    wanted = [http.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]]
    answer = client.infer(model, [given], outputs=wanted, request_id=f"r{n}")
    batch = {"x": x.tolist(), "id": answer.get_response()["id"]}
    for o in metadata["outputs"]:
        batch[o["name"]] = answer.as_numpy(o["name"]).tolist()
    results["batches"].append(batch)
# No outputs named: the client asks for every output, in binary.
answer = client.infer(model, [given])
results["all_outputs"] = sorted(o["name"] for o in answer.get_response()["outputs"])
try:
    bad = http.InferInput(tensor["name"], [1, width + 1], "FP32")
    bad.set_data_from_numpy(np.zeros((1, width + 1), np.float32))
    client.infer(model, [bad])
    results["error"] = None
except InferenceServerException as e:
    results["error"] = str(e)
try:
    client.get_model_metadata("nope")
    results["missing"] = None
except InferenceServerException as e:
    results["missing"] = str(e)
json.dump(results, open(out, "w"))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn triton_client_conformance_and_outputs_equal_onnx_runtime() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    generate(&data, 2000, 1, "");
    let version = platform
        .train("clicks", &data, "HistGradientBoostingClassifier")
        .await;
    let (address, stop, task) = serve(
        &platform,
        spec("name: clicks\nmodel: clicks@1\nhttp: {listen: 127.0.0.1:0}\n"),
        Default::default(),
        None,
    )
    .await;
    let address = address.unwrap();

    let results = run_client(&platform, CLIENT, address).await;

    assert_eq!(results["server"]["name"], "weir");
    assert!(
        results["server"]["extensions"]
            .to_string()
            .contains("binary_tensor_data")
    );
    assert_eq!(results["ready"], true);
    let metadata = &results["model"];
    assert_eq!(metadata["name"], "clicks");
    assert_eq!(metadata["versions"][0], version.to_string());
    assert_eq!(metadata["platform"], "onnxruntime_onnx");
    assert_eq!(metadata["inputs"][0]["datatype"], "FP32");
    assert_eq!(metadata["inputs"][0]["shape"][1], crate::FEATURES);
    let outputs: Vec<&str> = metadata["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        outputs.contains(&"probabilities") && outputs.contains(&"label"),
        "{outputs:?}"
    );
    let mut all = outputs.clone();
    all.sort();
    assert_eq!(results["all_outputs"], serde_json::json!(all));

    // Every answer equals ONNX Runtime's own, run here on the same rows.
    let model = Model::load(
        &platform.model_bytes("clicks", version).await,
        &SessionOptions::default(),
    )
    .unwrap();
    assert_equal_to_onnx_runtime(&model, &results["batches"]);
    let error = results["error"].as_str().unwrap();
    assert!(
        error.contains("input") && error.contains(&crate::FEATURES.to_string()),
        "{error}"
    );
    assert!(
        results["missing"]
            .as_str()
            .unwrap()
            .contains("no model `nope`")
    );

    // Errors over plain HTTP: a 400 naming the problem's place, a 404.
    let mut connection = weir_serve::client::Connection::open(address, "/v2/models/clicks/infer")
        .await
        .unwrap();
    let (status, body) = connection.post(b"{\"inputs\": [").await.unwrap();
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, body) = connection
        .post(br#"{"inputs":[{"name":"x9","shape":[1],"datatype":"FP32","data":[1]}]}"#)
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("is missing"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let mut other = weir_serve::client::Connection::open(address, "/v2/models/other/infer")
        .await
        .unwrap();
    assert_eq!(other.post(b"{}").await.unwrap().0, 404);
    // A route that does not exist: the protocol's error shape, and the
    // connection stays open for the next request.
    let mut nowhere = weir_serve::client::Connection::open(address, "/v2/nowhere")
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, body) = nowhere.post(b"{\"inputs\": []}").await.unwrap();
        assert_eq!(status, 404);
        assert!(
            String::from_utf8_lossy(&body).contains("no route POST /v2/nowhere"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    // A method the route does not take: a 405 that says so.
    let mut metrics = weir_serve::client::Connection::open(address, "/metrics")
        .await
        .unwrap();
    let (status, body) = metrics.post(b"{}").await.unwrap();
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (
            405,
            r#"{"error":"/metrics does not take POST"}"#.to_string()
        )
    );

    stop.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    // 64 batches and the all-outputs request; the wrong shape and the
    // missing input (a body that is not a request never reaches the model).
    assert_eq!(summary.requests, (65, 2));
    assert_eq!(summary.logged, 67);
}

/// Runs a client script against the deployment `clicks` at `address`;
/// what it wrote.
async fn run_client(platform: &Platform, script: &str, address: std::net::SocketAddr) -> Json {
    let path = platform.dir.path().join("client.py");
    std::fs::write(&path, script).unwrap();
    let out = platform.dir.path().join("results.json");
    let status = tokio::process::Command::new(python())
        .arg(&path)
        .arg(address.to_string())
        .arg("clicks")
        .arg(&out)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the client script failed");
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

/// Each batch's answer (`x`, `probabilities`, `label`, `id`) equals ONNX
/// Runtime's own output for the same rows, run here.
fn assert_equal_to_onnx_runtime(model: &Model, batches: &Json) {
    let batches = batches.as_array().unwrap();
    assert_eq!(batches.len(), 64);
    for (n, batch) in batches.iter().enumerate() {
        let rows: Vec<Vec<f64>> = serde_json::from_value(batch["x"].clone()).unwrap();
        assert_eq!(rows.len(), n + 1);
        assert_eq!(batch["id"], format!("r{}", n + 1));
        let matrix: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        let direct = model.predict(&matrix, rows.len()).unwrap();
        let (scores, width) = direct.scores().unwrap();
        let served: Vec<Vec<f64>> = serde_json::from_value(batch["probabilities"].clone()).unwrap();
        assert_eq!(served.len() * width, scores.len());
        // Equal up to float32 rounding (a batch's sums run in another order).
        for (a, b) in served.iter().flatten().zip(&scores) {
            assert!((a - b).abs() <= 1e-6, "batch {}: {a} vs {b}", n + 1);
        }
        let labels: Vec<i64> = serde_json::from_value(batch["label"].clone()).unwrap();
        let direct_labels = direct
            .outputs
            .iter()
            .find(|o| o.name == "label")
            .unwrap()
            .as_f64()
            .unwrap();
        assert_eq!(
            labels.iter().map(|&l| l as f64).collect::<Vec<_>>(),
            direct_labels
        );
    }
}

const GRPC_CLIENT: &str = r#"
import json, sys
import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

url, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
client = triton.InferenceServerClient(url=url)
assert client.is_server_live() and client.is_server_ready()
results = {"server": client.get_server_metadata(as_json=True), "ready": client.is_model_ready(model)}
metadata = client.get_model_metadata(model, as_json=True)
results["model"] = metadata
tensor = metadata["inputs"][0]
width = int(tensor["shape"][1])
outputs = [o["name"] for o in metadata["outputs"]]
# The raw stub too, to send typed contents (the client always sends raw).
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
rng = np.random.default_rng(5)
results["batches"] = []
for n in range(1, 65):
    x = rng.normal(size=(n, width)).astype(np.float32)
    batch = {"x": x.tolist()}
    if n % 2 == 0:
        given = triton.InferInput(tensor["name"], [n, width], "FP32")
        given.set_data_from_numpy(x)
        answer = client.infer(model, [given], outputs=[triton.InferRequestedOutput(o) for o in outputs], request_id=f"r{n}")
        batch["id"] = answer.get_response().id
        for o in outputs:
            batch[o] = answer.as_numpy(o).tolist()
    else:
        request = service_pb2.ModelInferRequest(model_name=model, id=f"r{n}")
        given = request.inputs.add(name=tensor["name"], datatype="FP32", shape=[n, width])
        given.contents.fp32_contents.extend(x.ravel().tolist())
        answer = stub.ModelInfer(request)
        batch["id"] = answer.id
        for o, raw in zip(answer.outputs, answer.raw_output_contents):
            dtype = {"FP32": np.float32, "INT64": np.int64}[o.datatype]
            batch[o.name] = np.frombuffer(raw, dtype).reshape(list(o.shape)).tolist()
    results["batches"].append(batch)
def failure(call):
    try:
        call()
        return None
    except InferenceServerException as e:
        return [e.status(), e.message()]
bad = triton.InferInput(tensor["name"], [1, width + 1], "FP32")
bad.set_data_from_numpy(np.zeros((1, width + 1), np.float32))
results["error"] = failure(lambda: client.infer(model, [bad]))
results["missing"] = failure(lambda: client.get_model_metadata("nope"))
results["old_version"] = failure(lambda: client.is_model_ready(model, "999"))
json.dump(results, open(out, "w"))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn triton_grpc_client_conformance_and_outputs_equal_onnx_runtime() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    generate(&data, 2000, 2, "");
    let version = platform
        .train("clicks", &data, "HistGradientBoostingClassifier")
        .await;
    let (ready, stop, task) = crate::serve_ready(
        &platform,
        spec("name: clicks\nmodel: clicks@1\nprotocols: [grpc]\ngrpc: {listen: 127.0.0.1:0}\n"),
        Default::default(),
        None,
    )
    .await;
    assert_eq!(ready.http, None);
    let address = ready.grpc.unwrap();

    let results = run_client(&platform, GRPC_CLIENT, address).await;

    assert_eq!(results["server"]["name"], "weir");
    assert_eq!(results["ready"], true);
    let metadata = &results["model"];
    assert_eq!(metadata["name"], "clicks");
    assert_eq!(metadata["versions"][0], version.to_string());
    assert_eq!(metadata["platform"], "onnxruntime_onnx");
    assert_eq!(metadata["inputs"][0]["datatype"], "FP32");
    // Protobuf's JSON writes int64 as strings.
    assert_eq!(
        metadata["inputs"][0]["shape"],
        serde_json::json!(["-1", crate::FEATURES.to_string()])
    );
    let model = Model::load(
        &platform.model_bytes("clicks", version).await,
        &SessionOptions::default(),
    )
    .unwrap();
    assert_equal_to_onnx_runtime(&model, &results["batches"]);

    let [code, message] = [0, 1].map(|i| results["error"][i].as_str().unwrap().to_string());
    assert_eq!(code, "StatusCode.INVALID_ARGUMENT");
    assert!(
        message.contains("input") && message.contains(&crate::FEATURES.to_string()),
        "{message}"
    );
    assert_eq!(results["missing"][0], "StatusCode.NOT_FOUND");
    assert!(
        results["missing"][1]
            .as_str()
            .unwrap()
            .contains("no model `nope`")
    );
    assert_eq!(results["old_version"][0], "StatusCode.NOT_FOUND");

    stop.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    // 64 batches answered, the wrong shape failed; each logged.
    assert_eq!(summary.requests, (64, 1));
    assert_eq!(summary.logged, 65);
}
