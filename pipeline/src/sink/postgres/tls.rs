//! TLS for the PostgreSQL sink, as libpq's `sslmode` and `sslrootcert` in
//! the connection string say: `disable`, `prefer` (the default) and
//! `require` encrypt without verifying the server, `verify-ca` checks its
//! certificate against `sslrootcert`, `verify-full` also checks that the
//! certificate names the host. As in libpq, `require` with `sslrootcert`
//! verifies like `verify-ca`.
//!
//! tokio-postgres knows only the first three modes and no `sslrootcert`:
//! both are taken out of the connection string here, before it is parsed.
//! No error quotes the connection string, which may hold a password.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    server::ParsedCertificate,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why the connection string's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The text is not shown: it may hold a password.
    #[error("the connection string is not valid")]
    InvalidString,
    #[error("sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    #[error("sslmode={0} needs sslrootcert=<file>, the CA certificate to verify the server with")]
    MissingRootCert(&'static str),
    #[error("sslrootcert {}: {message}", path.display())]
    RootCert { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn parse(text: &str) -> Result<Self, TlsSetupError> {
        match text {
            "disable" => Ok(TlsMode::Disable),
            "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" => Ok(TlsMode::VerifyFull),
            other => Err(TlsSetupError::UnknownMode(other.to_owned())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// A connection string made ready: tokio-postgres' configuration and the
/// TLS connector its mode asks for.
pub struct Connection {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: TlsMode,
}

/// Reads `sslmode` and `sslrootcert` out of `connection_string` (URL or
/// `key=value` form) and builds the connector.
pub fn prepare(connection_string: &str) -> Result<Connection, TlsSetupError> {
    let (rest, settings) = take_tls_settings(connection_string)?;
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|_| TlsSetupError::InvalidString)?;
    let requested = match &settings.mode {
        Some(text) => TlsMode::parse(text)?,
        None => TlsMode::Prefer,
    };
    let mode = match (requested, &settings.root_cert) {
        (TlsMode::Require, Some(_)) => TlsMode::VerifyCa,
        (other, _) => other,
    };
    config.ssl_mode(match mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let client_config = match (mode, settings.root_cert) {
        (TlsMode::VerifyFull, Some(path)) => builder
            .with_root_certificates(root_store(path)?)
            .with_no_client_auth(),
        (TlsMode::VerifyCa, Some(path)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: Some(root_store(path)?),
                provider,
            }))
            .with_no_client_auth(),
        (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
            return Err(TlsSetupError::MissingRootCert(mode.name()));
        }
        (TlsMode::Disable | TlsMode::Prefer | TlsMode::Require, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(Connection {
        config,
        tls: MakeRustlsConnect::new(client_config),
        mode,
    })
}

/// The TLS settings found in a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsSettings {
    mode: Option<String>,
    root_cert: Option<PathBuf>,
}

impl TlsSettings {
    /// Takes `key` if it is one of ours; `false` leaves it in the string.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.root_cert = Some(PathBuf::from(value)),
            _ => return false,
        }
        true
    }
}

/// The connection string without `sslmode` and `sslrootcert`, and their values.
fn take_tls_settings(text: &str) -> Result<(String, TlsSettings), TlsSetupError> {
    let mut settings = TlsSettings::default();
    let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
    if !is_url {
        let mut kept = Vec::new();
        for (key, value) in key_values(text)? {
            if !settings.take(&key, value.clone()) {
                kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        return Ok((kept.join(" "), settings));
    }
    let Some((base, query)) = text.split_once('?') else {
        return Ok((text.to_owned(), settings));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !settings.take(key, percent_decode(value)?) {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, settings))
}

/// libpq's `key=value` form: whitespace between pairs, optional spaces
/// around `=`, values optionally in single quotes with `\` escapes.
fn key_values(text: &str) -> Result<Vec<(String, String)>, TlsSetupError> {
    let mut chars = text.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(TlsSetupError::InvalidString);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or(TlsSetupError::InvalidString)?),
                    Some(c) => value.push(c),
                    None => return Err(TlsSetupError::InvalidString),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or(TlsSetupError::InvalidString)?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `%2F` -> `/`, as in a URL's query.
fn percent_decode(text: &str) -> Result<String, TlsSetupError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text
                .get(index + 1..index + 3)
                .ok_or(TlsSetupError::InvalidString)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| TlsSetupError::InvalidString)?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TlsSetupError::InvalidString)
}

/// The certificates of the `sslrootcert` file (PEM).
fn root_store(path: PathBuf) -> Result<RootCertStore, TlsSetupError> {
    let problem = |message: String| TlsSetupError::RootCert {
        path: path.clone(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(&path)
        .map_err(|err| problem(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| problem(err.to_string()))?;
    if certificates.is_empty() {
        return Err(problem("holds no PEM certificate".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|err| problem(err.to_string()))?;
    }
    Ok(roots)
}

/// The certificate check of `verify-ca` (`roots`: the chain must lead to
/// one of them; the name in the certificate is not compared with the host)
/// and of `prefer` and `require` (no roots: any certificate, as libpq). The
/// handshake's signatures are verified either way.
#[derive(Debug)]
struct Verifier {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let certificate = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &certificate,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Option<&str>, root_cert: Option<&str>) -> TlsSettings {
        TlsSettings {
            mode: mode.map(str::to_owned),
            root_cert: root_cert.map(PathBuf::from),
        }
    }

    #[test]
    fn tls_settings_are_taken_out_of_both_forms() {
        let cases = [
            (
                "postgres://u:p@127.0.0.1:5432/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
                "postgres://u:p@127.0.0.1:5432/db?application_name=x",
                settings(Some("verify-full"), Some("/tmp/ca.pem")),
            ),
            (
                "postgresql://127.0.0.1/db?sslmode=require",
                "postgresql://127.0.0.1/db",
                settings(Some("require"), None),
            ),
            (
                "postgres://127.0.0.1/db",
                "postgres://127.0.0.1/db",
                settings(None, None),
            ),
            (
                "host=127.0.0.1 password='p w' sslmode = verify-ca sslrootcert='/a dir/ca.pem'",
                "host='127.0.0.1' password='p w'",
                settings(Some("verify-ca"), Some("/a dir/ca.pem")),
            ),
            (
                r"host=h password='a\'b\\c'",
                r"host='h' password='a\'b\\c'",
                settings(None, None),
            ),
        ];
        for (input, rest, expected) in cases {
            let (found_rest, found) = take_tls_settings(input).expect(input);
            assert_eq!(found_rest, rest, "{input}");
            assert_eq!(found, expected, "{input}");
        }
    }

    #[test]
    fn bad_strings_are_errors_that_do_not_quote_them() {
        for input in [
            "host=h password='unterminated",
            "host",
            "postgres://u:secret@h/db?sslrootcert=%zz",
        ] {
            let error = take_tls_settings(input)
                .err()
                .or_else(|| prepare(input).err())
                .expect(input);
            assert!(matches!(error, TlsSetupError::InvalidString), "{input}");
            assert!(!error.to_string().contains("secret"));
        }
    }

    #[test]
    fn modes_and_their_root_certificate() {
        let mode = |url: &str| prepare(url).map(|connection| connection.mode);
        assert_eq!(mode("postgres://h/db").ok(), Some(TlsMode::Prefer));
        assert_eq!(
            mode("postgres://h/db?sslmode=require").ok(),
            Some(TlsMode::Require)
        );
        assert!(matches!(
            mode("postgres://h/db?sslmode=verify-full"),
            Err(TlsSetupError::MissingRootCert("verify-full"))
        ));
        assert!(matches!(
            mode("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"),
            Err(TlsSetupError::RootCert { .. })
        ));
        assert!(matches!(
            mode("postgres://h/db?sslmode=allow-everything"),
            Err(TlsSetupError::UnknownMode(_))
        ));
    }
}
