//! NATS credentials for the authentication tests: nkeys, and the operator,
//! account and user JWTs of decentralised authentication, signed here with
//! the `nkeys` crate (header `{"typ":"JWT","alg":"ed25519-nkey"}`), with the
//! server configuration that preloads them and the user's `.creds` file.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use nkeys::KeyPair;
use serde_json::{Value, json};

/// Operator mode: the server's configuration text and one user's
/// credentials (JWT and seed).
pub struct Operator {
    /// For [`NatsServer::start_with_config`](super::NatsServer::start_with_config).
    pub server_config: String,
    /// The text of a `.creds` file.
    pub creds: String,
    pub user_jwt: String,
    pub user_seed: String,
}

impl Operator {
    /// An operator with a system account and one account with JetStream
    /// (no limits), whose one user may publish and subscribe to anything.
    pub fn new() -> Self {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let operator_jwt = sign(
            &operator,
            &operator.public_key(),
            "operator",
            json!({ "type": "operator", "version": 2 }),
        );
        let account_claims = |jetstream: bool| {
            let mut limits = json!({
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
            });
            if jetstream {
                for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
                    limits[key] = json!(-1);
                }
            }
            json!({
                "limits": limits,
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2,
            })
        };
        let system_jwt = sign(
            &operator,
            &system.public_key(),
            "SYS",
            account_claims(false),
        );
        let account_jwt = sign(
            &operator,
            &account.public_key(),
            "APP",
            account_claims(true),
        );
        let user_jwt = sign(
            &account,
            &user.public_key(),
            "jetline",
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        );
        let user_seed = user.seed().expect("a user seed");
        let server_config = format!(
            "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\nresolver_preload: {{\n  {system}: {system_jwt}\n  {account}: {account_jwt}\n}}\n",
            system = system.public_key(),
            account = account.public_key(),
        );
        let creds = creds_file(&user_jwt, &user_seed);
        Self {
            server_config,
            creds,
            user_jwt,
            user_seed,
        }
    }
}

/// A JWT for `subject`, issued and signed by `issuer`.
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({
        "jti": format!("{subject}-{issued_at}"),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = issuer
        .sign(signing_input.as_bytes())
        .expect("the JWT is signed");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The `.creds` format of `nsc`.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// A new user nkey: its public key (for the server) and seed (for the client).
pub fn user_nkey() -> (String, String) {
    let user = KeyPair::new_user();
    (user.public_key(), user.seed().expect("a seed"))
}
