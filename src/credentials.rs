//! The `Authorization` header mpp sends to the replicas (basic auth with a password file,
//! or a bearer token file), as Prometheus's `http_config` does, on probes and forwarded
//! requests alike. The files are read again every [`RELOAD_INTERVAL`], so a rotated
//! password or a projected service-account token is picked up without a restart; a file
//! that can no longer be read leaves the last value in use (and is logged).
//!
//! A client's own `Authorization` header is forwarded unchanged unless
//! `--backend-replace-authorization` is given: a client that brings credentials of its own
//! (a Grafana data source with basic auth for the replicas, say) keeps working through mpp.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use http::{HeaderMap, HeaderValue, header};

use crate::reload::Reread;

/// How often the password or token file is read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsSource {
    /// `--backend-basic-auth-user`, with the password in `--backend-basic-auth-password-file`
    /// (none: an empty password).
    Basic { user: String, password_file: Option<PathBuf> },
    /// `--backend-bearer-token-file`.
    Bearer { token_file: PathBuf },
}

/// A credentials file that cannot be used, named by its flag and path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {}: {problem}", path.display())]
pub struct CredentialsError {
    flag: &'static str,
    path: PathBuf,
    problem: String,
}

/// The `Authorization` header for the replicas, kept current.
pub struct Credentials {
    source: CredentialsSource,
    replace: bool,
    header: ArcSwap<HeaderValue>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The header itself is a secret.
        f.debug_struct("Credentials").field("source", &self.source).field("replace", &self.replace).finish()
    }
}

impl Credentials {
    /// Reads the files once; an error names the flag and the file. `replace` makes the
    /// header replace a client's own.
    pub fn load(source: CredentialsSource, replace: bool) -> Result<Credentials, CredentialsError> {
        let header = header_value(&source)?;
        Ok(Credentials { source, replace, header: ArcSwap::from_pointee(header) })
    }

    /// Sets the header on a forwarded request: unless the client sent its own (or `replace`).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.replace || !headers.contains_key(header::AUTHORIZATION) {
            self.insert(headers);
        }
    }

    /// Sets the header on a request of mpp's own (a probe).
    pub fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(header::AUTHORIZATION, HeaderValue::clone(&self.header.load()));
    }

    /// Reads the files again every [`RELOAD_INTERVAL`], forever; run it as a task.
    pub async fn watch(self: Arc<Self>, reloads: crate::reload::Reloads) {
        crate::reload::every(
            RELOAD_INTERVAL,
            &reloads,
            "credentials file",
            || self.refresh(),
            |reread| match reread {
                Reread::Read { changed: true, .. } => {
                    tracing::info!(source = %self.describe(), "credentials for the replicas changed; now in use");
                }
                Reread::Read { .. } => {}
                Reread::Failed(error) => {
                    tracing::error!(%error, "credentials for the replicas unreadable; the last ones stay in use");
                }
            },
        )
        .await
    }

    /// Reads the files again and uses what they hold now; `Ok(true)` if that changed.
    fn refresh(&self) -> Result<bool, CredentialsError> {
        let header = header_value(&self.source)?;
        let changed = header != **self.header.load();
        if changed {
            self.header.store(Arc::new(header));
        }
        Ok(changed)
    }

    /// What is sent, for the start-up log (never the secret).
    pub fn describe(&self) -> String {
        let replace = if self.replace { ", replacing the client's" } else { "" };
        match &self.source {
            CredentialsSource::Basic { user, password_file: Some(file) } => {
                format!("basic auth as {user} (password from {}){replace}", file.display())
            }
            CredentialsSource::Basic { user, password_file: None } => format!("basic auth as {user}{replace}"),
            CredentialsSource::Bearer { token_file } => {
                format!("bearer token from {}{replace}", token_file.display())
            }
        }
    }
}

