//! Shared by the dir-source, server and Kubernetes-source tests: a scratch directory of cluster
//! objects, and a reader of the discovery server's streams.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use config::api::Update;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trellis-control-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file atomically (write + rename), as editors and kubectl-like tools do.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  clusterIP: {ip}\n  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n"
    )
}

/// An EndpointSlice for `service` with these pod IPs (all ready) on port 8080.
pub fn slice(service: &str, ips: &[&str]) -> String {
    let mut eps = String::new();
    for (i, ip) in ips.iter().enumerate() {
        eps.push_str(&format!(
            "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    targetRef: {{kind: Pod, name: {service}-{i}}}\n"
        ));
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n\
         endpoints:\n{eps}ports:\n  - name: http\n    port: 8080\n"
    )
}

/// An open HTTP/1.1 response, read chunk by chunk into lines.
pub struct Stream {
    reader: BufReader<TcpStream>,
    pub head: String,
    pending: Vec<u8>,
}

pub async fn get(addr: std::net::SocketAddr, path: &str) -> Stream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: control\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reader = BufReader::new(tcp);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    Stream {
        reader,
        head,
        pending: Vec::new(),
    }
}

impl Stream {
    /// The next line of a chunked body.
    pub async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return String::from_utf8(line).unwrap();
            }
            let mut size = String::new();
            self.reader.read_line(&mut size).await.unwrap();
            let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            assert!(n > 0, "the stream ended");
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk).await.unwrap();
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn update(&mut self) -> Update {
        serde_json::from_str(&self.line().await).unwrap()
    }

    /// The whole body of a non-streamed (content-length) response.
    pub async fn body(mut self) -> String {
        let mut rest = String::new();
        let len: usize = self
            .head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf).await.unwrap();
        rest.push_str(&String::from_utf8(buf).unwrap());
        rest
    }
}

pub fn addresses(u: &Update) -> Vec<String> {
    u.destination
        .as_ref()
        .unwrap()
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect()
}
