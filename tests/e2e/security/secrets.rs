//! Secrets only from the environment or files, and never shown: for each
//! NATS authentication kind, a configuration using it together with a
//! PostgreSQL URL holding a password (`url_env`, over TLS with scram) and a
//! webhook whose URL and `Authorization` header come from the environment.
//! The event reaches both sinks (so every secret was used), and none of the
//! secret values appears in the debug logs of the run, its `/metrics`, or
//! the output of `jetline check` and `jetline status`. Nor does one in the
//! errors of a run whose database refuses the password and whose webhook
//! cannot be reached: not in the logs, not in the dead letters.

use std::{path::Path, time::Duration};

use async_nats::ConnectOptions;

use super::*;

const PG_PASSWORD: &str = "pg-Secret-4411";
const HOOK_TOKEN: &str = "Bearer hook-Secret-5522";
const HOOK_KEY: &str = "url-Secret-6633";
const NATS_PASSWORD: &str = "nats-Secret-7744";
const NATS_TOKEN: &str = "nats-Token-8855";

/// One way to authenticate to NATS: the server, the `nats:` keys besides
/// the URL, the environment, and the secret values it involves.
struct NatsAuth {
    name: &'static str,
    server: NatsServer,
    keys: String,
    env: Vec<(String, String)>,
    secrets: Vec<String>,
}

fn nats_auths(dir: &Path) -> Vec<NatsAuth> {
    let (public_key, seed) = user_nkey();
    let seed_file = dir.join("user.nk");
    std::fs::write(&seed_file, &seed).expect("seed written");
    let client_seed = seed.clone();
    let operator = Operator::new();
    let creds_file = dir.join("user.creds");
    std::fs::write(&creds_file, &operator.creds).expect("creds written");
    let creds = operator.creds.clone();
    vec![
        NatsAuth {
            name: "PASSWORD",
            server: NatsServer::start_with_config(&format!(
                "authorization {{ users: [ {{ user: app, password: \"{NATS_PASSWORD}\" }} ] }}\n"
            ))
            .with_client_options(|| {
                ConnectOptions::with_user_and_password("app".into(), NATS_PASSWORD.into())
            }),
            keys: "user: app".to_owned(),
            env: vec![("JETLINE__NATS__PASSWORD".into(), NATS_PASSWORD.into())],
            secrets: vec![NATS_PASSWORD.into()],
        },
        NatsAuth {
            name: "TOKEN",
            server: NatsServer::start_with_config(&format!(
                "authorization {{ token: \"{NATS_TOKEN}\" }}\n"
            ))
            .with_client_options(|| ConnectOptions::with_token(NATS_TOKEN.into())),
            keys: String::new(),
            env: vec![("JETLINE__NATS__TOKEN".into(), NATS_TOKEN.into())],
            secrets: vec![NATS_TOKEN.into()],
        },
        NatsAuth {
            name: "NKEY",
            server: NatsServer::start_with_config(&format!(
                "authorization {{ users: [ {{ nkey: {public_key} }} ] }}\n"
            ))
            .with_client_options(move || ConnectOptions::with_nkey(client_seed.clone())),
            keys: format!("nkey_seed_file: {}", quoted(&seed_file)),
            env: Vec::new(),
            secrets: vec![seed],
        },
        NatsAuth {
            name: "CREDS",
            server: NatsServer::start_with_config(&operator.server_config).with_client_options(
                move || ConnectOptions::with_credentials(&creds).expect("creds parse"),
            ),
            keys: format!("creds_file: {}", quoted(&creds_file)),
            env: Vec::new(),
            secrets: vec![operator.user_seed.clone(), operator.user_jwt.clone()],
        },
    ]
}

