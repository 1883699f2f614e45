//! Marathon discovery: the running, healthy tasks of the configured apps, polled every
//! selection round. A candidate is a task's `host` and first port. Behind DC/OS, requests
//! carry `Authorization: token=...` from a service-account login; a 401 logs in again once.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use serde::Deserialize;

pub use super::dcos::PrincipalSecret;
use super::dcos::send;
use super::{DiscoveryError, Source};
use crate::backend::Backend;
use crate::client::HttpClient;

/// The flag that chooses this kind, for messages.
pub const CHOSEN_BY: &str = "--marathon-url";

/// Marathon's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MarathonFlags {
    /// The URL for the marathon API endpoint used to locate prometheus instances
    #[arg(long, env = "MPP_MARATHON_URL", value_name = "URL")]
    pub marathon_url: Option<String>,

    /// A comma-separated list of marathon app IDs whose tasks will be queried for prometheus
    /// endpoints
    #[arg(long, env = "MPP_MARATHON_APPS", value_name = "APPS")]
    pub marathon_apps: Option<String>,

    /// The principal secret used to handle authentication with marathon
    #[arg(long, env = "MPP_MARATHON_PRINCIPAL_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub marathon_principal_secret: Option<String>,

    /// The authentication endpoint to use with the 'marathon-principal-secret', overriding the
    /// value contained within the secret
    #[arg(long, env = "MPP_MARATHON_AUTH_ENDPOINT", value_name = "URL")]
    pub marathon_auth_endpoint: Option<String>,
}

impl MarathonFlags {
    /// Validates the flags; `None` when neither `--marathon-url` nor `--marathon-apps` is
    /// given. An error names the flag and the value (never a secret).
    pub fn config(&self) -> Result<Option<MarathonConfig>, String> {
        match (&self.marathon_url, &self.marathon_apps) {
            (Some(url), Some(apps)) => MarathonConfig::new(
                url,
                apps,
                self.marathon_principal_secret.as_deref(),
                self.marathon_auth_endpoint.as_deref(),
            )
            .map(Some),
            (Some(url), None) => Err(format!(
                "--marathon-url '{}' needs --marathon-apps (a comma-separated list of app ids)",
                redact_user_info(url)
            )),
            (None, Some(apps)) => Err(format!("--marathon-apps '{apps}' needs --marathon-url")),
            (None, None) => Ok(None),
        }
    }
}

/// How to reach Marathon, validated from the flags.
#[derive(Debug, Clone)]
pub struct MarathonConfig {
    /// The API's base URL, path prefix (such as `/service/marathon`) included, no trailing `/`.
    pub url: String,
    /// App ids without the leading `/` (nested groups keep their inner `/`).
    pub apps: Vec<String>,
    /// The DC/OS service account, if Marathon needs one.
    pub secret: Option<PrincipalSecret>,
    /// Overrides the secret's login endpoint.
    pub auth_endpoint: Option<String>,
    /// `Authorization: Basic …` from user info in `--marathon-url` (`http://user:pass@host`),
    /// which `url` no longer carries, so that it never reaches a log or the status page.
    pub basic_auth: Option<BasicAuth>,
}

/// A basic-auth header value; its `Debug` never shows it.
#[derive(Clone)]
pub struct BasicAuth(http::HeaderValue);

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicAuth(<redacted>)")
    }
}

/// Splits user info (`user:password@`, percent-encoded as in any URL) out of a URL: the URL
/// without it, and the `Authorization` value it stands for. The user info ends at the last
/// `@` before the path, so an unencoded `/` in a password still counts as user info.
fn take_user_info(url: &str) -> (String, Option<BasicAuth>) {
    use base64::Engine as _;
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_string(), None) };
    let Some(at) = rest.rfind('@').filter(|&at| !rest[..at].contains('?') && !rest[..at].contains('#')) else {
        return (url.to_string(), None);
    };
    let (user_info, host_and_path) = (&rest[..at], &rest[at + 1..]);
    let decode = |part: &str| percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned();
    let (user, password) = user_info.split_once(':').unwrap_or((user_info, ""));
    let credentials = format!("{}:{}", decode(user), decode(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = http::HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    (format!("{scheme}://{host_and_path}"), Some(BasicAuth(value)))
}

/// `url` with any user info replaced by `***`, for messages.
fn redact_user_info(url: &str) -> String {
    match take_user_info(url) {
        (rest, Some(_)) => rest.replacen("://", "://***@", 1),
        (url, None) => url,
    }
}

impl MarathonConfig {
    /// Validates `--marathon-url`, `--marathon-apps`, the secret and the auth endpoint.
    pub fn new(url: &str, apps: &str, secret: Option<&str>, auth_endpoint: Option<&str>) -> Result<Self, String> {
        let (url, basic_auth) = take_user_info(url.trim().trim_end_matches('/'));
        match url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() && u.query().is_none() => {}
            _ => return Err(format!("--marathon-url '{url}' is not an http(s) URL")),
        }
        let apps: Vec<String> =
            apps.split(',').map(|a| a.trim().trim_matches('/').to_string()).filter(|a| !a.is_empty()).collect();
        if apps.is_empty() {
            return Err("--marathon-apps lists no app id".into());
        }
        if let Some(bad) = apps.iter().find(|a| !a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))) {
            return Err(format!("--marathon-apps has an invalid app id '{bad}'"));
        }
        let secret =
            secret.map(PrincipalSecret::parse).transpose().map_err(|e| format!("--marathon-principal-secret {e}"))?;
        let auth_endpoint = auth_endpoint.map(str::trim).filter(|e| !e.is_empty()).map(String::from);
        if let Some(endpoint) = &auth_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(format!("--marathon-auth-endpoint '{endpoint}' is not an http(s) URL"));
            }
        }
        if let Some(secret) = &secret {
            if auth_endpoint.is_none() && secret.login_endpoint().is_none() {
                return Err("--marathon-principal-secret lacks the field 'login_endpoint' \
                            (or give --marathon-auth-endpoint)"
                    .into());
            }
        }
        Ok(MarathonConfig { url, apps, secret, auth_endpoint, basic_auth })
    }
}

