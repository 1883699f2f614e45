use super::*;

fn parse(text: &str) -> Result<WebConfig, WebConfigError> {
    WebConfig::parse(Path::new("/etc/mpp/web.yml"), text)
}

fn problem(text: &str) -> String {
    parse(text).expect_err("the config should be refused").to_string()
}

/// A well-formed bcrypt hash (cost 4); only its form is checked here.
const HASH: &str = "$2b$04$Pw5c5n6qd0SMIlrz8zgrF.yBpzvwcqNjqI2PYmZW8ZLlLU12DQxY6";

#[test]
fn an_empty_file_is_plain_http_without_auth() {
    let commented_out = "tls_server_config:\n#  cert_file: c\nhttp_server_config:\nbasic_auth_users:\nrate_limit:\n";
    for text in ["", "\n", "# nothing\n", "{}", commented_out] {
        let config = parse(text).unwrap();
        assert_eq!(config.tls, None);
        assert!(config.http2 && config.users.is_empty() && config.headers.is_empty());
        assert_eq!(config.rate_limit, None);
    }
}

#[test]
fn tls_defaults_follow_exporter_toolkit_and_paths_are_relative_to_the_file() {
    let config = parse("tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n").unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.cert, Pem::File("/etc/mpp/server.crt".into()));
    assert_eq!(tls.key, Pem::File("/abs/server.key".into()));
    assert_eq!((tls.min_version, tls.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert!(tls.prefer_server_cipher_suites);
}

#[test]
fn every_documented_field_is_read() {
    let text = format!(
        "tls_server_config:
  cert_file: c.pem
  key_file: k.pem
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  min_version: TLS13
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
  curve_preferences: [X25519, CurveP256]
  prefer_server_cipher_suites: false
  client_allowed_sans: [client.example]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
rate_limit:
  burst: 5
  interval: 1s
basic_auth_users:
  alice: {HASH}
"
    );
    let config = parse(&text).unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!(tls.client_ca, Some(Pem::File("/etc/mpp/ca.pem".into())));
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.cipher_suites.unwrap(), ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
    assert_eq!(tls.curve_preferences.unwrap(), ["X25519", "CurveP256"]);
    assert!(!tls.prefer_server_cipher_suites);
    assert_eq!(tls.client_allowed_sans.unwrap(), ["client.example"]);
    assert!(!config.http2);
    assert_eq!(config.headers.len(), 2);
    assert_eq!(config.rate_limit, Some(RateLimit { burst: 5, interval: Duration::from_secs(1) }));
    assert_eq!(config.users["alice"].expose(), HASH);
}

#[test]
fn unknown_and_repeated_fields_are_refused_naming_them() {
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  certfile: typo\n");
    assert!(e.contains("web config file /etc/mpp/web.yml") && e.contains("unknown field `certfile`"), "{e}");
    let e = problem("http_server_config:\n  http3: true\n");
    assert!(e.contains("unknown field `http3`"), "{e}");
    let e = problem("basic_auth: {}\n");
    assert!(e.contains("unknown field `basic_auth`"), "{e}");
    let e = problem("http_server_config: {http2: true}\nhttp_server_config: {http2: false}\n");
    assert!(e.contains("duplicate"), "{e}");
    let e = problem("http_server_config:\n  http2: maybe\n");
    assert!(e.contains("http2"), "{e}");
}

#[test]
fn incomplete_or_inconsistent_tls_is_refused_naming_the_field() {
    let e = problem("tls_server_config:\n  cert_file: c\n");
    assert!(e.contains("tls_server_config.key_file: missing one of key or key_file"), "{e}");
    let e = problem("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n");
    assert!(e.contains("missing one of cert or cert_file"), "{e}");
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n");
    assert!(e.contains("tls_server_config.client_ca_file") && e.contains("without a Client Auth Policy"), "{e}");
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Maybe\n");
    assert!(e.contains("tls_server_config.client_auth_type: invalid ClientAuth: 'Maybe'"), "{e}");
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS14\n");
    assert!(e.contains("tls_server_config.min_version: unknown TLS version: TLS14"), "{e}");
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  max_version: TLS11\n");
    assert!(e.contains("tls_server_config.max_version") && e.contains("TLS 1.2 and 1.3 only"), "{e}");
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n");
    assert!(e.contains("tls_server_config.min_version: is above max_version"), "{e}");
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n");
    assert!(e.contains("tls_server_config.cipher_suites: unknown cipher: TLS_RSA_WITH_RC4_128_SHA"), "{e}");
    let e = problem("tls_server_config:\n  cert_file: c\n  key_file: k\n  curve_preferences: [Curve25519]\n");
    assert!(e.contains("tls_server_config.curve_preferences: unknown curve: Curve25519"), "{e}");
}

#[test]
fn the_old_client_auth_name_and_tls10_minimum_are_accepted_as_in_go() {
    let config =
        parse("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireClientCert\n  min_version: TLS10\n")
            .unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.client_auth, ClientAuth::RequireAnyClientCert);
    assert_eq!(tls.min_version, TlsVersion::Tls10);
}

