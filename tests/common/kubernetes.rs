//! A fake Kubernetes API server on loopback for Pods and EndpointSlices: list and watch
//! (newline-delimited `WatchEvent`s) with resource versions, bearer-token authentication,
//! and switches for an outage (connections dropped, as when the API server is down) and a
//! revoked token (401). Objects are k8s-openapi
//! types, serialized as the real API server sends them. Like a real server it honours the
//! namespace in the path; it ignores `labelSelector` (and records it), so that tests also
//! show that mpp's own matching keeps other objects out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status, WatchEvent};
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub const TOKEN: &str = "test-service-account-token";

/// A pod as the API server returns it.
pub fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], port: u16, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-{namespace}-{name}")),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "prometheus".into(),
                image: Some("prom/prometheus:v2.42.0".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("web".into()),
                    container_port: i32::from(port),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("127.0.0.1".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// An EndpointSlice of `service` with one endpoint per `(port, ready)` (all on 127.0.0.1,
/// which is how loopback replicas differ: by port, one slice each).
pub fn slice(namespace: &str, name: &str, service: &str, port: u16, ready: bool) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-{namespace}-{name}")),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), service.to_string())])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["127.0.0.1".into()],
            conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(ready), terminating: Some(false) }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("web".into()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Pods,
    Slices,
}

struct Change {
    version: u64,
    kind: Kind,
    namespace: String,
    event: Value,
}

#[derive(Default)]
struct State {
    version: u64,
    pods: BTreeMap<(String, String), Value>,
    slices: BTreeMap<(String, String), Value>,
    changes: Vec<Change>,
    outage: bool,
    revoked: bool,
    label_selectors: Vec<String>,
    list_delay: std::time::Duration,
}

/// The fake API server; stops when dropped.
pub struct FakeKubernetes {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    wake: broadcast::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl FakeKubernetes {
    pub async fn start() -> FakeKubernetes {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (wake, _) = broadcast::channel(1024);
        let (state2, wake2) = (state.clone(), wake.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                if state2.lock().unwrap().outage {
                    drop(stream); // down: the connection is closed unanswered
                    continue;
                }
                let mut woken = wake2.subscribe();
                let outage = {
                    let state = state2.clone();
                    async move {
                        loop {
                            if woken.recv().await.is_err() || state.lock().unwrap().outage {
                                return;
                            }
                        }
                    }
                };
                let (state, wake) = (state2.clone(), wake2.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (state, wake) = (state.clone(), wake.clone());
                    async move {
                        let is_list = !request.uri().query().unwrap_or("").contains("watch=true");
                        let delay = state.lock().unwrap().list_delay;
                        if is_list && !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(handle(request, &state, &wake))
                    }
                });
                tokio::spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                        () = outage => {} // every open connection dies with the server
                    }
                });
            }
        });
        FakeKubernetes { addr, state, wake, server, dir: tempfile::tempdir().unwrap() }
    }

    /// A kubeconfig for this server with the valid token; written once, path returned.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: mpp\n  user:\n    token: {TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: mpp\n\
             current-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Adds or replaces a pod.
    pub fn apply_pod(&self, pod: &Pod) {
        self.apply(Kind::Pods, serde_json::to_value(pod).unwrap());
    }

    /// Deletes a pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.delete(Kind::Pods, namespace, name);
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_slice(&self, slice: &EndpointSlice) {
        self.apply(Kind::Slices, serde_json::to_value(slice).unwrap());
    }

    /// Starts or ends an outage: open connections close, new ones are closed unanswered.
    pub fn set_outage(&self, outage: bool) {
        self.state.lock().unwrap().outage = outage;
        let _ = self.wake.send(());
    }

    /// Revokes or restores the token: requests answer 401 and open watches end.
    pub fn set_revoked(&self, revoked: bool) {
        self.state.lock().unwrap().revoked = revoked;
        let _ = self.wake.send(());
    }

    /// Makes every list (not watch) request wait this long before it is answered, as a
    /// busy API server does.
    pub fn set_list_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().list_delay = delay;
    }

    /// The label selectors clients asked for.
    pub fn label_selectors(&self) -> Vec<String> {
        self.state.lock().unwrap().label_selectors.clone()
    }

    fn apply(&self, kind: Kind, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = (
            object["metadata"]["namespace"].as_str().unwrap().to_string(),
            object["metadata"]["name"].as_str().unwrap().to_string(),
        );
        let objects = if kind == Kind::Pods { &mut state.pods } else { &mut state.slices };
        let existed = objects.insert(key.clone(), object.clone()).is_some();
        let event = if existed { WatchEvent::Modified(object) } else { WatchEvent::Added(object) };
        state.changes.push(Change { version, kind, namespace: key.0, event: serde_json::to_value(event).unwrap() });
        drop(state);
        let _ = self.wake.send(());
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let objects = if kind == Kind::Pods { &mut state.pods } else { &mut state.slices };
        if let Some(mut object) = objects.remove(&(namespace.to_string(), name.to_string())) {
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            let event = serde_json::to_value(WatchEvent::Deleted(object)).unwrap();
            state.changes.push(Change { version, kind, namespace: namespace.into(), event });
        }
        drop(state);
        let _ = self.wake.send(());
    }
}