/// Polls Marathon for the apps' tasks.
pub struct MarathonDiscovery {
    config: MarathonConfig,
    client: HttpClient,
    /// The DC/OS token of the last login; kept until Marathon refuses it.
    token: Option<String>,
}

/// The part of Marathon's task object (`GET /v2/apps/{id}/tasks`) that matters here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Task {
    host: String,
    #[serde(default)]
    ports: Vec<u16>,
    /// `TASK_RUNNING` and so on; absent in old Marathon versions, where listed means running.
    state: Option<String>,
    #[serde(default)]
    health_check_results: Vec<HealthCheckResult>,
}

#[derive(Debug, Deserialize)]
struct HealthCheckResult {
    alive: bool,
}

#[derive(Debug, Deserialize)]
struct Tasks {
    tasks: Vec<Task>,
}

impl MarathonDiscovery {
    /// Discovery over `config`, talking through `client`.
    pub fn new(config: MarathonConfig, client: HttpClient) -> Self {
        MarathonDiscovery { config, client, token: None }
    }

    /// Every running, healthy task of every app, in app order.
    async fn poll(&mut self) -> Result<Vec<Backend>, DiscoveryError> {
        if self.config.secret.is_some() && self.token.is_none() {
            self.login().await?;
        }
        let mut backends = Vec::new();
        for app in self.config.apps.clone() {
            let tasks = match self.tasks(&app).await? {
                Answer::Tasks(tasks) => tasks,
                Answer::Refused if self.config.secret.is_some() => {
                    // The token expired or was revoked: one new login, one more try.
                    tracing::info!(app = %app, "Marathon refused the token; logging in again");
                    self.login().await?;
                    match self.tasks(&app).await? {
                        Answer::Tasks(tasks) => tasks,
                        Answer::Refused => {
                            return Err(marathon_error(format!("app '/{app}': HTTP 401 even after a fresh login")));
                        }
                    }
                }
                Answer::Refused => {
                    return Err(marathon_error(format!("app '/{app}': HTTP 401 (set --marathon-principal-secret)")));
                }
            };
            for backend in tasks {
                if !backends.contains(&backend) {
                    backends.push(backend);
                }
            }
        }
        Ok(backends)
    }

    async fn login(&mut self) -> Result<(), DiscoveryError> {
        self.token = None;
        let secret = self.config.secret.as_ref().expect("login is only called with a secret");
        let endpoint = self
            .config
            .auth_endpoint
            .as_deref()
            .or(secret.login_endpoint())
            .expect("validated: a secret comes with a login endpoint");
        let token = secret.login(&self.client, endpoint).await.map_err(marathon_error)?;
        tracing::info!(uid = secret.uid(), "logged in to DC/OS");
        self.token = Some(token);
        Ok(())
    }

    /// One app's tasks, or word that Marathon refused the token (so the caller can log in).
    async fn tasks(&self, app: &str) -> Result<Answer, DiscoveryError> {
        let url = format!("{}/v2/apps/{}/tasks", self.config.url, app);
        let mut request = Request::get(&url).header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("token={token}"));
        } else if let Some(BasicAuth(basic)) = &self.config.basic_auth {
            request = request.header(header::AUTHORIZATION, basic.clone());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| marathon_error(format!("app '/{app}': bad URL {url}: {e}")))?;
        let (status, body) =
            send(&self.client, request).await.map_err(|e| marathon_error(format!("app '/{app}': GET {url}: {e}")))?;
        if status == StatusCode::UNAUTHORIZED {
            return Ok(Answer::Refused);
        }
        if !status.is_success() {
            return Err(marathon_error(format!("app '/{app}': GET {url}: HTTP {status}")));
        }
        candidates_from_tasks(&body)
            .map(Answer::Tasks)
            .map_err(|e| marathon_error(format!("app '/{app}': GET {url}: {e}")))
    }
}

