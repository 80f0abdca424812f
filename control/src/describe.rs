//! `control describe ADDR`: exactly what a proxy is told about one destination (like
//! `istioctl proxy-config`), either computed from a directory or read from a running control
//! plane's stream, so an operator can check an answer without a proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use config::api::Update;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::compile::compile;
use crate::model::Model;
use crate::source::dir::{self, DirError};

/// Why describe could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("--control-plane {server}: cannot connect: {error}")]
    Connect {
        server: String,
        error: std::io::Error,
    },
    #[error("--control-plane {server}: {problem}")]
    Http { server: String, problem: String },
    #[error("--control-plane {server}: no answer within {0:?}", TIMEOUT)]
    Timeout { server: String },
}

/// How long `describe --control-plane` waits for the first line.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The answer for `address` from the objects in `dir`, and the problems of the policies that
/// target its Service (refused policies and conflicts), one message each.
pub fn from_dir(dir: &Path, address: SocketAddr) -> Result<(Update, Vec<String>), DescribeError> {
    let loaded = dir::load(dir)?;
    let mut model = Model::new();
    model.sync(loaded.objects);
    let destination = compile(&model, address);
    let problems = model
        .port(address)
        .map(|p| model.reports_for(&p.service))
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.to_string())
        .collect();
    Ok((
        Update {
            version: model.version(),
            address,
            destination,
        },
        problems,
    ))
}

/// The first line of a running control plane's stream for `address`.
pub async fn from_server(server: &str, address: SocketAddr) -> Result<Update, DescribeError> {
    match tokio::time::timeout(TIMEOUT, first_line(server, address)).await {
        Ok(r) => r,
        Err(_) => Err(DescribeError::Timeout {
            server: server.to_string(),
        }),
    }
}

async fn first_line(server: &str, address: SocketAddr) -> Result<Update, DescribeError> {
    let http = |problem: String| DescribeError::Http {
        server: server.to_string(),
        problem,
    };
    let tcp = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|error| DescribeError::Connect {
            server: server.to_string(),
            error,
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("{}{address}", config::api::WATCH_PATH))
        .header(hyper::header::HOST, server)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(http(e.to_string())),
            None => break,
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    if !status.is_success() {
        return Err(http(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(line).trim()
        )));
    }
    serde_json::from_slice(line).map_err(|e| http(format!("the first line is not an Update: {e}")))
}
