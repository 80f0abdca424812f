//! `control describe ADDR` (or `--gateway NS/NAME`): exactly what a proxy is told about one
//! destination or Gateway (like `istioctl proxy-config`), either computed from a directory or read
//! from a running control plane's stream, so an operator can check an answer without a proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use config::api::{GatewayUpdate, ServiceRef, Update};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::compile::{compile, compile_gateway, parent_reports};
use crate::model::{Model, Report};
use crate::route::Parent;
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
/// target its Service (refused policies and conflicts) and of the routes attached to that Service
/// port, one message each.
pub fn from_dir(dir: &Path, address: SocketAddr) -> Result<(Update, Vec<String>), DescribeError> {
    let loaded = dir::load(dir)?;
    let mut model = Model::new();
    model.sync(loaded.objects);
    let destination = compile(&model, address);
    let mut problems: Vec<String> = Vec::new();
    if let Some(p) = model.port(address) {
        problems.extend(model.reports_for(&p.service).iter().map(|r| r.to_string()));
        let parent = Parent::Service(p.service.clone());
        problems.extend(
            parent_reports(&model, &parent, Some((p.port, p.port_name.as_deref())))
                .into_iter()
                .map(|r| Report::Route(r).to_string()),
        );
    }
    Ok((
        Update {
            version: model.version(),
            address,
            destination,
        },
        problems,
    ))
}

/// The answer for Gateway `gateway` from the objects in `dir`, and the problems of the routes
/// attached to it.
pub fn gateway_from_dir(
    dir: &Path,
    gateway: &ServiceRef,
) -> Result<(GatewayUpdate, Vec<String>), DescribeError> {
    let loaded = dir::load(dir)?;
    let mut model = Model::new();
    model.sync(loaded.objects);
    let routes = compile_gateway(&model, gateway);
    let mut problems: Vec<String> = Vec::new();
    match model.gateway(gateway) {
        None => problems.push(format!("Gateway {gateway} does not exist")),
        Some(g) => match &g.class {
            Err(e) => problems.push(e.to_string()),
            Ok(class) if !g.is_ours() => problems.push(format!(
                "Gateway {gateway} is of class {class:?}, not {:?}: Trellis does not serve it",
                crate::route::GATEWAY_CLASS
            )),
            Ok(_) => {}
        },
    }
    problems.extend(
        parent_reports(&model, &Parent::Gateway(gateway.clone()), None)
            .into_iter()
            .map(|r| Report::Route(r).to_string()),
    );
    Ok((
        GatewayUpdate {
            version: model.version(),
            gateway: gateway.clone(),
            routes,
        },
        problems,
    ))
}

/// The first line of a running control plane's stream for `address`.
pub async fn from_server(server: &str, address: SocketAddr) -> Result<Update, DescribeError> {
    first_answer(server, format!("{}{address}", config::api::WATCH_PATH)).await
}

/// The first line of a running control plane's stream for Gateway `gateway`.
pub async fn gateway_from_server(
    server: &str,
    gateway: &ServiceRef,
) -> Result<GatewayUpdate, DescribeError> {
    let path = format!(
        "{}{}/{}",
        config::api::GATEWAY_WATCH_PATH,
        gateway.namespace,
        gateway.name
    );
    first_answer(server, path).await
}

async fn first_answer<T: DeserializeOwned>(server: &str, path: String) -> Result<T, DescribeError> {
    match tokio::time::timeout(TIMEOUT, first_line(server, path)).await {
        Ok(r) => r,
        Err(_) => Err(DescribeError::Timeout {
            server: server.to_string(),
        }),
    }
}

async fn first_line<T: DeserializeOwned>(server: &str, path: String) -> Result<T, DescribeError> {
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
    let req = hyper::Request::get(path)
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
    serde_json::from_slice(line).map_err(|e| http(format!("the first line is not an update: {e}")))
}
