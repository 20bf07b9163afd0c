//! TLS for database connections, with libpq's meaning of `sslmode`.
//!
//! Hosted PostgreSQL (Neon, Supabase, RDS, …) wants TLS, and operators paste the URLs their
//! provider gives them, so `sslmode` must mean what it means to psql:
//!
//! - `disable`: no TLS;
//! - `prefer` (the default) and `require`: encrypt, but do not check the server's certificate
//!   (libpq does the same; a local server's self-signed certificate must not break a connection
//!   that psql accepts);
//! - `verify-ca` and `verify-full`: encrypt and check the certificate against the Mozilla root
//!   store, and for `verify-full` the host name too (`verify-ca` is treated as `verify-full`:
//!   rustls always checks the name, which is stricter, never weaker).
//!
//! tokio-postgres itself knows only disable/prefer/require, so [`connect_config`] reads the
//! mode, hands tokio-postgres `require` for the verifying modes, and picks the connector.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;

/// A parsed connection string and the TLS connector its `sslmode` calls for.
pub fn connect_config(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), Error> {
    let verify = requested_mode(url).is_some_and(|mode| mode.starts_with("verify-"));
    let url = if verify {
        with_sslmode_require(url)
    } else {
        url.to_owned()
    };
    let config: tokio_postgres::Config = url.parse()?;
    Ok((config, if verify { verifying() } else { encrypting() }))
}

/// One connection to `url` as the relay makes them, driven on a task of its own until the
/// client is dropped: for a program that runs its own statements beside the relay (`pgrelay
/// demo` seeds its conversation with it).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, Error> {
    let (client, connection) = open(url).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// One connection to `url` and the future that drives it, for a caller that waits for the
/// session to end (`crate::migrate`, before the process exits).
pub(crate) async fn open(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    ),
    Error,
> {
    let (config, tls) = connect_config(url)?;
    config
        .connect(tls)
        .await
        .map_err(|error| Error::from(error).while_connecting(&config))
}

/// The `sslmode` a URL or key=value string asks for, if any.
fn requested_mode(url: &str) -> Option<&str> {
    url.split(['?', '&', ' '])
        .find_map(|pair| pair.strip_prefix("sslmode="))
}

/// The same string with the verifying `sslmode` replaced by `require`.
fn with_sslmode_require(url: &str) -> String {
    ["verify-full", "verify-ca"]
        .iter()
        .fold(url.to_owned(), |url, mode| {
            url.replace(&format!("sslmode={mode}"), "sslmode=require")
        })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks certificates against the Mozilla roots.
fn verifying() -> MakeRustlsConnect {
    static CONNECTOR: OnceLock<MakeRustlsConnect> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            MakeRustlsConnect::new(config)
        })
        .clone()
}

/// Encrypts without judging the certificate, as libpq's `prefer` and `require` do.
fn encrypting() -> MakeRustlsConnect {
    static CONNECTOR: OnceLock<MakeRustlsConnect> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = provider();
            let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            MakeRustlsConnect::new(config)
        })
        .clone()
}

/// Accepts any certificate, but still checks that the server holds its key (the handshake
/// signature), so the connection is encrypted to whoever presented it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_become_require() {
        let url = "postgres://u@db.example/app?sslmode=verify-full&application_name=x";
        assert_eq!(requested_mode(url), Some("verify-full"));
        assert_eq!(
            with_sslmode_require(url),
            "postgres://u@db.example/app?sslmode=require&application_name=x"
        );
        let (config, _) = connect_config(url).unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(requested_mode("host=db sslmode=disable"), Some("disable"));
        assert_eq!(requested_mode("postgres://db/app"), None);
    }
}
