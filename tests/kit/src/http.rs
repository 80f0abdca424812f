//! The one HTTP/1.1 client of the suites: hyper on tokio, plain or TLS (trusting only a given CA),
//! from this namespace or another one. One keep-alive connection per [`Client`]; concurrent load
//! is many clients. Request bodies may stream (any `Body` of `Bytes` that cannot fail).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};

use crate::netns::Netns;
use crate::Error;

/// A response, its body read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to reach the server: where from, and with TLS or not.
pub struct Connect<'a> {
    addr: SocketAddr,
    netns: Option<&'a Netns>,
    tls: Option<(String, Vec<u8>)>,
}

impl<'a> Connect<'a> {
    /// Connect from inside `ns` (its routes, its iptables rules).
    pub fn netns(mut self, ns: &'a Netns) -> Self {
        self.netns = Some(ns);
        self
    }

    /// TLS with SNI and `Host` `server_name`, trusting only the CA in `ca_pem` (like
    /// `curl --resolve NAME:PORT:ADDR --cacert ca.crt`).
    pub fn tls(mut self, server_name: &str, ca_pem: &[u8]) -> Self {
        self.tls = Some((server_name.to_string(), ca_pem.to_vec()));
        self
    }

    pub async fn connect(self) -> Result<Client, Error> {
        let addr = self.addr;
        let io = |what: &str, source| Error::Io {
            what: format!("{what} {addr}"),
            source,
        };
        let tcp = match self.netns {
            None => TcpStream::connect(addr)
                .await
                .map_err(|e| io("connecting to", e))?,
            Some(ns) => TcpSocket::from_std_stream(ns.socket_for(addr)?)
                .connect(addr)
                .await
                .map_err(|e| io(&format!("connecting from {} to", ns.name), e))?,
        };
        let _ = tcp.set_nodelay(true);
        let Some((server_name, ca_pem)) = self.tls else {
            return Client::handshake(tcp, addr, addr.to_string(), None).await;
        };
        let tls_err = |what: String| Error::Tls { addr, what };
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(&ca_pem)
            .map_err(|e| tls_err(format!("the CA is not a PEM certificate: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| tls_err(format!("the CA is not usable: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.clone())
            .map_err(|e| tls_err(format!("server name {server_name:?}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(format!("handshake as {server_name}: {e}")))?;
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        Client::handshake(tls, addr, server_name, peer_cert).await
    }
}

type ReqBody = BoxBody<Bytes, Infallible>;

/// One keep-alive HTTP/1.1 connection (its driver runs on the current tokio runtime).
pub struct Client {
    sender: http1::SendRequest<ReqBody>,
    addr: SocketAddr,
    host: String,
    peer_cert: Option<Vec<u8>>,
}

impl Client {
    /// HTTP/1.1 over an established stream, plain or TLS; the connection's driver is spawned.
    async fn handshake<T>(
        stream: T,
        addr: SocketAddr,
        host: String,
        peer_cert: Option<Vec<u8>>,
    ) -> Result<Client, Error>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Error::Http {
                addr,
                what: "handshake",
                source,
            })?;
        tokio::spawn(conn);
        Ok(Client {
            sender,
            addr,
            host,
            peer_cert,
        })
    }

    /// Where to connect; [`Connect::connect`] makes the connection.
    pub fn to<'a>(addr: SocketAddr) -> Connect<'a> {
        Connect {
            addr,
            netns: None,
            tls: None,
        }
    }

    /// Plain HTTP to `addr` from here.
    pub async fn connect(addr: SocketAddr) -> Result<Client, Error> {
        Client::to(addr).connect().await
    }

    /// The server's certificate (DER) on a TLS connection.
    pub fn peer_cert(&self) -> Option<&[u8]> {
        self.peer_cert.as_deref()
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Response, Error> {
        self.request("GET", path, Bytes::new()).await
    }

    /// `METHOD path`, with `body` as JSON when it is not empty.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Response, Error> {
        let body = body.into();
        let mut req = Request::builder().method(method).uri(path);
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body)).map_err(|e| Error::Request {
            what: format!("{method} {path}"),
            reason: e.to_string(),
        })?;
        self.send(req).await
    }

    /// Sends `req` (a `Host` header is added when it has none) and reads the whole answer.
    pub async fn send<B>(&mut self, req: Request<B>) -> Result<Response, Error>
    where
        B: Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
    {
        let (parts, body) = self.send_streaming(req).await?.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|source| Error::Http {
                addr: self.addr,
                what: "response body",
                source,
            })?
            .to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Sends `req` and returns the answer with its body unread, for bodies too big to hold.
    pub async fn send_streaming<B>(
        &mut self,
        req: Request<B>,
    ) -> Result<hyper::Response<Incoming>, Error>
    where
        B: Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
    {
        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key("host") {
            parts.headers.insert(
                "host",
                self.host.parse().expect("an address is a valid header"),
            );
        }
        let req = Request::from_parts(parts, body.boxed());
        let addr = self.addr;
        let http = |what, source| Error::Http { addr, what, source };
        self.sender
            .ready()
            .await
            .map_err(|e| http("connection", e))?;
        self.sender
            .send_request(req)
            .await
            .map_err(|e| http("request", e))
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response, Error> {
    Client::connect(addr).await?.get(path).await
}

/// One bodiless POST on a fresh connection.
pub async fn post(addr: SocketAddr, path: &str) -> Result<Response, Error> {
    let req = Request::post(path)
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    Client::connect(addr).await?.send(req).await
}
