//! `--from-dir DIR`: the cluster's objects read from YAML/JSON files, for local runs, VMs and
//! tests, with the same model and answers as in a cluster.
//!
//! Every `*.yaml`, `*.yml` and `*.json` directly in DIR is read (YAML may hold several documents
//! separated by `---`; a `List` is read item by item). Documents are dispatched on
//! apiVersion/kind: `v1` Service, `discovery.k8s.io/v1` EndpointSlice, `trellis.dev/v1alpha1`
//! TrafficPolicy and HTTPFault, `gateway.networking.k8s.io/v1` HTTPRoute, GRPCRoute and Gateway;
//! other kinds are skipped (debug log). A bad document is reported with its file and index and
//! never stops the others. Changes are followed by polling the files' mtimes and
//! sizes (every 500 ms by default): cheap, dependency-free, and good enough for files edited by
//! hand or by a test.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;

use crate::model::Object;
use crate::policy;
use crate::route;
use crate::store::Store;

/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The directory could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    // The io error is in the message (not a `#[source]`), so that a plain `{e}` in a log line
    // says everything and `{e:#}` does not say it twice.
    #[error("--from-dir {dir}: cannot read the directory: {error}")]
    Read { dir: PathBuf, error: std::io::Error },
}

/// One document that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocProblem {
    pub file: PathBuf,
    /// 1-based document index in the file (`2`, or `2.items[0]` inside a List).
    pub index: String,
    pub problem: String,
}

impl fmt::Display for DocProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {}: {}",
            self.file.display(),
            self.index,
            self.problem
        )
    }
}

/// What one read of the directory found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub problems: Vec<DocProblem>,
}

/// The directory source.
#[derive(Debug, Clone)]
pub struct DirSource {
    pub dir: PathBuf,
    pub interval: Duration,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource {
            dir: dir.into(),
            interval: POLL_INTERVAL,
        }
    }

    /// Loads the directory (failing if it cannot be read at first), marks the store ready, then
    /// reloads whenever a file's mtime or size changes, a file appears or one goes away. Later
    /// read errors are logged and the last model kept.
    pub async fn run(self, store: Arc<Store>) -> Result<(), DirError> {
        let mut seen = fingerprint(&self.dir)?;
        self.reload(&store)?;
        store.set_ready();
        loop {
            tokio::time::sleep(self.interval).await;
            let now = match fingerprint(&self.dir) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("{e}; keeping the last model");
                    continue;
                }
            };
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(e) = self.reload(&store) {
                tracing::warn!("{e}; keeping the last model");
            }
        }
    }

    fn reload(&self, store: &Store) -> Result<(), DirError> {
        let loaded = load(&self.dir)?;
        for p in &loaded.problems {
            tracing::warn!("{p}");
        }
        let n = loaded.objects.len();
        let touched = store.sync(loaded.objects);
        tracing::info!(
            dir = %self.dir.display(),
            objects = n,
            touched = touched.services.len(),
            version = store.version(),
            "loaded"
        );
        Ok(())
    }
}

type Fingerprint = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

fn fingerprint(dir: &Path) -> Result<Fingerprint, DirError> {
    let mut out = BTreeMap::new();
    for path in files(dir)? {
        // A file removed between listing and stat is simply absent.
        if let Ok(m) = std::fs::metadata(&path) {
            out.insert(path, (m.modified().ok(), m.len()));
        }
    }
    Ok(out)
}

/// The files of DIR that are read, sorted by name (so later files win duplicates predictably).
fn files(dir: &Path) -> Result<Vec<PathBuf>, DirError> {
    let err = |error| DirError::Read {
        dir: dir.to_path_buf(),
        error,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if wanted && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every file of DIR once.
pub fn load(dir: &Path) -> Result<Loaded, DirError> {
    let mut loaded = Loaded::default();
    for path in files(dir)? {
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_file(&path, &text, &mut loaded),
            Err(e) => loaded.problems.push(DocProblem {
                file: path.clone(),
                index: "1".into(),
                problem: format!("cannot read the file: {e}"),
            }),
        }
    }
    Ok(loaded)
}

/// Reads one file's documents into `out`.
pub fn parse_file(path: &Path, text: &str, out: &mut Loaded) {
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let docs: Vec<&str> = if is_json {
        vec![text]
    } else {
        split_documents(text)
    };
    for (i, doc) in docs.into_iter().enumerate() {
        let index = (i + 1).to_string();
        let value: Result<serde_json::Value, String> = if is_json {
            serde_json::from_str(doc).map_err(|e| format!("not valid JSON: {e}"))
        } else {
            serde_yaml::from_str(doc).map_err(|e| format!("not valid YAML: {e}"))
        };
        match value {
            Ok(serde_json::Value::Null) => {} // an empty document
            Ok(v) => dispatch(path, index, v, out),
            Err(problem) => out.problems.push(DocProblem {
                file: path.to_path_buf(),
                index,
                problem,
            }),
        }
    }
}

/// Splits multi-document YAML on `---` lines, keeping each document's text whole so that one
/// bad document cannot hide the ones after it.
pub(crate) fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    // A leading `---` leaves an empty first document: not a document the user wrote.
    if docs.len() > 1 && docs[0].trim().is_empty() {
        docs.remove(0);
    }
    docs
}

