//! A small blocking HTTP/1.1 client for the harness's own calls (the kubelet's probes, reading
//! `/stats`, the API server's AdmissionReviews over TLS), made from inside a network namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::netns::Netns;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn request_bytes(method: &str, host: &str, path: &str, body: &[u8], ctype: &str) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: trellis-sandbox\r\nConnection: close\r\n"
    );
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Plain HTTP from inside `ns`.
pub fn call(ns: &Netns, method: &str, addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    let req = request_bytes(method, &addr.to_string(), path, b"", "text/plain");
    let what = format!("{method} http://{addr}{path} from {}", ns.name);
    ns.enter(move || {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(&req)?;
        read_response(&mut s)
    })
    .with_context(|| what)
}

pub fn get(ns: &Netns, addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    call(ns, "GET", addr, path)
}

/// HTTPS from inside `ns` (a JSON body when not empty), trusting only `ca_pem`, with SNI
/// `server_name` (like `curl --resolve NAME:PORT:ADDR --cacert ca.crt`).
pub fn call_tls(
    ns: &Netns,
    method: &str,
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &[u8],
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Response> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem).context("parsing the CA certificate")?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())?;
    let req = request_bytes(method, server_name, path, &body, "application/json");
    let what = format!(
        "{method} https://{server_name}{path} ({addr}) from {}",
        ns.name
    );
    ns.enter(move || {
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&req)?;
        read_response(&mut tls)
    })
    .with_context(|| what)
}

/// Reads one response: Content-Length, chunked, or up to EOF.
fn read_response(r: &mut impl Read) -> anyhow::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the response headers");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let hdr = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = hdr("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = r.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed after {} of {len} body bytes", body.len());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else {
        // Up to EOF (Connection: close); a TLS peer that skips close_notify is fine here.
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
        }
        if hdr("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            body = dechunk(&body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(data, b"\r\n").context("bad chunked body")?;
        let size_str = String::from_utf8_lossy(&data[..i]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_str:?}"))?;
        data = &data[i + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_by_length_chunks_or_eof() {
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA";
        let resp = read_response(&mut r).unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "hello"));
        assert_eq!(resp.header("x-a"), Some("b"));
        let mut r: &[u8] =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let resp = read_response(&mut r).unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (503, "abcde"));
        let mut r: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nto the end";
        assert_eq!(read_response(&mut r).unwrap().body, "to the end");
        let mut r: &[u8] = b"HTTP/1.1 200";
        assert!(read_response(&mut r).is_err());
    }
}
