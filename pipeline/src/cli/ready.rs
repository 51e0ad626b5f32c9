//! `jetline ready`: asks the Jetline running with this configuration whether
//! it is ready, as a container's health check does: `GET /readyz` on
//! `metrics.listen`, an unspecified address (`0.0.0.0`, `::`) probed on
//! loopback. Ready is a 200; anything else is the reason it is not. The
//! image needs no HTTP client of its own for its `HEALTHCHECK`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::text;

/// How long the probe waits for an answer: under the health check's own
/// timeout, so a hung endpoint reads as not ready rather than as a killed probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why Jetline is not ready, as far as a probe can tell.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("metrics.listen {0} names no fixed port to probe")]
    NoPort(SocketAddr),
    #[error("no answer from {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("not ready: {url} answered {status}: {body}")]
    NotReady {
        url: String,
        status: u16,
        body: String,
    },
}

/// The address a probe on the same host reaches `listen` at.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `Ok` when `/readyz` on `listen` answers 200.
pub async fn probe(listen: SocketAddr) -> Result<(), ProbeError> {
    if listen.port() == 0 {
        return Err(ProbeError::NoPort(listen));
    }
    let url = format!("http://{}/readyz", probe_address(listen));
    let unreachable = |source| ProbeError::Unreachable {
        url: url.clone(),
        source,
    };
    // A proxy from the environment must not stand between a probe and loopback.
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(ProbeError::NotReady {
        url,
        status: status.as_u16(),
        body: text::cut(body.trim(), text::LOGGED_CHARS).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_probed_on_loopback_of_its_family() {
        for (listen, probed) in [
            ("0.0.0.0:9464", "127.0.0.1:9464"),
            ("[::]:9464", "[::1]:9464"),
            ("10.0.3.7:9464", "10.0.3.7:9464"),
            ("127.0.0.1:19464", "127.0.0.1:19464"),
        ] {
            let listen: SocketAddr = listen.parse().expect("an address");
            assert_eq!(probe_address(listen).to_string(), probed, "{listen}");
        }
    }
}
