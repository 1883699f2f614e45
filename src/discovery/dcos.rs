//! DC/OS service-account login, for Marathon behind the DC/OS admin router: the principal
//! secret (`--marathon-principal-secret`), and trading it for an authentication token at the
//! login endpoint. Secrets and tokens never reach a log line, a page or a `Debug` output.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::client::HttpClient;
use crate::error::error_chain;

/// How long the login JWT is valid: only long enough to be exchanged for a token.
const LOGIN_JWT_LIFETIME: Duration = Duration::from_secs(300);
/// The most a login or Marathon answer is read.
const MAX_ANSWER: usize = 32 << 20;

/// How the service account proves who it is.
#[derive(Clone)]
enum Credentials {
    /// An RSA private key: a short RS256 JWT is signed with it.
    Key(EncodingKey),
    /// A password, sent as it is.
    Password(String),
}

/// A DC/OS service-account secret: `{"uid", "private_key", "login_endpoint", "scheme"}`, or
/// `{"uid", "password", "login_endpoint"}`.
#[derive(Clone)]
pub struct PrincipalSecret {
    uid: String,
    credentials: Credentials,
    login_endpoint: Option<String>,
}

impl fmt::Debug for PrincipalSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalSecret")
            .field("uid", &self.uid)
            .field("credentials", &"<redacted>")
            .field("login_endpoint", &self.login_endpoint)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawSecret {
    uid: Option<String>,
    private_key: Option<String>,
    password: Option<String>,
    login_endpoint: Option<String>,
    scheme: Option<String>,
}

#[derive(Serialize)]
struct LoginClaims<'a> {
    uid: &'a str,
    exp: u64,
}

#[derive(Serialize)]
struct LoginRequest<'a> {
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
}

#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
}

impl PrincipalSecret {
    /// Parses a secret: its JSON text, or the path of a file holding it. Errors say what is
    /// wrong without repeating any of the secret.
    pub fn parse(value: &str) -> Result<Self, String> {
        let text = if value.trim_start().starts_with('{') {
            value.to_string()
        } else {
            std::fs::read_to_string(value.trim())
                .map_err(|e| format!("is neither JSON nor a readable file ({})", e.kind()))?
        };
        let raw: RawSecret = serde_json::from_str(&text).map_err(|e| {
            // serde_json's messages name a line and column, never the content.
            format!("is not valid JSON ({e})")
        })?;
        let uid = raw.uid.filter(|u| !u.is_empty()).ok_or("lacks the field 'uid'")?;
        if let Some(scheme) = raw.scheme.as_deref().filter(|s| *s != "RS256") {
            return Err(format!("has scheme '{scheme}'; only RS256 is supported"));
        }
        let credentials = match (raw.private_key, raw.password) {
            (Some(pem), _) => {
                let key = EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|_| "holds a 'private_key' that is not a PEM RSA private key (PKCS#1 or PKCS#8)")?;
                // jsonwebtoken checks the key itself only when signing: sign once now.
                let probe = LoginClaims { uid: &uid, exp: 0 };
                jsonwebtoken::encode(&Header::new(Algorithm::RS256), &probe, &key)
                    .map_err(|_| "holds a 'private_key' that cannot sign (not a valid RSA key)")?;
                Credentials::Key(key)
            }
            (None, Some(password)) => Credentials::Password(password),
            (None, None) => return Err("lacks the field 'private_key' (or 'password')".into()),
        };
        Ok(PrincipalSecret { uid, credentials, login_endpoint: raw.login_endpoint.filter(|e| !e.is_empty()) })
    }

    /// The login endpoint the secret names, if any.
    pub fn login_endpoint(&self) -> Option<&str> {
        self.login_endpoint.as_deref()
    }

    /// The service account's uid (not secret).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Logs in at `endpoint` and returns the authentication token.
    pub async fn login(&self, client: &HttpClient, endpoint: &str) -> Result<String, String> {
        let jwt;
        let request = match &self.credentials {
            Credentials::Key(key) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                let claims = LoginClaims { uid: &self.uid, exp: (now + LOGIN_JWT_LIFETIME).as_secs() };
                jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
                    .map_err(|e| format!("cannot sign the login token: {e}"))?;
                LoginRequest { uid: &self.uid, token: Some(&jwt), password: None }
            }
            Credentials::Password(password) => LoginRequest { uid: &self.uid, token: None, password: Some(password) },
        };
        let body = serde_json::to_vec(&request).map_err(|e| format!("cannot encode the login request: {e}"))?;
        let request = Request::post(endpoint)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad login endpoint '{endpoint}': {e}"))?;
        let (status, body) = send(client, request).await.map_err(|e| format!("login at {endpoint} failed: {e}"))?;
        if !status.is_success() {
            return Err(format!("login at {endpoint} as '{}' was refused: HTTP {status}", self.uid));
        }
        let answer: LoginAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("login at {endpoint}: the answer holds no token ({e})"))?;
        Ok(answer.token)
    }
}

/// Sends a request and reads the whole answer (bounded).
pub(super) async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String> {
    let work = async {
        let response = client.request(request).await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {}", error_chain(e.as_ref())))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.map_err(|_| "no answer within 10s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_secrets_say_what_is_wrong_without_repeating_them() {
        let cases = [
            ("{\"uid\": \"mpp\", \"private_key\": \"hunter2-not-a-key\"}", "not a PEM RSA private key"),
            ("{\"private_key\": \"x\"}", "lacks the field 'uid'"),
            ("{\"uid\": \"mpp\"}", "lacks the field 'private_key'"),
            ("{\"uid\": \"mpp\", \"password\": \"p\", \"scheme\": \"HS256\"}", "only RS256"),
            ("{\"uid\": \"mpp\", \"password\": \"hunter2\",", "not valid JSON"),
            ("/nonexistent/secret.json", "neither JSON nor a readable file"),
        ];
        for (secret, expected) in cases {
            let error = PrincipalSecret::parse(secret).unwrap_err();
            assert!(error.contains(expected), "{secret}: {error}");
            assert!(!error.contains("hunter2"), "the error repeats the secret: {error}");
        }
    }

    #[test]
    fn password_secrets_parse_and_debug_hides_them() {
        let s =
            PrincipalSecret::parse(r#"{"uid":"mpp","password":"hunter2","login_endpoint":"https://x/acs"}"#).unwrap();
        assert_eq!(s.login_endpoint(), Some("https://x/acs"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