/// The header the files make now. Surrounding whitespace (a final newline) is not part of a
/// password or token, as in Prometheus.
fn header_value(source: &CredentialsSource) -> Result<HeaderValue, CredentialsError> {
    let mut value = match source {
        CredentialsSource::Basic { user, password_file } => {
            let password = match password_file {
                Some(file) => read_secret("--backend-basic-auth-password-file", file)?,
                None => String::new(),
            };
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            HeaderValue::from_str(&format!("Basic {pair}")).expect("base64 always makes a valid header")
        }
        CredentialsSource::Bearer { token_file } => {
            let token = read_secret("--backend-bearer-token-file", token_file)?;
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| CredentialsError {
                flag: "--backend-bearer-token-file",
                path: token_file.clone(),
                problem: "holds characters that cannot go in an HTTP header".into(),
            })?
        }
    };
    // Kept out of HTTP/2 header compression tables and out of debug output.
    value.set_sensitive(true);
    Ok(value)
}

fn read_secret(flag: &'static str, path: &Path) -> Result<String, CredentialsError> {
    let problem = |problem: String| CredentialsError { flag, path: path.to_path_buf(), problem };
    let bytes = std::fs::read(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| problem("is not UTF-8 text".into()))?;
    let secret = text.trim();
    if secret.is_empty() && flag == "--backend-bearer-token-file" {
        return Err(problem("is empty".into()));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_reads_the_password_file_and_trims_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let source = CredentialsSource::Basic { user: "mpp".into(), password_file: Some(file) };
        let credentials = Credentials::load(source, false).unwrap();
        let mut headers = HeaderMap::new();
        credentials.insert(&mut headers);
        assert_eq!(headers[header::AUTHORIZATION], "Basic bXBwOnMzY3JldA=="); // mpp:s3cret
        assert!(headers[header::AUTHORIZATION].is_sensitive());
        assert!(!format!("{credentials:?}").contains("bXBw"));
    }

    #[test]
    fn a_clients_own_header_is_kept_unless_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc").unwrap();
        let source = CredentialsSource::Bearer { token_file: file };
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic Z3JhZmFuYTp4"));
        Credentials::load(source.clone(), false).unwrap().apply(&mut headers);
        assert_eq!(headers[header::AUTHORIZATION], "Basic Z3JhZmFuYTp4");
        Credentials::load(source.clone(), true).unwrap().apply(&mut headers);
        assert_eq!(headers[header::AUTHORIZATION], "Bearer abc");
        let mut empty = HeaderMap::new();
        Credentials::load(source, false).unwrap().apply(&mut empty);
        assert_eq!(empty[header::AUTHORIZATION], "Bearer abc");
    }

    #[test]
    fn unusable_files_are_named_without_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let missing = CredentialsSource::Bearer { token_file: dir.path().join("absent") };
        let e = Credentials::load(missing, false).unwrap_err().to_string();
        assert!(e.starts_with("--backend-bearer-token-file ") && e.contains("absent: cannot read it"), "{e}");
        let file = dir.path().join("token");
        std::fs::write(&file, "line one\nsecret-part\r\n").unwrap();
        let e =
            Credentials::load(CredentialsSource::Bearer { token_file: file.clone() }, false).unwrap_err().to_string();
        assert!(e.contains("cannot go in an HTTP header") && !e.contains("secret-part"), "{e}");
        std::fs::write(&file, "\n").unwrap();
        let e = Credentials::load(CredentialsSource::Bearer { token_file: file }, false).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn a_rotated_token_is_used_and_a_vanished_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first").unwrap();
        let credentials = Credentials::load(CredentialsSource::Bearer { token_file: file.clone() }, false).unwrap();
        let current = || {
            let mut headers = HeaderMap::new();
            credentials.insert(&mut headers);
            headers[header::AUTHORIZATION].to_str().unwrap().to_string()
        };
        assert_eq!(credentials.refresh(), Ok(false));
        std::fs::write(&file, "second\n").unwrap();
        assert_eq!(credentials.refresh(), Ok(true));
        assert_eq!(current(), "Bearer second");
        std::fs::remove_file(&file).unwrap();
        assert!(credentials.refresh().is_err());
        assert_eq!(current(), "Bearer second");
    }
}