impl Drop for FakeKubernetes {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = Status {
        code: Some(i32::from(code.as_u16())),
        message: Some(message.into()),
        reason: Some(reason.into()),
        status: Some("Failure".into()),
        ..Default::default()
    };
    let mut value = serde_json::to_value(body).unwrap();
    value["kind"] = json!("Status");
    value["apiVersion"] = json!("v1");
    json_response(code, value)
}

fn json_response(code: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    response
}

fn handle(request: Request<Incoming>, state: &Arc<Mutex<State>>, wake: &broadcast::Sender<()>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let authorized =
        request.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    let mut guard = state.lock().unwrap();
    if !authorized || guard.revoked {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (kind, namespace, list_kind, api_version) = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods"] => (Kind::Pods, ns.to_string(), "PodList", "v1"),
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => {
            (Kind::Slices, ns.to_string(), "EndpointSliceList", "discovery.k8s.io/v1")
        }
        _ => return status(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find {path}")),
    };
    if let Some(selector) = query.get("labelSelector") {
        guard.label_selectors.push(selector.clone());
    }
    if query.get("watch").map(String::as_str) != Some("true") {
        let objects = if kind == Kind::Pods { &guard.pods } else { &guard.slices };
        let items: Vec<&Value> = objects.iter().filter(|((ns, _), _)| *ns == namespace).map(|(_, o)| o).collect();
        let body = json!({
            "apiVersion": api_version,
            "kind": list_kind,
            "metadata": {"resourceVersion": guard.version.to_string()},
            "items": items,
        });
        return json_response(StatusCode::OK, body);
    }
    // A watch: every change after the given version, then new ones as they happen, until
    // an outage or revocation ends it.
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(guard.version);
    drop(guard);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let (state, mut woken) = (state.clone(), wake.subscribe());
    tokio::spawn(async move {
        let mut sent = from;
        loop {
            let batch: Vec<(u64, String)> = {
                let state = state.lock().unwrap();
                if state.outage || state.revoked {
                    return;
                }
                state
                    .changes
                    .iter()
                    .filter(|c| c.version > sent && c.kind == kind && c.namespace == namespace)
                    .map(|c| (c.version, c.event.to_string()))
                    .collect()
            };
            for (version, line) in batch {
                if tx.send(Bytes::from(line + "\n")).await.is_err() {
                    return;
                }
                sent = version;
            }
            if woken.recv().await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    response
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes a kubeconfig that is not YAML at all.
pub fn broken_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, "clusters: [unclosed\n  - : :\n").unwrap();
    path
}