impl Source for MarathonDiscovery {
    fn candidates(&mut self) -> BoxFuture<'_, Result<Vec<Backend>, DiscoveryError>> {
        Box::pin(self.poll())
    }

    fn describe(&self) -> String {
        let apps: Vec<String> = self.config.apps.iter().map(|a| format!("/{a}")).collect();
        let auth = if self.config.secret.is_some() { " (DC/OS login)" } else { "" };
        format!("Marathon {} apps {}{auth}", self.config.url, apps.join(","))
    }
}

/// What Marathon said about one app.
enum Answer {
    Tasks(Vec<Backend>),
    /// HTTP 401: the token is missing, expired or revoked.
    Refused,
}

fn marathon_error(detail: String) -> DiscoveryError {
    DiscoveryError::Marathon(detail)
}

/// Reads Marathon's answer to `GET /v2/apps/{id}/tasks`: the backends of its running,
/// healthy tasks, in order.
pub fn candidates_from_tasks(body: &[u8]) -> Result<Vec<Backend>, String> {
    let tasks: Tasks = serde_json::from_slice(body).map_err(|e| format!("not a task list ({e})"))?;
    Ok(tasks.tasks.iter().filter_map(candidate).collect())
}

/// The backend a task serves, if it is running, healthy and has a port.
fn candidate(task: &Task) -> Option<Backend> {
    let running = task.state.as_deref().is_none_or(|s| s == "TASK_RUNNING");
    let healthy = task.health_check_results.iter().all(|h| h.alive);
    let port = *task.ports.first()?;
    if !running || !healthy || task.host.is_empty() {
        return None;
    }
    let host = if task.host.contains(':') { format!("[{}]", task.host) } else { task.host.clone() };
    Backend::parse(&format!("http://{host}:{port}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: &str) -> Task {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn only_running_healthy_tasks_with_ports_are_candidates() {
        let ok = task(
            r#"{"host":"10.0.0.1","ports":[31000,31001],"state":"TASK_RUNNING","healthCheckResults":[{"alive":true}]}"#,
        );
        assert_eq!(candidate(&ok).unwrap().url(), "http://10.0.0.1:31000");
        assert!(candidate(&task(r#"{"host":"10.0.0.1","ports":[1],"state":"TASK_STAGING"}"#)).is_none());
        assert!(
            candidate(&task(r#"{"host":"10.0.0.1","ports":[1],"healthCheckResults":[{"alive":false}]}"#)).is_none()
        );
        assert!(candidate(&task(r#"{"host":"10.0.0.1","ports":[]}"#)).is_none());
        assert_eq!(candidate(&task(r#"{"host":"fd00::1","ports":[9090]}"#)).unwrap().url(), "http://[fd00::1]:9090");
    }

    #[test]
    fn flags_are_validated() {
        let c = MarathonConfig::new("http://m:8080/service/marathon/", "/prom, /group/prom-b,", None, None).unwrap();
        assert_eq!(c.url, "http://m:8080/service/marathon");
        let tricky = MarathonConfig::new("http://ops:p+a&s/s@m:8080", "a", None, None).unwrap();
        assert_eq!(tricky.url, "http://m:8080");
        assert_eq!(tricky.basic_auth.unwrap().0, "Basic b3BzOnArYSZzL3M=", "ops:p+a&s/s, as written");
        assert_eq!(redact_user_info("http://u:secret@m:8080/x"), "http://***@m:8080/x");
        let with_user = MarathonConfig::new("http://ops:s%40cret@m:8080/marathon/", "a", None, None).unwrap();
        assert_eq!(with_user.url, "http://m:8080/marathon", "credentials never stay in the URL");
        assert!(!format!("{with_user:?}").contains("s@cret") && !format!("{with_user:?}").contains("czBjcmV0"));
        let basic = with_user.basic_auth.unwrap().0;
        assert_eq!(basic, "Basic b3BzOnNAY3JldA==", "ops:s@cret, percent-decoded");
        assert_eq!(c.apps, ["prom", "group/prom-b"]);
        assert!(MarathonConfig::new("m:8080", "a", None, None).unwrap_err().contains("--marathon-url"));
        assert!(MarathonConfig::new("http://m", " , ", None, None).unwrap_err().contains("no app id"));
        assert!(MarathonConfig::new("http://m", "a?b", None, None).unwrap_err().contains("'a?b'"));
        let no_endpoint = MarathonConfig::new("http://m", "a", Some(r#"{"uid":"u","password":"p"}"#), None);
        assert!(no_endpoint.unwrap_err().contains("login_endpoint"));
        let overridden =
            MarathonConfig::new("http://m", "a", Some(r#"{"uid":"u","password":"p"}"#), Some("http://l/acs"));
        assert!(overridden.is_ok());
    }
}
