//! From `--database-url` to a tokio-postgres configuration and a TLS
//! connector.
//!
//! The URL is handed to tokio-postgres, which parses everything but two
//! parameters that Herald takes out first, because tokio-postgres's own
//! `sslmode` knows only `disable`, `prefer` and `require` and it has no
//! `sslrootcert`:
//!
//! | `sslmode` | TLS | certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it, else plain | not checked |
//! | `require` | always | not checked (as libpq without a root certificate) |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host |
//!
//! `sslrootcert=FILE` (PEM) is required with the two `verify-*` modes; the
//! system's roots are not read. TLS is rustls on the *ring* provider, as on
//! the listener; SCRAM channel binding is used when the server offers it.
//!
//! Every error shows the URL redacted ([`DatabaseUrl::redacted`]); none
//! echoes a parameter's value.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::auth::store::StoreError;
use crate::config::DatabaseUrl;

/// Bound on opening one connection (TCP, TLS, authentication), at start-up
/// and whenever the pool opens a new one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `sslmode`, libpq's names and meanings (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed `--database-url`.
pub struct Settings {
    /// Everything but TLS, for tokio-postgres (connect timeout set).
    pub postgres: tokio_postgres::Config,
    pub tls_mode: TlsMode,
    /// Builds TLS sessions as `tls_mode` asks.
    pub tls: MakeRustlsConnect,
}

impl Settings {
    /// Parses `url`; errors say what is wrong without echoing a value.
    pub fn parse(url: &DatabaseUrl) -> Result<Settings, StoreError> {
        let fail = |reason: String| StoreError::DatabaseUrl {
            url: url.redacted(),
            reason,
        };
        let text = url.expose();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(fail(
                "expected postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=...]".into(),
            ));
        }
        let (rest, tls_mode, root_cert) = take_tls_parameters(text).map_err(fail)?;
        let mut postgres: tokio_postgres::Config = rest
            .parse()
            .map_err(|error: tokio_postgres::Error| fail(error.to_string()))?;
        if postgres.get_hosts().is_empty() {
            return Err(fail("no host".into()));
        }
        if postgres.get_user().is_none() {
            return Err(fail("no user".into()));
        }
        if postgres.get_dbname().is_none() {
            return Err(fail("no database name".into()));
        }
        postgres.ssl_mode(match tls_mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        postgres.connect_timeout(CONNECT_TIMEOUT);
        if postgres.get_application_name().is_none() {
            postgres.application_name("herald");
        }
        let tls = tls_connector(tls_mode, root_cert).map_err(fail)?;
        Ok(Settings {
            postgres,
            tls_mode,
            tls,
        })
    }
}

/// Splits `sslmode` and `sslrootcert` off the URL's query (the last of
/// each wins, as in libpq) and returns the rest of the URL.
fn take_tls_parameters(url: &str) -> Result<(String, TlsMode, Option<PathBuf>), String> {
    let (base, query) = match url.find('@') {
        // A '?' in the password belongs to the password (tokio-postgres splits there too).
        Some(at) => match url[at..].split_once('?') {
            Some((host_and_db, query)) => (format!("{}{host_and_db}", &url[..at]), query),
            None => (url.to_owned(), ""),
        },
        None => match url.split_once('?') {
            Some((base, query)) => (base.to_owned(), query),
            None => (url.to_owned(), ""),
        },
    };
    let mut mode = TlsMode::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8"))?;
        match key {
            "sslmode" => {
                mode =
                    match value.as_ref() {
                        "disable" => TlsMode::Disable,
                        "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        _ => return Err(
                            "sslmode must be disable, prefer, require, verify-ca or verify-full"
                                .into(),
                        ),
                    }
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
            _ => kept.push(pair),
        }
    }
    if matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && root_cert.is_none() {
        return Err("sslmode=verify-ca and verify-full need sslrootcert=FILE (PEM)".into());
    }
    let rest = if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root_cert))
}

/// The rustls connector for `mode` (see the module doc). With `disable`
/// it is never used, but tokio-postgres's pool wants one all the same.
fn tls_connector(mode: TlsMode, root_cert: Option<PathBuf>) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?;
    let roots = match &root_cert {
        Some(path) => Some(Arc::new(load_roots(path)?)),
        None => None,
    };
    let config = match (mode, roots) {
        (TlsMode::VerifyFull, Some(roots)) => {
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (TlsMode::VerifyCa, Some(roots)) => {
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| format!("sslrootcert: {error}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PostgresVerifier {
                    chain: Some(chain),
                    provider,
                }))
                .with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PostgresVerifier {
                chain: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates of a PEM file, as trust anchors.
fn load_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read sslrootcert {}: {error}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("sslrootcert {} is not valid PEM: {error}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {} holds no usable certificate",
            path.display()
        ));
    }
    Ok(roots)
}

/// Server certificates for `require` and `prefer` (nothing checked: the
/// connection is encrypted, not authenticated, as libpq does) and for
/// `verify-ca` (the chain is checked, the host name is not). Handshake
/// signatures are always checked, so the server holds the certificate's key.
#[derive(Debug)]
struct PostgresVerifier {
    /// The trust anchors' verifier (`verify-ca`), or none.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PostgresVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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

    fn parse(url: &str) -> Result<Settings, String> {
        Settings::parse(&url.parse().expect("infallible")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_url_with_a_password_and_sslmode_parses() {
        let settings =
            parse("postgres://herald:p%40ss?w@127.0.0.1:5433/accounts?sslmode=require&application_name=n1")
                .expect("parses");
        assert_eq!(settings.tls_mode, TlsMode::Require);
        let pg = &settings.postgres;
        assert_eq!(pg.get_user(), Some("herald"));
        assert_eq!(pg.get_password(), Some(&b"p@ss?w"[..]));
        assert_eq!(pg.get_dbname(), Some("accounts"));
        assert_eq!(pg.get_ports(), [5433]);
        assert_eq!(pg.get_ssl_mode(), SslMode::Require);
        assert_eq!(pg.get_application_name(), Some("n1"));
        assert_eq!(pg.get_connect_timeout(), Some(&CONNECT_TIMEOUT));

        let default = parse("postgres://herald@localhost/herald").expect("parses");
        assert_eq!(default.tls_mode, TlsMode::Prefer);
        assert_eq!(default.postgres.get_application_name(), Some("herald"));
        assert_eq!(default.postgres.get_ports(), [5432]);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        for (url, expected) in [
            ("mysql://u:hunter2@h/d", "expected postgres://"),
            ("postgres://u:hunter2@h/d?sslmode=always", "sslmode must be"),
            (
                "postgres://u:hunter2@h/d?sslmode=verify-full",
                "need sslrootcert",
            ),
            (
                "postgres://u:hunter2@h/d?sslmode=verify-ca&sslrootcert=/nonexistent.pem",
                "cannot read sslrootcert",
            ),
            ("postgres://u:hunter2@h?sslmode=disable", "no database name"),
            ("postgres://u:hunter2@/d", "no host"),
            ("postgres://u:hunter2@h/d?port=x", "invalid"),
        ] {
            let error = parse(url).err().unwrap_or_else(|| panic!("{url} parsed"));
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
            assert!(error.contains("u:***@"), "{url}: {error}");
        }
    }
}
