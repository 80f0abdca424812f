//! The directory source: files in, model out, changes followed, bad documents named and skipped.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::metrics::Metrics;
use control::source::dir::{self, DirSource};
use control::store::Store;
use support::{service, slice, Scratch};

/// Captures log lines written while the test's subscriber is the default.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn endpoints(store: &Store, addr: SocketAddr) -> Vec<String> {
    store
        .answer(addr)
        .destination
        .map(|d| d.endpoints.iter().map(|e| e.address.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn follows_changes_and_names_bad_files() {
    let logs = Logs::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = Scratch::new("dir");
    dir.write("reviews.yaml", &service("reviews", "10.96.0.10"));
    dir.write(
        "reviews-slice.yaml",
        &slice("reviews", &["10.0.0.1", "10.0.0.2"]),
    );
    dir.write(
        "broken.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec: {{ports: nope}}\n",
            service("ratings", "10.96.0.11")
        ),
    );
    dir.write("notes.txt", "not read");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::new(Arc::new(Metrics::default()));
        let mut source = DirSource::new(dir.path());
        source.interval = Duration::from_millis(50);
        let task = tokio::spawn(source.run(store.clone()));
        eventually("the first load", || store.is_ready()).await;

        let reviews: SocketAddr = "10.96.0.10:80".parse().unwrap();
        assert_eq!(
            endpoints(&store, reviews),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        // The good document of the broken file loaded; the bad one was named with its file and index.
        assert!(store
            .answer("10.96.0.11:80".parse().unwrap())
            .destination
            .is_some());
        let text = logs.text();
        assert!(
            text.contains("WARN")
                && text.contains("broken.yaml: document 2: Service: spec.ports: invalid type"),
            "{text}"
        );

        let v1 = store.version();
        dir.write("reviews-slice.yaml", &slice("reviews", &["10.0.0.3"]));
        eventually("the new endpoint", || {
            endpoints(&store, reviews) == ["10.0.0.3:8080"]
        })
        .await;
        assert!(store.version() > v1);

        // A removed file removes its objects.
        std::fs::remove_file(dir.path().join("reviews.yaml")).unwrap();
        eventually("the Service to go", || {
            store.answer(reviews).destination.is_none()
        })
        .await;
        assert!(!task.is_finished(), "the source keeps running");
        task.abort();
    });
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let e = dir::load(std::path::Path::new("/nonexistent/trellis")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--from-dir /nonexistent/trellis: cannot read the directory"),
        "{e}"
    );
}