fn dispatch(path: &Path, index: String, v: serde_json::Value, out: &mut Loaded) {
    let problem = |out: &mut Loaded, index: &str, problem: String| {
        out.problems.push(DocProblem {
            file: path.to_path_buf(),
            index: index.to_string(),
            problem,
        })
    };
    let api_version = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("");
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return problem(
            out,
            &index,
            "no apiVersion or kind: expected a Kubernetes object (v1 Service, \
             discovery.k8s.io/v1 EndpointSlice, trellis.dev/v1alpha1 TrafficPolicy or \
             HTTPFault, gateway.networking.k8s.io/v1 HTTPRoute, GRPCRoute or Gateway)"
                .into(),
        );
    }
    let object = match (api_version, kind) {
        ("v1", "Service") => typed::<Service>(&v).map(|s| Object::Service(Box::new(s))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            typed::<EndpointSlice>(&v).map(|e| Object::EndpointSlice(Box::new(e)))
        }
        (policy::API_VERSION, policy::KIND) => {
            let parsed = policy::parse(&v);
            if let Err(e) = &parsed.result {
                // Kept in the model (its Services fall back to the default policy, and it is
                // counted and shown by describe), and reported here with its file.
                problem(out, &index, e.to_string());
            }
            if parsed.name.is_empty() {
                return;
            }
            Ok(Object::TrafficPolicy(Box::new(parsed)))
        }
        (route::GATEWAY_API_VERSION, kind @ (route::ROUTE_KIND | route::GRPC_ROUTE_KIND)) => {
            let parsed = if kind == route::ROUTE_KIND {
                route::parse_route(&v)
            } else {
                route::parse_grpc_route(&v)
            };
            if let Err(e) = &parsed.result {
                // Kept in the model (so describe shows it next to its parents), and reported here
                // with its file, as a refused policy is.
                problem(out, &index, e.to_string());
            }
            if parsed.name.is_empty() {
                return;
            }
            Ok(Object::Route(Box::new(parsed)))
        }
        (route::FAULT_API_VERSION, route::FAULT_KIND) => {
            let parsed = route::parse_fault(&v);
            if let Err(e) = &parsed.result {
                problem(out, &index, e.to_string());
            }
            if parsed.name.is_empty() {
                return;
            }
            Ok(Object::HttpFault(Box::new(parsed)))
        }
        (route::GATEWAY_API_VERSION, route::GATEWAY_KIND) => {
            let parsed = route::parse_gateway(&v);
            if let Err(e) = &parsed.class {
                problem(out, &index, e.to_string());
            }
            if parsed.name.is_empty() {
                return;
            }
            Ok(Object::Gateway(Box::new(parsed)))
        }
        (_, k) if k.ends_with("List") => {
            let items = v.get("items").and_then(|i| i.as_array()).cloned();
            for (j, item) in items.into_iter().flatten().enumerate() {
                dispatch(path, format!("{index}.items[{j}]"), item, out);
            }
            return;
        }
        _ => {
            tracing::debug!(
                file = %path.display(),
                document = %index,
                "skipping {api_version} {kind}: not a kind the control plane reads"
            );
            return;
        }
    };
    match object {
        Ok(o) if o.key().name.is_empty() => {
            problem(out, &index, format!("{kind} has no metadata.name"))
        }
        Ok(o) => out.objects.push(o),
        Err(e) => problem(out, &index, format!("{kind}: {e}")),
    }
}

/// A Kubernetes type read with the path of any bad field.
fn typed<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_on_dashes_only_at_line_starts() {
        let docs = split_documents("---\na: 1\n---\nb: '---'\n--- # c\nc: 3\n");
        assert_eq!(docs, vec!["a: 1\n", "b: '---'\n", "c: 3\n"]);
        assert_eq!(split_documents("a: 1\n"), vec!["a: 1\n"]);
    }

    #[test]
    fn a_bad_document_is_named_and_the_others_load() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: 80}\n\
                    ---\nkey: [unclosed\n\
                    ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata: {name: c}\n";
        let mut out = Loaded::default();
        parse_file(Path::new("svc.yaml"), text, &mut out);
        let names: Vec<String> = out.objects.iter().map(|o| o.key().name).collect();
        assert_eq!(names, vec!["a", "c"]);
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        let first = out.problems[0].to_string();
        assert!(
            first.starts_with("svc.yaml: document 2: Service: spec.ports: invalid type"),
            "{first}"
        );
        let second = out.problems[1].to_string();
        assert!(
            second.starts_with("svc.yaml: document 3: not valid YAML"),
            "{second}"
        );
    }

    #[test]
    fn a_list_is_read_item_by_item() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "x"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {}}]}"#;
        let mut out = Loaded::default();
        parse_file(Path::new("all.json"), text, &mut out);
        assert_eq!(out.objects.len(), 1);
        assert_eq!(
            out.problems[0].to_string(),
            "all.json: document 1.items[1]: Service has no metadata.name"
        );
    }
}