/// Source `<stream>.>` into a PostgreSQL sink and a webhook, their
/// connection strings and header from `<stream>_*` variables.
fn both_sinks_yaml(auth: &NatsAuth, stream: &str, metrics_port: u16, extra: &str) -> String {
    let table = stream.to_lowercase();
    let mut nats = format!("url: \"{}\"", auth.server.url());
    if !auth.keys.is_empty() {
        nats = format!("{nats}, {}", auth.keys);
    }
    let body = format!(
        "
sources:
  orders: {{ stream: {stream}, subjects: ['{stream}.>'] }}
sinks:
  rows:
    type: postgres
    url_env: {stream}_PG_URL
    checkpoint_table: {table}_checkpoints
    on:
      orders.OrderCreated: {{ sql: 'INSERT INTO {table} (id) VALUES ($1)', params: [aggregate_id] }}
  hook:
    type: http
    url_env: {stream}_HOOK_URL
    headers_env: {{ Authorization: {stream}_HOOK_TOKEN }}
routes:
  - {{ name: all, from: orders, to: [rows, hook] }}
dead_letter: {{ stream: DLQ_{stream}, subject_prefix: dlq_{stream} }}
{extra}
"
    );
    config_yaml_nats(&nats, &body).replace(
        "listen: \"127.0.0.1:0\"",
        &format!("listen: \"127.0.0.1:{metrics_port}\""),
    )
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn no_secret_appears_in_logs_check_status_or_metrics() {
    let dir = tempfile::tempdir().expect("a directory");
    let (ca, pg) = super::pg_tls::tls_cluster(dir.path(), Some(PG_PASSWORD));
    assert!(
        pg.url().contains(PG_PASSWORD),
        "the URL carries the password"
    );
    let pg_url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.cert.display()
    );
    let client = pg.client().await;
    let hook = Webhook::start(|_| Answer::status(204)).await;

    for auth in nats_auths(dir.path()) {
        let stream = format!("SECRET_{}", auth.name);
        let table = stream.to_lowercase();
        client
            .batch_execute(&format!("CREATE TABLE {table} (id text PRIMARY KEY)"))
            .await
            .expect("table created");
        let js = auth.server.jetstream().await;
        create_stream(&js, &stream, &[&format!("{stream}.>")]).await;
        let event_id = format!("{stream}-0");
        let event = created_v3(&event_id, &format!("order-{}", auth.name), 1);
        publish_all(
            &js,
            vec![Outgoing::binary(&format!("{stream}.created"), &event)],
        )
        .await;

        let mut env: Vec<(String, String)> = auth.env.clone();
        env.push((format!("{stream}_PG_URL"), pg_url.clone()));
        env.push((
            format!("{stream}_HOOK_URL"),
            format!("{}?key={HOOK_KEY}", hook.url),
        ));
        env.push((format!("{stream}_HOOK_TOKEN"), HOOK_TOKEN.to_owned()));
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let mut secrets = auth.secrets.clone();
        secrets.extend([PG_PASSWORD, HOOK_TOKEN, HOOK_KEY].map(str::to_owned));

        let metrics_port = free_port();
        let yaml = both_sinks_yaml(&auth, &stream, metrics_port, "");
        let mut jetline = Process::start_logged(&yaml, &env, "debug");
        for sink in ["rows", "hook"] {
            settled_while_running(&mut jetline, &js, &stream, sink).await;
        }
        // Both sinks used their secrets: the row is there, the hook got
        // the header.
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("rows counted")
            .get(0);
        assert_eq!(rows, 1, "{stream}: the row written");
        let requests = hook.by_key();
        let delivered = requests
            .get(&event_id)
            .unwrap_or_else(|| panic!("{stream}: the webhook was called"));
        assert_eq!(delivered[0].header("authorization"), Some(HOOK_TOKEN));

        let (status, metrics) = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .expect("/metrics answers");
        assert_eq!(status, 200);
        assert!(metrics.contains("jetline_events_total"), "{metrics}");
        assert_no_secret("/metrics", &metrics, &secrets);

        for (command, shows) in [
            ("check", "configuration ok"),
            ("status", "jetline-orders-rows"),
        ] {
            let ended = jetline_command(&[command], &yaml, &env, Duration::from_secs(30));
            assert_eq!(ended.code, Some(0), "{command}: {}", ended.stderr);
            assert!(ended.stdout.contains(shows), "{command}: {}", ended.stdout);
            assert_no_secret(command, &(ended.stdout + &ended.stderr), &secrets);
        }

        let logs = jetline.logs();
        assert_eq!(jetline.terminate(), Some(0));
        assert!(
            logs.contains("Connected to NATS"),
            "debug logs captured:\n{logs}"
        );
        assert_no_secret("the logs", &logs, &secrets);
    }

    failures_show_no_secret(&pg, &ca).await;
}

/// The database refuses the password, the webhook's port is closed: the
/// errors are logged and dead-lettered without the secrets.
async fn failures_show_no_secret(pg: &Postgres, ca: &Ca) {
    const WRONG_PASSWORD: &str = "wrong-Secret-9966";
    let auth = NatsAuth {
        name: "FAILING",
        server: NatsServer::start(),
        keys: String::new(),
        env: Vec::new(),
        secrets: Vec::new(),
    };
    let stream = "SECRET_FAILING";
    let js = auth.server.jetstream().await;
    create_stream(&js, stream, &[&format!("{stream}.>")]).await;
    let event = created_v3(&format!("{stream}-0"), "order-failing", 1);
    publish_all(
        &js,
        vec![Outgoing::binary(&format!("{stream}.created"), &event)],
    )
    .await;
    let pg_url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url().replace(PG_PASSWORD, WRONG_PASSWORD),
        ca.cert.display()
    );
    let hook_url = format!("http://127.0.0.1:{}/hook?key={HOOK_KEY}", free_port());
    let env = [
        (format!("{stream}_PG_URL"), pg_url),
        (format!("{stream}_HOOK_URL"), hook_url),
        (format!("{stream}_HOOK_TOKEN"), HOOK_TOKEN.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let secrets = [WRONG_PASSWORD, PG_PASSWORD, HOOK_TOKEN, HOOK_KEY].map(str::to_owned);
    let retry_once = "consumers: { retry: { max_attempts: 1 } }";
    let yaml = both_sinks_yaml(&auth, stream, free_port(), retry_once);
    let jetline = Process::start_logged(&yaml, &env, "debug");
    let letters = eventually(Duration::from_secs(30), "both sinks dead-lettered", || {
        let js = &js;
        async move {
            let dead_letters = format!("DLQ_{stream}");
            if stream_count(js, &dead_letters).await < 2 {
                return None;
            }
            Some(stream_messages(js, &dead_letters).await)
        }
    })
    .await;
    for letter in letters {
        let headers: Vec<String> = letter
            .headers
            .iter()
            .map(|(name, values)| format!("{name}: {values:?}"))
            .collect();
        let headers = headers.join("\n");
        assert!(headers.contains("max_attempts"), "{headers}");
        assert_no_secret("a dead letter", &headers, &secrets);
    }
    let logs = jetline.logs();
    assert_eq!(jetline.terminate(), Some(0));
    assert!(logs.contains("password authentication failed"), "{logs}");
    assert_no_secret("the logs of failures", &logs, &secrets);
}
