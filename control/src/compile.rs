//! Model + address -> what a proxy is told. Pure (no I/O, no clock), so every answer the control
//! plane can give is a golden file under `testdata/compile/`, and `describe` prints exactly what
//! the server streams.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use config::api::{Destination, Endpoint, Policy};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{Model, PortRef};

/// The Service port at `address` with its ready endpoints and policy; `None` when no Service
/// port has that ClusterIP:port (the proxy then forwards to the address as it is).
///
/// Endpoints: every address of every EndpointSlice endpoint labelled for the Service whose
/// `conditions.ready` is not `false`, on the slice port named like the Service port, of the same
/// IP family as `address` (as kube-proxy does); sorted, one entry per address.
pub fn compile(model: &Model, address: SocketAddr) -> Option<Destination> {
    let port = model.port(address)?;
    let v4 = model_ip_is_v4(address.ip());
    let mut endpoints = BTreeSet::new();
    for slice in model.slices(&port.service) {
        collect(slice, port, v4, &mut endpoints);
    }
    let mut endpoints: Vec<Endpoint> = endpoints.into_iter().collect();
    // One entry per address (the BTreeSet kept the one with the smallest pod name).
    endpoints.dedup_by(|b, a| a.address == b.address);
    let policy = match model.winning_policy(&port.service) {
        Some(p) => Policy {
            source: Some(p.id()),
            ..p.result.clone().unwrap_or_default()
        },
        None => Policy::default(),
    };
    Some(Destination {
        service: port.service.clone(),
        port: port.port,
        endpoints,
        policy,
        routes: None,
    })
}

fn model_ip_is_v4(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    }
}

fn collect(slice: &EndpointSlice, port: &PortRef, v4: bool, out: &mut BTreeSet<Endpoint>) {
    let Some(target) = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().filter(|n| !n.is_empty()) == port.port_name.as_deref())
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
    else {
        return;
    };
    for ep in &slice.endpoints {
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        for a in &ep.addresses {
            let Ok(ip) = a.parse::<IpAddr>() else {
                continue;
            };
            if ip.is_ipv4() != v4 {
                continue;
            }
            out.insert(Endpoint {
                address: SocketAddr::new(ip, target),
                pod: pod.clone(),
            });
        }
    }
}
