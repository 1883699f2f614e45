//! A fake Marathon API and DC/OS login endpoint on loopback, speaking their wire format:
//! `GET <prefix>/v2/apps/<id>/tasks` answers `{"tasks": [...]}` with Marathon's task fields,
//! and `POST /acs/api/v1/auth/login` verifies the RS256 signature of the login JWT with the
//! service account's public key before it issues a token. Marathon refuses (401) any request
//! without a token it issued and has not expired.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

/// Where the test keys live.
pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dcos").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A service-account secret as DC/OS hands it out.
pub fn secret(key_file: &str, login_endpoint: &str) -> String {
    json!({
        "uid": "mpp-service",
        "private_key": fixture(key_file),
        "login_endpoint": login_endpoint,
        "scheme": "RS256",
    })
    .to_string()
}

/// A Marathon task (the fields of Marathon's `Task` type that a client sees).
pub fn task(app: &str, n: usize, port: u16, state: &str, alive: Option<bool>) -> Value {
    let id = format!("{}.{n}-0000", app.trim_start_matches('/').replace('/', "_"));
    let mut task = json!({
        "id": id,
        "appId": app,
        "host": "127.0.0.1",
        "ports": [port],
        "servicePorts": [10000 + n],
        "slaveId": "agent-1",
        "agentId": "agent-1",
        "stagedAt": "2026-11-24T10:00:00.000Z",
        "startedAt": "2026-11-24T10:00:01.000Z",
        "state": state,
        "version": "2026-11-24T09:59:59.000Z",
        "ipAddresses": [{"ipAddress": "127.0.0.1", "protocol": "IPv4"}],
    });
    if let Some(alive) = alive {
        task["healthCheckResults"] = json!([{
            "alive": alive,
            "consecutiveFailures": if alive { 0 } else { 3 },
            "firstSuccess": "2026-11-24T10:00:05.000Z",
            "lastFailure": null,
            "lastSuccess": "2026-11-24T10:00:05.000Z",
            "taskId": id,
        }]);
    }
    task
}

#[derive(Default)]
struct State {
    apps: HashMap<String, Vec<Value>>,
    tokens: HashSet<String>,
    issued: usize,
    refused_logins: usize,
}

/// The fake; stops serving when dropped.
pub struct FakeMarathon {
    pub addr: SocketAddr,
    prefix: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

#[derive(Deserialize)]
struct Login {
    uid: String,
    token: String,
}

#[derive(Deserialize)]
struct Claims {
    uid: String,
}

impl FakeMarathon {
    /// Starts the fake with Marathon under `prefix` (e.g. `/service/marathon`, or empty).
    pub async fn start(prefix: &str) -> FakeMarathon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let key = Arc::new(DecodingKey::from_rsa_pem(fixture("service-account-public.pem").as_bytes()).unwrap());
        let (prefix_owned, state_for_server) = (prefix.to_string(), state.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let mut stopped = stopped.clone();
                let (state, key, prefix) = (state_for_server.clone(), key.clone(), prefix_owned.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (state, key, prefix) = (state.clone(), key.clone(), prefix.clone());
                    async move { Ok::<_, Infallible>(handle(request, &state, &key, &prefix).await) }
                });
                tokio::spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    // Dropped (and so closed) when the fake goes away, kept-alive or not.
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        FakeMarathon { addr, prefix: prefix.to_string(), state, server, stop }
    }

    /// The Marathon URL to give mpp.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    /// The login endpoint's URL.
    pub fn login_url(&self) -> String {
        format!("http://{}/acs/api/v1/auth/login", self.addr)
    }

    /// Sets an app's tasks.
    pub fn set_tasks(&self, app: &str, tasks: Vec<Value>) {
        self.state.lock().unwrap().apps.insert(app.trim_start_matches('/').to_string(), tasks);
    }

    /// Makes every token issued so far invalid, as if they had expired.
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// Tokens issued so far.
    pub fn logins(&self) -> usize {
        self.state.lock().unwrap().issued
    }

    /// Logins refused so far.
    pub fn refused_logins(&self) -> usize {
        self.state.lock().unwrap().refused_logins
    }
}

impl Drop for FakeMarathon {
    fn drop(&mut self) {
        self.server.abort();
        let _ = self.stop.send(true);
    }
}

async fn handle(
    request: Request<Incoming>,
    state: &Mutex<State>,
    key: &DecodingKey,
    prefix: &str,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if path == "/acs/api/v1/auth/login" {
        return login(&body, state, key);
    }
    let Some(app) =
        path.strip_prefix(prefix).and_then(|p| p.strip_prefix("/v2/apps/")).and_then(|p| p.strip_suffix("/tasks"))
    else {
        return answer(StatusCode::NOT_FOUND, json!({"message": format!("no route for {path}")}));
    };
    let state = state.lock().unwrap();
    let token = authorization.as_deref().and_then(|a| a.strip_prefix("token="));
    if !token.is_some_and(|t| state.tokens.contains(t)) {
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"title": "Authentication required", "description": "token missing or expired", "code": "ERR_INVALID_AUTH_TOKEN"}),
        );
    }
    match state.apps.get(app) {
        Some(tasks) => answer(StatusCode::OK, json!({"tasks": tasks})),
        None => answer(StatusCode::NOT_FOUND, json!({"message": format!("App '/{app}' does not exist")})),
    }
}

fn login(body: &[u8], state: &Mutex<State>, key: &DecodingKey) -> Response<Full<Bytes>> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp"]);
    let verified = serde_json::from_slice::<Login>(body).ok().and_then(|login| {
        let claims = jsonwebtoken::decode::<Claims>(&login.token, key, &validation).ok()?.claims;
        (claims.uid == login.uid && login.uid == "mpp-service").then_some(())
    });
    let mut state = state.lock().unwrap();
    if verified.is_none() {
        state.refused_logins += 1;
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"title": "Invalid authentication credentials", "code": "ERR_INVALID_SERVICE_LOGIN_JWT"}),
        );
    }
    state.issued += 1;
    let token = format!("dcos-token-{}", state.issued);
    state.tokens.insert(token.clone());
    answer(StatusCode::OK, json!({"token": token}))
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    response
}
