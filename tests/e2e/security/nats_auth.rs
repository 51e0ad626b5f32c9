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

/// A CA of the test's own, a nats-server with TLS whose certificate it
/// signed (valid or not), and, for mutual TLS (`verify: true`), a client
/// certificate for Jetline (valid or not) beside the test's own.
struct TlsCase {
    dir: tempfile::TempDir,
    ca: Ca,
    server: NatsServer,
    client: Option<Issued>,
}

impl TlsCase {
    fn new(server_validity: Validity, client_validity: Option<Validity>) -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = Ca::new(dir.path(), "ca");
        let cert = ca.issue(dir.path(), "server", Usage::Server, server_validity);
        let mut config = format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n",
            cert.cert.display(),
            cert.key.display()
        );
        let client = client_validity.map(|validity| {
            config.push_str(&format!(
                "  ca_file: \"{}\"\n  verify: true\n",
                ca.cert.display()
            ));
            ca.issue(dir.path(), "client", Usage::Client, validity)
        });
        config.push_str("}\n");
        let own = client_validity
            .map(|_| ca.issue(dir.path(), "test-client", Usage::Client, Validity::Current));
        let trusted = ca.cert.clone();
        let server = NatsServer::start_with_config(&config).with_client_options(move || {
            let options = ConnectOptions::new()
                .require_tls(true)
                .add_root_certificates(trusted.clone());
            match &own {
                Some(own) => options.add_client_certificate(own.cert.clone(), own.key.clone()),
                None => options,
            }
        });
        Self {
            dir,
            ca,
            server,
            client,
        }
    }

    /// The `nats:` keys trusting `ca`, with the client certificate if any.
    fn keys(&self, ca: &Path) -> String {
        let client = self
            .client
            .as_ref()
            .map(|client| {
                format!(
                    ", cert: {}, key: {}",
                    quoted(&client.cert),
                    quoted(&client.key)
                )
            })
            .unwrap_or_default();
        format!(
            "url: \"{}\", tls: {{ ca: {}{client} }}",
            self.server.url(),
            quoted(ca)
        )
    }
}

#[tokio::test]
async fn tls_with_a_custom_ca() {
    let case = TlsCase::new(Validity::Current, None);
    assert_copies_events(&case.server, &case.keys(&case.ca.cert), &[], "TLS_CA").await;
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let case = TlsCase::new(Validity::Current, Some(Validity::Current));
    assert_copies_events(&case.server, &case.keys(&case.ca.cert), &[], "TLS_MUTUAL").await;
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
    let case = TlsCase::new(Validity::Current, None);
    let other = Ca::new(case.dir.path(), "other-ca");
    let says = ["certificate was not accepted", "UnknownIssuer"];
    assert_refused(&case.keys(&other.cert), &[], "BAD_CA", &says);
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let case = TlsCase::new(Validity::Expired, None);
    let says = ["certificate was not accepted", "expired"];
    assert_refused(&case.keys(&case.ca.cert), &[], "OLD_SERVER", &says);
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let case = TlsCase::new(Validity::Current, Some(Validity::Expired));
    let says = ["ended the TLS handshake", "client certificate"];
    assert_refused(&case.keys(&case.ca.cert), &[], "OLD_CLIENT", &says);
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
