//! A sidecar's `/stats` (Envoy's text format, `name: value`), read from its admin port the way an
//! operator would (`kubectl exec POD -c proxy -- curl -s localhost:9901/stats`).

use std::collections::BTreeMap;

use anyhow::bail;

use crate::http;
use crate::mesh::{Mesh, Pod, ADMIN_PORT};

#[derive(Debug, Clone, Default)]
pub struct Stats(pub BTreeMap<String, String>);

impl Stats {
    pub fn parse(text: &str) -> Stats {
        Stats(
            text.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    /// `GET /stats` on `pod`'s proxy, from the node.
    pub fn fetch(mesh: &Mesh, pod: &Pod) -> anyhow::Result<Stats> {
        let r = http::get(&mesh.node, pod.addr(ADMIN_PORT), "/stats")?;
        if r.status != 200 {
            bail!("{}: GET /stats answered {}: {}", pod.name, r.status, r.body);
        }
        Ok(Stats::parse(&r.body))
    }

    /// The highest value `name` took over `samples` (0 if none).
    pub fn highest(samples: &[Stats], name: &str) -> u64 {
        samples.iter().map(|s| s.num(name)).max().unwrap_or(0)
    }

    /// A counter or gauge; 0 when absent (Envoy shows a cluster's stats only once it exists).
    pub fn num(&self, name: &str) -> u64 {
        self.0
            .get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |v| v.max(0) as u64)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The line as `/stats` shows it.
    pub fn line(&self, name: &str) -> String {
        match self.0.get(name) {
            Some(v) => format!("{name}: {v}"),
            None => format!("{name}: (absent)"),
        }
    }

    /// Stat names containing `part`.
    pub fn names_with(&self, part: &str) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| k.contains(part))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_text_is_read_line_by_line() {
        let s = Stats::parse(
            "cluster.10.214.0.11:8080.upstream_cx_active: 3\n\
             cluster.inbound_8080.circuit_breakers.default.cx_open: 1\n\
             cluster.inbound_8080.upstream_rq_time: P0(nan,0) P25(nan,1)\n",
        );
        assert_eq!(s.num("cluster.10.214.0.11:8080.upstream_cx_active"), 3);
        assert_eq!(
            s.num("cluster.inbound_8080.circuit_breakers.default.cx_open"),
            1
        );
        assert_eq!(s.num("cluster.inbound_8080.upstream_rq_time"), 0);
        assert_eq!(s.num("absent"), 0);
        assert!(!s.has("absent"));
        assert_eq!(s.line("absent"), "absent: (absent)");
        assert_eq!(s.names_with("10.214.0.11:8080").len(), 1);
    }
}
