//! Jetline against nats-servers that require each kind of authentication,
//! TLS with a CA of the test's own, and mutual TLS; each positive test
//! copies events through a JetStream sink over that connection. The
//! negative ones show that refused credentials and certificates end `run`
//! at once (exit 1, long before `connect_timeout`) with an error saying
//! what was refused, and that a missing secret file is a configuration
//! error (exit 2) naming its key.

use std::{path::Path, time::Duration};

use async_nats::ConnectOptions;

use super::*;

/// Long, so that a failure that is retried instead of reported shows.
const CONNECT_TIMEOUT: &str = "connect_timeout: 30s";
const LIMIT: Duration = Duration::from_secs(20);

fn secret_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).expect("secret written");
    quoted(&path)
}

fn password_server(password: &'static str) -> NatsServer {
    NatsServer::start_with_config(&format!(
        "authorization {{ users: [ {{ user: app, password: \"{password}\" }} ] }}\n"
    ))
    .with_client_options(move || {
        ConnectOptions::with_user_and_password("app".into(), password.into())
    })
}

#[tokio::test]
async fn user_and_password_from_the_environment() {
    // Digits only: the environment value must stay text.
    let server = password_server("00731");
    let nats = format!("url: \"{}\", user: app", server.url());
    let env = [("JETLINE__NATS__PASSWORD", "00731")];
    assert_copies_events(&server, &nats, &env, "AUTH_PW_ENV").await;
}

#[tokio::test]
async fn user_and_password_file() {
    let dir = tempfile::tempdir().expect("a directory");
    let server = password_server("pw from a file");
    let file = secret_file(dir.path(), "password", "pw from a file");
    let nats = format!(
        "url: \"{}\", user: app, password_file: {file}",
        server.url()
    );
    assert_copies_events(&server, &nats, &[], "AUTH_PW_FILE").await;
}

fn token_server(token: &'static str) -> NatsServer {
    NatsServer::start_with_config(&format!("authorization {{ token: \"{token}\" }}\n"))
        .with_client_options(move || ConnectOptions::with_token(token.into()))
}

#[tokio::test]
async fn token_from_the_environment() {
    let server = token_server("t0k3n-env");
    let nats = format!("url: \"{}\"", server.url());
    let env = [("JETLINE__NATS__TOKEN", "t0k3n-env")];
    assert_copies_events(&server, &nats, &env, "AUTH_TOKEN_ENV").await;
}

#[tokio::test]
async fn token_file() {
    let dir = tempfile::tempdir().expect("a directory");
    let server = token_server("t0k3n-file");
    let file = secret_file(dir.path(), "token", "t0k3n-file");
    let nats = format!("url: \"{}\", token_file: {file}", server.url());
    assert_copies_events(&server, &nats, &[], "AUTH_TOKEN_FILE").await;
}

#[tokio::test]
async fn nkey_seed_file() {
    let dir = tempfile::tempdir().expect("a directory");
    let (public_key, seed) = user_nkey();
    let client_seed = seed.clone();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users: [ {{ nkey: {public_key} }} ] }}\n"
    ))
    .with_client_options(move || ConnectOptions::with_nkey(client_seed.clone()));
    let file = secret_file(dir.path(), "user.nk", &seed);
    let nats = format!("url: \"{}\", nkey_seed_file: {file}", server.url());
    assert_copies_events(&server, &nats, &[], "AUTH_NKEY").await;
}

#[tokio::test]
async fn creds_file_in_operator_mode() {
    let dir = tempfile::tempdir().expect("a directory");
    let operator = Operator::new();
    let creds = operator.creds.clone();
    let server =
        NatsServer::start_with_config(&operator.server_config).with_client_options(move || {
            ConnectOptions::with_credentials(&creds).expect("the test's creds parse")
        });
    let path = dir.path().join("user.creds");
    std::fs::write(&path, &operator.creds).expect("creds written");
    let nats = format!("url: \"{}\", creds_file: {}", server.url(), quoted(&path));
    assert_copies_events(&server, &nats, &[], "AUTH_CREDS").await;
}

/// A server with TLS: `server` its certificate; with `client_ca`, it
/// requires client certificates signed by that CA.
fn tls_server(server: &Issued, client_ca: Option<&Path>, trusted: &Path) -> NatsServer {
    let verify = client_ca
        .map(|ca| format!("  ca_file: \"{}\"\n  verify: true\n", ca.display()))
        .unwrap_or_default();
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n{verify}  timeout: 2\n}}\n",
        server.cert.display(),
        server.key.display()
    );
    let trusted = trusted.to_owned();
    NatsServer::start_with_config(&config).with_client_options(move || {
        ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(trusted.clone())
    })
}