#[test]
fn inline_pem_is_taken_and_a_file_wins_over_it() {
    let config = parse(
        "tls_server_config:\n  cert: CERT\n  key: KEY\n  client_ca: CA\n  client_auth_type: VerifyClientCertIfGiven\n",
    )
    .unwrap();
    let tls = config.tls.unwrap();
    assert!(matches!(&tls.cert, Pem::Inline(text) if text.expose() == "CERT"));
    assert!(matches!(&tls.key, Pem::Inline(text) if text.expose() == "KEY"));
    assert!(matches!(&tls.client_ca, Some(Pem::Inline(text)) if text.expose() == "CA"));
    let config = parse("tls_server_config:\n  cert: CERT\n  cert_file: c.pem\n  key: KEY\n").unwrap();
    assert_eq!(config.tls.unwrap().cert, Pem::File("/etc/mpp/c.pem".into()));
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let config =
        parse(&format!("tls_server_config:\n  cert: CERT\n  key: PRIVATE-KEY\nbasic_auth_users:\n  alice: {HASH}\n"))
            .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("PRIVATE-KEY") && !debug.contains(HASH), "{debug}");
    assert!(debug.contains("alice"));
}

#[test]
fn only_exporter_toolkit_headers_and_values_are_allowed() {
    let e = problem("http_server_config:\n  headers:\n    Server: mpp\n");
    assert!(e.contains("http_server_config.headers.Server: HTTP header \"Server\" can not be configured"), "{e}");
    let e = problem("http_server_config:\n  headers:\n    x-frame-options: deny\n");
    assert!(e.contains("can not be configured"), "names match exactly, as in Go: {e}");
    let e = problem("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
    assert!(e.contains("invalid value for X-Frame-Options"), "{e}");
    let config =
        parse("http_server_config:\n  headers:\n    Content-Security-Policy: \"default-src 'self'\"\n").unwrap();
    assert_eq!(config.headers[0].1, "default-src 'self'");
}

#[test]
fn basic_auth_users_must_hold_bcrypt_hashes() {
    let e = problem("basic_auth_users:\n  alice: password\n");
    assert!(e.contains("basic_auth_users.alice: not a bcrypt hash"), "{e}");
    assert!(!e.contains("password\n") && !e.contains(": password"), "the value is not repeated: {e}");
    let cost_99 = HASH.replacen("$04$", "$99$", 1);
    let e = problem(&format!("basic_auth_users:\n  alice: '{cost_99}'\n"));
    assert!(e.contains("basic_auth_users.alice: bcrypt cost 99"), "{e}");
}

#[test]
fn a_rate_limit_needs_an_interval() {
    assert_eq!(parse("rate_limit:\n  burst: 3\n").unwrap().rate_limit, None);
    assert_eq!(parse("rate_limit:\n  burst: 3\n  interval: 0s\n").unwrap().rate_limit, None);
    let e = problem("rate_limit:\n  burst: 3\n  interval: soon\n");
    assert!(e.contains("rate_limit.interval"), "{e}");
}
