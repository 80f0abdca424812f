//! The discovery server in process: a real HTTP/1.1 stream over loopback, fed by a directory.

mod support;

use std::sync::Arc;
use std::time::Duration;

use config::api::Update;
use control::metrics::Metrics;
use control::serve;
use control::source::dir::DirSource;
use control::store::Store;
use support::{addresses, get, service, slice, Scratch};
use tokio::net::{TcpListener, TcpStream};

struct Running {
    addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    store: Arc<Store>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start(dir: &std::path::Path, max_streams: usize) -> Running {
    let store = Store::new(Arc::new(Metrics::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let mut source = DirSource::new(dir);
    source.interval = Duration::from_millis(50);
    let discovery = serve::router(store.clone(), max_streams);
    let metrics = serve::metrics_router(store.clone());
    let s = store.clone();
    let tasks = vec![
        tokio::spawn(async move { source.run(s).await.unwrap() }),
        tokio::spawn(async move { serve::serve(listener, discovery).await.unwrap() }),
        tokio::spawn(async move { serve::serve(metrics_listener, metrics).await.unwrap() }),
    ];
    Running {
        addr,
        metrics_addr,
        store,
        tasks,
    }
}

#[tokio::test]
async fn streams_the_answer_then_only_its_changes() {
    let dir = Scratch::new("serve");
    dir.write("reviews.yaml", &service("reviews", "10.96.0.10"));
    dir.write(
        "reviews-slice.yaml",
        &slice("reviews", &["10.0.0.1", "10.0.0.2"]),
    );
    dir.write("ratings.yaml", &service("ratings", "10.96.0.11"));
    let server = start(dir.path(), 100).await;
    while !server.store.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut s = get(server.addr, "/v1/destinations/10.96.0.10:80").await;
    assert!(s.head.starts_with("HTTP/1.1 200"), "{}", s.head);
    assert!(
        s.head
            .to_ascii_lowercase()
            .contains("content-type: application/x-ndjson"),
        "{}",
        s.head
    );
    let first = s.update().await;
    assert_eq!(first.address.to_string(), "10.96.0.10:80");
    assert_eq!(addresses(&first), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    // An unrelated Service changes: the model moves on, this stream says nothing.
    let v = server.store.version();
    dir.write("ratings.yaml", &service("ratings", "10.96.0.12"));
    while server.store.version() == v {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quiet = tokio::time::timeout(Duration::from_millis(1500), s.line()).await;
    assert!(quiet.is_err(), "an unrelated change was pushed: {quiet:?}");

    // Its EndpointSlice changes: one new line, a higher version, the new endpoints.
    dir.write("reviews-slice.yaml", &slice("reviews", &["10.0.0.3"]));
    let next = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the slice changed");
    assert!(next.version > first.version, "{next:?} after {first:?}");
    assert_eq!(addresses(&next), ["10.0.0.3:8080"]);

    // The Service goes away: the answer becomes "unknown" (forward as is).
    std::fs::remove_file(dir.path().join("reviews.yaml")).unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), s.update())
        .await
        .expect("an update after the Service went");
    assert_eq!(gone.destination, None);

    // The metrics saw it all.
    let metrics = get(server.metrics_addr, "/metrics").await.body().await;
    for want in [
        "control_streams_active 1",
        "control_streams_total 1",
        "control_pushes_total 3",
        "control_policy_errors 0",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
    drop(s);
}

#[tokio::test]
async fn refuses_bad_addresses_and_streams_beyond_the_limit() {
    let dir = Scratch::new("limits");
    dir.write("reviews.yaml", &service("reviews", "10.96.0.10"));
    let server = start(dir.path(), 1).await;
    while !server.store.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = get(server.addr, "/ready").await;
    assert!(ready.head.starts_with("HTTP/1.1 200"), "{}", ready.head);

    let bad = get(server.addr, "/v1/destinations/reviews:80").await;
    assert!(bad.head.starts_with("HTTP/1.1 400"), "{}", bad.head);
    let text = bad.body().await;
    assert!(
        text.contains("`reviews:80` is not a destination address"),
        "{text}"
    );

    // IPv6 in brackets is accepted (an unknown address: destination null).
    let mut v6 = get(server.addr, "/v1/destinations/[fd00::1]:80").await;
    assert!(v6.head.starts_with("HTTP/1.1 200"), "{}", v6.head);
    assert_eq!(v6.update().await.destination, None);

    // The one allowed stream is taken: the next is refused, saying why.
    let over = get(server.addr, "/v1/destinations/10.96.0.10:80").await;
    assert!(over.head.starts_with("HTTP/1.1 503"), "{}", over.head);
    let text = over.body().await;
    assert!(text.contains("--max-streams"), "{text}");

    // A proxy that goes away frees its stream and its topic.
    drop(v6);
    for _ in 0..100 {
        if server.store.topics() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.store.topics(),
        0,
        "the topic outlived its last stream"
    );
    let mut again = get(server.addr, "/v1/destinations/10.96.0.10:80").await;
    assert!(again.head.starts_with("HTTP/1.1 200"), "{}", again.head);
    assert!(again.update().await.destination.is_some());
}

#[tokio::test]
async fn speaks_http2_with_prior_knowledge() {
    let dir = Scratch::new("h2");
    dir.write("reviews.yaml", &service("reviews", "10.96.0.10"));
    dir.write("reviews-slice.yaml", &slice("reviews", &["10.0.0.1"]));
    let server = start(dir.path(), 10).await;
    while !server.store.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("http://control/v1/destinations/10.96.0.10:80")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    use http_body_util::BodyExt as _;
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let update: Update = serde_json::from_slice(&frame).unwrap();
    assert_eq!(addresses(&update), ["10.0.0.1:8080"]);
}

/// A proxy watches every destination it knows over one HTTP/2 connection: more streams than
/// hyper's default limit (200) must each get their answer, not wait for another to end.
#[tokio::test]
async fn one_http2_connection_carries_more_than_200_streams() {
    use http_body_util::BodyExt as _;
    let dir = Scratch::new("h2-many");
    dir.write("reviews.yaml", &service("reviews", "10.96.0.10"));
    let server = start(dir.path(), 1000).await;
    while !server.store.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut open = Vec::new();
    let all = async {
        for i in 0..250u32 {
            let req = hyper::Request::get(format!(
                "http://control/v1/destinations/10.96.{}.{}:80",
                1 + i / 250,
                i % 250
            ))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "stream {i}");
            let mut body = resp.into_body();
            let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let update: Update = serde_json::from_slice(&frame).unwrap();
            assert_eq!(update.destination, None, "stream {i}");
            // Kept open, as a proxy's watches are.
            open.push(body);
        }
    };
    // A guard against hanging, not a measure: the 201st stream used to wait forever.
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .unwrap_or_else(|_| panic!("only {} of 250 streams were answered", open.len()));
    assert_eq!(server.store.topics(), 250);
}