#[tokio::test]
async fn tls_with_a_custom_ca() {
    let dir = tempfile::tempdir().expect("a directory");
    let ca = Ca::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "server", Usage::Server, Validity::Current);
    let server = tls_server(&cert, None, &ca.cert);
    let nats = format!(
        "url: \"{}\", tls: {{ ca: {} }}",
        server.url(),
        quoted(&ca.cert)
    );
    assert_copies_events(&server, &nats, &[], "TLS_CA").await;
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("a directory");
    let ca = Ca::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "server", Usage::Server, Validity::Current);
    let client = ca.issue(dir.path(), "client", Usage::Client, Validity::Current);
    let (client_cert, client_key) = (client.cert.clone(), client.key.clone());
    let trusted = ca.cert.clone();
    let server = tls_server(&cert, Some(&ca.cert), &ca.cert).with_client_options(move || {
        ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(trusted.clone())
            .add_client_certificate(client_cert.clone(), client_key.clone())
    });
    let nats = format!(
        "url: \"{}\", tls: {{ ca: {}, cert: {}, key: {} }}",
        server.url(),
        quoted(&ca.cert),
        quoted(&client.cert),
        quoted(&client.key)
    );
    assert_copies_events(&server, &nats, &[], "TLS_MUTUAL").await;
}

/// `run` ends at once with exit 1 and an error containing each of `says`.
fn assert_refused(nats: &str, env: &[(&str, &str)], stream: &str, says: &[&str]) {
    let nats = format!("{nats}, {CONNECT_TIMEOUT}");
    let ended = jetline_command(&["run"], &copy_yaml(&nats, stream), env, LIMIT);
    assert_eq!(ended.code, Some(1), "{}", ended.stderr);
    assert!(
        ended.took < Duration::from_secs(10),
        "refused at once, not retried until connect_timeout: {:?}",
        ended.took
    );
    let error = ended
        .stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line:\n{}", ended.stderr));
    assert!(error.contains("cannot connect to NATS"), "{error}");
    for expected in says {
        assert!(
            error.to_lowercase().contains(&expected.to_lowercase()),
            "{error:?} should say {expected:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_at_once() {
    let server = password_server("right");
    let nats = format!("url: \"{}\", user: app", server.url());
    let env = [("JETLINE__NATS__PASSWORD", "wrong")];
    assert_refused(
        &nats,
        &env,
        "BAD_PW",
        &["refused the credentials", "authorization violation"],
    );
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().expect("a directory");
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let cert = ca.issue(dir.path(), "server", Usage::Server, Validity::Current);
    let server = tls_server(&cert, None, &ca.cert);
    let nats = format!(
        "url: \"{}\", tls: {{ ca: {} }}",
        server.url(),
        quoted(&other.cert)
    );
    assert_refused(
        &nats,
        &[],
        "BAD_CA",
        &["certificate was not accepted", "UnknownIssuer"],
    );
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("a directory");
    let ca = Ca::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "server", Usage::Server, Validity::Expired);
    let server = tls_server(&cert, None, &ca.cert);
    let nats = format!(
        "url: \"{}\", tls: {{ ca: {} }}",
        server.url(),
        quoted(&ca.cert)
    );
    assert_refused(
        &nats,
        &[],
        "OLD_SERVER",
        &["certificate was not accepted", "expired"],
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("a directory");
    let ca = Ca::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "server", Usage::Server, Validity::Current);
    let client = ca.issue(dir.path(), "client", Usage::Client, Validity::Expired);
    let server = tls_server(&cert, Some(&ca.cert), &ca.cert);
    let nats = format!(
        "url: \"{}\", tls: {{ ca: {}, cert: {}, key: {} }}",
        server.url(),
        quoted(&ca.cert),
        quoted(&client.cert),
        quoted(&client.key)
    );
    assert_refused(
        &nats,
        &[],
        "OLD_CLIENT",
        &["ended the TLS handshake", "client certificate"],
    );
}

#[tokio::test]
async fn a_missing_secret_file_is_a_configuration_error_naming_its_key() {
    let server = token_server("never-read");
    let nats = format!(
        "url: \"{}\", token_file: \"/nonexistent/token\", {CONNECT_TIMEOUT}",
        server.url()
    );
    let ended = jetline_command(&["run"], &copy_yaml(&nats, "NO_FILE"), &[], LIMIT);
    assert_eq!(ended.code, Some(2), "{}", ended.stderr);
    assert!(ended.stderr.contains("nats.token_file"), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("/nonexistent/token"),
        "{}",
        ended.stderr
    );
}

#[test]
fn conflicting_authentication_settings_fail_check() {
    let cases = [
        (
            "user: app, token_file: /t",
            "nats",
            "one way to authenticate",
        ),
        ("password_file: /p", "nats.user", "needs a user"),
        ("tls: { cert: /c.pem }", "nats.tls.key", "needs its key"),
    ];
    for (keys, path, says) in cases {
        let nats = format!("url: \"nats://127.0.0.1:1\", {keys}");
        let ended = jetline_command(&["check"], &copy_yaml(&nats, "CHECKED"), &[], LIMIT);
        assert_eq!(ended.code, Some(2), "{keys}: {}", ended.stderr);
        assert!(
            ended.stderr.contains(&format!("{path} (line"))
                || ended.stderr.contains(&format!("{path}:")),
            "{keys}: {}",
            ended.stderr
        );
        assert!(ended.stderr.contains(says), "{keys}: {}", ended.stderr);
    }
}
