//! TLS on the main listener (`--tls-cert`, `--tls-key`): HTTPS and `wss://`
//! with rustls, on the *ring* crypto provider.
//!
//! # Where TLS runs
//!
//! The handshake runs on the shard that accepted the connection, bounded by
//! [`HANDSHAKE_TIMEOUT`]; HTTP (REST calls, the `/ws` handshake) is then
//! served there over the TLS stream, as for plain TCP.
//!
//! A websocket session must live on its user's home shard. A plain socket
//! moves there as a `std` socket (deregistered from the accepting shard's
//! reactor, registered again on the home shard's). A TLS session moves the
//! same way *with its rustls state*: the stream is a
//! `tokio_rustls::server::TlsStream<`[`ShardIo`]`>`, and [`ShardIo`] is a TCP
//! stream that can be detached from one shard's reactor and attached to
//! another's in place. So the whole `TlsStream` (socket, `ServerConnection`
//! with its keys, sequence numbers and any buffered bytes) crosses threads
//! as one value while detached ([`DetachedTls`]), and nothing about TLS runs
//! on two threads at once: before the move only the accepting shard touches
//! it, after the move only the home shard does.
//!
//! # Per-connection memory
//!
//! rustls keeps its connection state (keys, record layer), a receive buffer
//! that shrinks back to 4 KiB when it is empty (an idle session), encrypted
//! records waiting for the socket (freed as they are written), and decrypted
//! bytes not yet read. Measured with 3,000 idle sessions: about 13 KB of
//! resident memory per `wss://` session against 2.3 KB per `ws://` one.
//! Records waiting for a slow socket are capped at [`SEND_BUFFER_LIMIT`];
//! past it writes wait, so the outbox's byte bound (`--outgoing-queue-bytes`)
//! still decides when a slow consumer is cut off.
//!
//! # Why ring
//!
//! Both providers are maintained by the rustls project. ring builds from C
//! and assembly with only `cc`; aws-lc-rs needs cmake (and a long C build)
//! and brings FIPS options Herald does not use. The provider is chosen
//! explicitly ([`rustls::ServerConfig::builder_with_provider`]), so a
//! dependency that enables the other one cannot change it or make start-up
//! ambiguous.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Time a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most encrypted bytes rustls holds for a socket that is not keeping up.
pub const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// A TLS connection on the main listener.
pub type TlsIo = TlsStream<ShardIo>;

/// Loads the certificate chain and private key (PEM) and builds the
/// acceptor. Errors name the file at fault.
pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "the TLS certificate {} is not valid PEM",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "the TLS certificate {} holds no CERTIFICATE block",
            cert_path.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM) from {}",
            key_path.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the TLS key {} does not fit the certificate {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    // Herald speaks HTTP/1.1 only (websockets upgrade from it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the TLS handshake on `stream`, on the calling shard, within
/// [`HANDSHAKE_TIMEOUT`].
pub async fn handshake(acceptor: &TlsAcceptor, stream: TcpStream) -> io::Result<TlsIo> {
    let accept = acceptor.accept(ShardIo::Attached(stream));
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    tls.get_mut().1.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
    Ok(tls)
}

/// A TCP stream that can leave one shard's reactor and join another's (see
/// the module doc). Reads and writes fail while it is detached.
#[derive(Debug)]
pub enum ShardIo {
    /// Registered with the current thread's reactor.
    Attached(TcpStream),
    /// Not registered anywhere; may cross threads.
    Detached(std::net::TcpStream),
    /// Only while switching states, or after a failed switch.
    Gone,
}

impl ShardIo {
    /// Leaves this thread's reactor.
    fn detach(&mut self) -> io::Result<()> {
        if let ShardIo::Attached(stream) = std::mem::replace(self, ShardIo::Gone) {
            *self = ShardIo::Detached(stream.into_std()?);
        }
        Ok(())
    }

    /// Joins the current thread's reactor.
    fn attach(&mut self) -> io::Result<()> {
        if let ShardIo::Detached(stream) = std::mem::replace(self, ShardIo::Gone) {
            *self = ShardIo::Attached(TcpStream::from_std(stream)?);
        }
        Ok(())
    }

    fn attached(&mut self) -> io::Result<&mut TcpStream> {
        match self {
            ShardIo::Attached(stream) => Ok(stream),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "socket is between shards",
            )),
        }
    }
}

impl AsyncRead for ShardIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().attached() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl AsyncWrite for ShardIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().attached() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().attached() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().attached() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().attached() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

/// A TLS session whose socket is detached from every reactor, so it may be
/// sent to another shard; [`DetachedTls::attach`] resumes it there.
pub struct DetachedTls(TlsIo);

impl DetachedTls {
    /// Detaches `tls` from the current shard's reactor.
    pub fn detach(mut tls: TlsIo) -> io::Result<DetachedTls> {
        tls.get_mut().0.detach()?;
        Ok(DetachedTls(tls))
    }

    /// Resumes the session on the current shard.
    pub fn attach(self) -> io::Result<TlsIo> {
        let mut tls = self.0;
        tls.get_mut().0.attach()?;
        Ok(tls)
    }
}
