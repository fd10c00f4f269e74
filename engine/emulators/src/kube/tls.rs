//! HTTPS for the emulated API servers: one CA per [`super::KubeEmulator`], a server certificate
//! per cluster signed by it, and the accept loop that serves a cluster's router over rustls.
//!
//! Only HTTPS is served: a plain-HTTP request fails the TLS handshake and the connection is
//! closed (a real API server answers such a request with a 400 before closing; clients fail
//! either way). ALPN offers `http/1.1` only, so every client speaks HTTP/1.1 (watches stream as
//! chunked responses).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Why a TLS artefact could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating a key or signing a certificate failed.
    #[error("generating a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate/key pair.
    #[error("building the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate authority of one emulator: signs every cluster's serving certificate.
pub(super) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256, `CN=tkgops-kube-emulator-ca`, may sign certificates).
    /// Errors: [`TlsError::Certificate`] if ring cannot generate the key.
    pub(super) fn generate() -> Result<Ca, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tkgops-kube-emulator-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let pem = issuer.pem();
        Ok(Ca { issuer, pem })
    }

    /// The CA certificate, PEM-encoded.
    pub(super) fn pem(&self) -> &str {
        &self.pem
    }

    /// A rustls server configuration presenting a fresh certificate for cluster `name`, signed by
    /// this CA, valid for `127.0.0.1` (IP SAN) and `localhost` (DNS SAN), ALPN `http/1.1`.
    /// Errors: [`TlsError`] if key generation, signing or rustls's key check fails.
    pub(super) fn server_config(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![
            cert.der().clone(),
            CertificateDer::from(self.issuer.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Serves `router` over TLS on `listener` until the runtime stops: one task per connection,
/// the handshake bounded to 10 s; failed handshakes (plain HTTP, untrusted CA) just close the
/// connection.
pub(super) async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (as axum::serve does).
                tracing::warn!("emulated kube API server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!("emulated kube API server: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            if let Err(e) = Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!("emulated kube API server: connection ended: {e}");
            }
        });
    }
}
