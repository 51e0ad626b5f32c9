//! Certificates for the TLS tests, made with rcgen: a CA of the test's own,
//! and server or client certificates it signs, current or expired, written
//! as PEM files into the test's directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// What a certificate is for.
#[derive(Debug, Clone, Copy)]
pub enum Usage {
    /// For `127.0.0.1` and `localhost`.
    Server,
    Client,
}

#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From yesterday to tomorrow.
    Current,
    /// Ended yesterday.
    Expired,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority: `cert` is its PEM file, the root to trust.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: PathBuf,
}

impl Ca {
    /// A new CA named `name`, its certificate written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::Current);
        let certificate = params.self_signed(&key).expect("a self-signed CA");
        let cert = dir.join(format!("{name}.pem"));
        write(&cert, &certificate.pem());
        Self {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// A certificate signed by this CA, written to `<dir>/<name>.pem` and
    /// `<dir>/<name>-key.pem`.
    pub fn issue(&self, dir: &Path, name: &str, usage: Usage, validity: Validity) -> Issued {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        match usage {
            Usage::Server => {
                params.subject_alt_names = vec![
                    SanType::IpAddress([127, 0, 0, 1].into()),
                    SanType::DnsName("localhost".try_into().expect("a DNS name")),
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Usage::Client => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        set_validity(&mut params, validity);
        let certificate: Certificate = params.signed_by(&key, &self.issuer).expect("signed");
        let issued = Issued {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        write(&issued.cert, &certificate.pem());
        write(&issued.key, &key.serialize_pem());
        issued
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let now = OffsetDateTime::now_utc();
    let (from, to) = match validity {
        Validity::Current => (now - Duration::days(1), now + Duration::days(1)),
        Validity::Expired => (now - Duration::days(10), now - Duration::days(1)),
    };
    params.not_before = from;
    params.not_after = to;
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}
