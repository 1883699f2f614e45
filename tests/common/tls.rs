//! Test support for TLS and authentication: certificates made at run time (a CA, server and
//! client certificates, an expired one), curl as a real client, and a real Prometheus
//! started with its own configuration and, optionally, its own web config file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::Prometheus;

/// A certificate authority that issues certificates into a folder.
pub struct Pki {
    dir: PathBuf,
    name: String,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server on 127.0.0.1 and localhost.
    Server,
    /// A client.
    Client,
}

impl Pki {
    /// A new CA called `name`; its certificate is written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write the CA certificate");
        Pki { dir: dir.to_path_buf(), name: name.into(), ca }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Issues a certificate with common name `cn`, valid from 1975 to 4096 (rcgen's
    /// defaults), written to `<cn>.pem` and `<cn>-key.pem`.
    pub fn issue(&self, cn: &str, usage: Usage) -> Issued {
        self.issue_with(cn, usage, |_| {})
    }

    /// Issues a certificate that expired in 2021.
    pub fn issue_expired(&self, cn: &str, usage: Usage) -> Issued {
        self.issue_with(cn, usage, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(&self, cn: &str, usage: Usage, adjust: impl FnOnce(&mut CertificateParams)) -> Issued {
        let names = match usage {
            Usage::Server => vec!["127.0.0.1".to_string(), "localhost".to_string()],
            Usage::Client => vec![format!("{cn}.clients.test")],
        };
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        adjust(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("certificate");
        let issued = Issued { cert: self.dir.join(format!("{cn}.pem")), key: self.dir.join(format!("{cn}-key.pem")) };
        write_atomically(&issued.cert, &cert.pem());
        write_atomically(&issued.key, &key.serialize_pem());
        issued
    }
}

/// Replaces a file by renaming a new one over it, as certificate tooling does.
pub fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).expect("write a file");
    std::fs::rename(&temporary, path).expect("rename a file into place");
}

/// What curl got.
#[derive(Debug)]
pub struct Curl {
    /// The HTTP status, or 0 when no answer came (the handshake failed, say).
    pub status: u16,
    /// `1.1` or `2`.
    pub http_version: String,
    /// The answer's head and body, as curl printed them.
    pub output: String,
    /// curl's diagnostics (`-v` details included when asked for).
    pub stderr: String,
}

impl Curl {
    /// The value of header `name` (case-insensitive), if the answer has it.
    pub fn header(&self, name: &str) -> Option<String> {
        self.output.lines().take_while(|line| !line.trim().is_empty()).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    }
}

/// Runs curl (10 s at most) with `args` and the URL; never fails, what happened is returned.
pub fn curl<S: AsRef<std::ffi::OsStr>>(url: &str, args: &[S]) -> Curl {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--include", "--max-time", "10"])
        .args(["--write-out", "\n%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (output_text, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (status, http_version) = last.split_once(' ').unwrap_or(("0", ""));
    Curl {
        status: status.parse().unwrap_or(0),
        http_version: http_version.to_string(),
        output: output_text.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A real Prometheus replica that requires TLS, a client certificate from its own CA and
/// basic auth, by its own `--web.config.file`; it scrapes itself the same way.
pub struct SecuredReplica {
    pub prometheus: Prometheus,
    /// The CA that issued the replica's server certificate.
    pub server_ca: PathBuf,
    /// A client certificate the replica accepts (for mpp).
    pub client: Issued,
    /// The basic auth user the replica knows.
    pub user: String,
    /// mpp's copy of the password, for `--backend-basic-auth-password-file`.
    pub password_file: PathBuf,
    web_config: PathBuf,
    own_password_file: PathBuf,
}

impl SecuredReplica {
    /// Starts one with its certificates and files in `dir`, and waits until it is ready.
    pub async fn start(dir: &Path, password: &str) -> SecuredReplica {
        let servers = Pki::new(dir, "replica-servers");
        let clients = Pki::new(dir, "replica-clients");
        let server = servers.issue("replica", Usage::Server);
        let own = clients.issue("replica-self", Usage::Client);
        let show = |p: &Path| p.display().to_string();
        let web_config = dir.join("replica-web.yml");
        std::fs::write(
            &web_config,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
                show(&server.cert),
                show(&server.key),
                show(&clients.ca_file())
            ),
        )
        .expect("write the replica's web config");
        let own_password_file = dir.join("replica-password");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: prometheus
    scheme: https
    basic_auth: {{username: mpp, password_file: {password}}}
    tls_config: {{ca_file: {ca}, cert_file: {cert}, key_file: {key}}}
    static_configs: [{{targets: ['127.0.0.1:{{port}}']}}]
",
            password = show(&own_password_file),
            ca = show(&servers.ca_file()),
            cert = show(&own.cert),
            key = show(&own.key),
        );
        let mut replica = SecuredReplica {
            prometheus: Prometheus::unstarted(),
            server_ca: servers.ca_file(),
            client: clients.issue("mpp-client", Usage::Client),
            user: "mpp".into(),
            password_file: dir.join("mpp-password"),
            web_config,
            own_password_file,
        };
        std::fs::write(&replica.password_file, format!("{password}\n")).expect("write mpp's password file");
        replica.set_password(password);
        let ready_args = replica.curl_args();
        let flags = [format!("--web.config.file={}", replica.web_config.display())];
        replica.prometheus = Prometheus::start_custom(&config, &flags, move |port| {
            curl(&format!("https://127.0.0.1:{port}/-/ready"), &ready_args).status == 200
        })
        .await;
        replica
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.prometheus.port())
    }

    /// curl arguments with everything the replica requires.
    pub fn curl_args(&self) -> Vec<String> {
        let password = std::fs::read_to_string(&self.own_password_file).expect("read the password");
        [
            "--cacert",
            &self.server_ca.display().to_string(),
            "--cert",
            &self.client.cert.display().to_string(),
            "--key",
            &self.client.key.display().to_string(),
            "--user",
            &format!("{}:{}", self.user, password.trim()),
        ]
        .map(String::from)
        .to_vec()
    }

    /// mpp's flags to reach it: its CA, the client certificate, the user and password file.
    pub fn mpp_flags(&self) -> Vec<String> {
        let show = |p: &Path| p.display().to_string();
        vec![
            format!("--backend-ca-file={}", show(&self.server_ca)),
            format!("--backend-cert-file={}", show(&self.client.cert)),
            format!("--backend-key-file={}", show(&self.client.key)),
            format!("--backend-basic-auth-user={}", self.user),
            format!("--backend-basic-auth-password-file={}", show(&self.password_file)),
        ]
    }

    /// Makes the replica require `password` from now on (Prometheus reads its web config
    /// file on every request), and gives it to its own scrapes; mpp's copy is left alone.
    pub fn set_password(&self, password: &str) {
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        let text = std::fs::read_to_string(&self.web_config).expect("read the replica's web config");
        let tls = text.split("basic_auth_users:").next().unwrap_or_default().to_string();
        write_atomically(&self.web_config, &format!("{tls}basic_auth_users:\n  {}: {hash}\n", self.user));
        write_atomically(&self.own_password_file, password);
    }
}

/// A stand-in replica on loopback that answers probes like Prometheus and records the head
/// of every request it gets, to show what mpp sends replicas. Stopped when dropped.
pub struct RecordingReplica {
    pub url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, http::HeaderMap)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingReplica {
    pub async fn start() -> RecordingReplica {
        use http_body_util::Full;
        use hyper::service::service_fn;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    record.lock().unwrap().push((request.uri().path().to_string(), request.headers().clone()));
                    let body = match request.uri().path() {
                        "/metrics" => "prometheus_tsdb_head_samples_appended_total 1\n",
                        "/api/v1/query" => {
                            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[0,"1"]}]}}"#
                        }
                        _ => r#"{"status":"success","data":[]}"#,
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from(body))))
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        RecordingReplica { url, seen, task }
    }

    /// The heads of the requests for `path` so far, oldest first.
    pub fn requests_for(&self, path: &str) -> Vec<http::HeaderMap> {
        self.seen.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, h)| h.clone()).collect()
    }
}

impl Drop for RecordingReplica {
    fn drop(&mut self) {
        self.task.abort();
    }
}
