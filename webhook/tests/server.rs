//! The real TLS webhook server on a random port, driven by a real HTTPS client: golden
//! AdmissionReviews, bad input, hostile input (huge pods, huge annotations, stalled and idle
//! connections, more connections than the cap), metrics, and a certificate rotated on disk under
//! load.

mod support;

use std::time::Duration;

use base64::Engine as _;
use kit::golden;
use serde_json::{json, Value};
use support::{connect, start, start_with, testdata, tls_stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use webhook::server::ServeLimits;

/// What a golden file records of a response: the patch decoded, so diffs are readable.
fn summarize(resp: &Value) -> Value {
    let r = &resp["response"];
    let mut out = json!({ "allowed": r["allowed"] });
    if let Some(p) = r["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p)
            .expect("patch is base64");
        out["patchType"] = r["patchType"].clone();
        out["patch"] = serde_json::from_slice(&bytes).expect("patch is JSON");
    }
    for k in ["status", "warnings"] {
        if !r[k].is_null() {
            out[k] = r[k].clone();
        }
    }
    out
}

#[tokio::test]
async fn golden_reviews_over_tls() {
    let server = start("golden", Duration::from_secs(60)).await;
    let mut client = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    let mut fixtures: Vec<_> = std::fs::read_dir(testdata("reviews"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".out.json")
        })
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 16, "fixtures missing");
    for input in fixtures {
        let name = input.file_stem().unwrap().to_string_lossy().to_string();
        let body = std::fs::read(&input).unwrap();
        let review: Value = serde_json::from_slice(&body).unwrap();
        let resp = client.request("POST", "/mutate", body).await.unwrap();
        assert_eq!(resp.status, 200, "{name}: {}", resp.body);
        let resp: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1", "{name}");
        assert_eq!(resp["kind"], "AdmissionReview", "{name}");
        assert_eq!(
            resp["response"]["uid"], review["request"]["uid"],
            "{name}: uid echoed"
        );
        let summary = summarize(&resp);

        // Every patch applies to the object it was computed for and yields a valid Pod.
        if let Some(patch) = summary.get("patch") {
            let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
            let mut pod = review["request"]["object"].clone();
            json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| panic!("{name}: {e}"));
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
            let spec = pod.spec.unwrap();
            let all: Vec<_> = spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .map(|c| c.name.clone())
                .collect();
            assert!(
                all.contains(&"proxy".into()) && all.contains(&"proxyinit".into()),
                "{name}: {all:?}"
            );
        }

        let pretty = serde_json::to_string_pretty(&summary).unwrap() + "\n";
        golden::assert_golden(&testdata(&format!("reviews/{name}.out.json")), &pretty);
    }
}

#[tokio::test]
async fn decisions_seen_by_the_api_server() {
    let server = start("decisions", Duration::from_secs(60)).await;
    let mut client = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    let post = |name: &'static str| {
        let body = std::fs::read(testdata(&format!("reviews/{name}.json"))).unwrap();
        async move { body }
    };
    let mut send = async |body: Vec<u8>| -> Value {
        let resp = client.request("POST", "/mutate", body).await.unwrap();
        assert_eq!(resp.status, 200);
        serde_json::from_str(&resp.body).unwrap()
    };
    let deny = send(post("deny-bad-annotation").await).await;
    assert_eq!(deny["response"]["allowed"], false);
    assert_eq!(deny["response"]["status"]["code"], 400);
    let msg = deny["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("trellis.dev/max-connections")
            && msg.contains("\"ten\"")
            && msg.contains("whole number"),
        "{msg}"
    );

    let warn = send(post("warn-name-conflict").await).await;
    assert_eq!(warn["response"]["allowed"], true);
    assert!(warn["response"].get("patch").is_none());
    assert!(warn["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("\"proxy\""));

    for name in [
        "allow-update",
        "allow-not-a-pod",
        "skip-host-network",
        "skip-opted-out",
        "skip-already-injected",
        "skip-own-pod",
    ] {
        let r = send(post(name).await).await;
        assert_eq!(r["response"]["allowed"], true, "{name}");
        assert!(
            r["response"].get("patch").is_none(),
            "{name}: nothing changes"
        );
    }

    // DryRun gets the same answer as the real thing.
    let real = send(post("plain-pod").await).await;
    let dry = send(post("dry-run").await).await;
    assert_eq!(real["response"]["patch"], dry["response"]["patch"]);
    assert!(real["response"]["patch"].is_string());
}

#[tokio::test]
async fn bad_input_is_answered_never_panicked_on() {
    let server = start("bad-input", Duration::from_secs(60)).await;
    let mut client = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "not an AdmissionReview"),
        (b"{}".to_vec(), "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#
                .to_vec(),
            "expected admission.k8s.io/v1",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (vec![0xff, 0xfe, 0x00], "not an AdmissionReview"),
    ];
    for (body, want) in cases {
        let resp = client.request("POST", "/mutate", body).await.unwrap();
        let text = &resp.body;
        assert_eq!(resp.status, 400, "{text}");
        assert!(text.contains(want), "{want:?} not in {text:?}");
    }
    // A pod whose containers are not a list: 400 naming the problem.
    let mut review: Value =
        serde_json::from_slice(&std::fs::read(testdata("reviews/plain-pod.json")).unwrap())
            .unwrap();
    review["request"]["object"]["spec"]["containers"] = json!("nope");
    let resp = client
        .request("POST", "/mutate", serde_json::to_vec(&review).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("not a valid Pod"));

    let resp = client
        .request("POST", "/mutate", vec![b' '; 4 * 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(resp.status, 413);

    // The same server still serves.
    let mut client = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    assert_eq!(client.get("/healthz").await.unwrap().status, 200);
    assert_eq!(client.get("/readyz").await.unwrap().status, 200);
    let metrics = client.get("/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    let metrics = metrics.body;
    assert!(
        metrics.contains(r#"trellis_webhook_reviews_total{result="error",reason=""} 7"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_webhook_review_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_count_reviews_by_result_and_reason() {
    let server = start("metrics", Duration::from_secs(60)).await;
    let mut client = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    for name in [
        "plain-pod",
        "plain-pod",
        "skip-host-network",
        "deny-bad-annotation",
        "allow-not-a-pod",
    ] {
        let body = std::fs::read(testdata(&format!("reviews/{name}.json"))).unwrap();
        assert_eq!(
            client
                .request("POST", "/mutate", body)
                .await
                .unwrap()
                .status,
            200
        );
    }
    let metrics = client.get("/metrics").await.unwrap().body;
    for line in [
        r#"trellis_webhook_reviews_total{result="injected",reason=""} 2"#,
        r#"trellis_webhook_reviews_total{result="skipped",reason="host_network"} 1"#,
        r#"trellis_webhook_reviews_total{result="denied",reason=""} 1"#,
        r#"trellis_webhook_reviews_total{result="skipped",reason="not_a_pod"} 1"#,
        "trellis_webhook_review_duration_seconds_count 5",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn certificate_rotated_on_disk_while_clients_keep_calling() {
    let server = start("rotate", Duration::from_millis(100)).await;
    let body = std::fs::read(testdata("reviews/plain-pod.json")).unwrap();
    let mut old_conn = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    let first_cert = old_conn.peer_cert().map(<[u8]>::to_vec);

    // A steady caller on the old keep-alive connection, through the whole rotation.
    let caller_body = body.clone();
    let caller = tokio::spawn(async move {
        let mut ok = 0;
        for _ in 0..60 {
            let resp = old_conn
                .request("POST", "/mutate", caller_body.clone())
                .await
                .expect("no dropped connection");
            assert_eq!(resp.status, 200);
            ok += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ok
    });

    tokio::time::sleep(Duration::from_millis(150)).await;
    // A half-written or garbage file is ignored: the old certificate keeps serving.
    std::fs::write(server.dir.join("tls.crt"), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still_old = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    assert_eq!(still_old.peer_cert(), first_cert.as_deref());

    // The rotated Secret: a new CA and serving pair.
    let rotated = webhook::bootstrap::generate(&webhook::bootstrap::dns_names(
        "trellis-webhook",
        "trellis-system",
    ))
    .unwrap();
    webhook::bootstrap::write_files(
        &rotated,
        &server.dir.join("tls.crt"),
        &server.dir.join("tls.key"),
    )
    .unwrap();
    let mut new_conn = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(c) = connect(server.addr, &rotated.ca_pem).await {
            new_conn = Some(c);
            break;
        }
    }
    let mut new_conn = new_conn.expect("new handshakes get the rotated certificate");
    assert_ne!(new_conn.peer_cert(), first_cert.as_deref());
    assert_eq!(
        new_conn
            .request("POST", "/mutate", body)
            .await
            .unwrap()
            .status,
        200
    );
    assert!(
        connect(server.addr, &server.bundle.ca_pem).await.is_err(),
        "the old CA no longer verifies new handshakes"
    );
    assert_eq!(
        caller.await.unwrap(),
        60,
        "the old connection kept working throughout"
    );
}

/// The plain-pod review with `edit` applied to its pod.
fn review_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_slice(&std::fs::read(testdata("reviews/plain-pod.json")).unwrap())
            .unwrap();
    edit(&mut review["request"]["object"]);
    serde_json::to_vec(&review).unwrap()
}

#[tokio::test]
async fn a_pod_with_200000_containers_is_denied_naming_count_and_cap() {
    let server = start("containers", Duration::from_secs(60)).await;
    let mut client = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    let body = review_with(|pod| {
        pod["spec"]["containers"] = Value::Array(vec![json!({ "name": "c" }); 200_000]);
    });
    assert!(body.len() < webhook::server::MAX_BODY, "{}", body.len());
    let resp = client.request("POST", "/mutate", body).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let resp: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(resp["response"]["uid"], "0001");
    assert_eq!(resp["response"]["allowed"], false);
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert_eq!(
        msg,
        format!(
            "trellis: pod refused: the pod has 200000 containers; Trellis admits at most {}",
            webhook::pod::MAX_CONTAINERS
        )
    );
}

#[tokio::test]
async fn megabyte_annotations_get_denials_of_a_few_hundred_bytes() {
    let server = start("long-annotations", Duration::from_secs(60)).await;
    let mut client = connect(server.addr, &server.bundle.ca_pem).await.unwrap();
    let mib = 1 << 20;
    let key = format!("trellis.dev/max-connection{}", "s".repeat(mib));
    let cases = [
        // A misspelt key, 1 MiB long: named cut short, never compared with the known ones.
        (
            json!({ key.clone(): "10" }),
            format!("…({} bytes) is {} bytes long", key.len(), key.len()),
        ),
        // A bad value, 1 MiB long: over the annotations' total.
        (
            json!({ "trellis.dev/max-connections": "9".repeat(mib) }),
            "annotations are 1048603 bytes in all".to_string(),
        ),
        // A bad value under the total, still cut when echoed.
        (
            json!({ "trellis.dev/max-connections": "9".repeat(200_000) }),
            "\"…(200000 bytes): a whole number".to_string(),
        ),
    ];
    for (annotations, want) in cases {
        let body = review_with(|pod| pod["metadata"]["annotations"] = annotations);
        let resp = client.request("POST", "/mutate", body).await.unwrap();
        assert_eq!(resp.status, 200);
        assert!(
            resp.body.len() < 4096,
            "a denial of {} bytes",
            resp.body.len()
        );
        let resp: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(resp["response"]["allowed"], false);
        let msg = resp["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains(&want), "{want:?} not in {msg}");
    }
}

/// Limits with every timeout `t` and the connection cap `conns`.
fn limits(t: Duration, conns: usize) -> ServeLimits {
    ServeLimits {
        max_open_connections: conns,
        tls_handshake_timeout: t,
        header_read_timeout: t,
        body_read_timeout: t,
        idle_timeout: t,
        ..ServeLimits::default()
    }
}

/// Reads until the server closes the stream (EOF or reset); `false` if it is still open after 10 s.
async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut buf = vec![0; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .is_ok()
}

#[tokio::test]
async fn stalled_and_idle_connections_are_closed_after_their_timeouts() {
    let server = start_with(
        "timeouts",
        Duration::from_secs(60),
        limits(Duration::from_millis(300), 64),
    )
    .await;
    let (ca, addr) = (&server.bundle.ca_pem, server.addr);

    // Half a request head, then nothing.
    let mut partial = tls_stream(addr, ca, &[b"http/1.1"]).await.unwrap();
    partial
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: trellis\r\nContent-Type: appl")
        .await
        .unwrap();
    // A TLS handshake, then not a byte.
    let mut silent = tls_stream(addr, ca, &[b"http/1.1"]).await.unwrap();
    // A plain TCP connection that never starts TLS.
    let mut no_tls = tokio::net::TcpStream::connect(addr).await.unwrap();
    // An HTTP/1.1 keep-alive connection after one request.
    let mut kept = tls_stream(addr, ca, &[b"http/1.1"]).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: trellis\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    assert!(closed_by_server(&mut partial).await, "partial head");
    assert!(closed_by_server(&mut silent).await, "silent TLS connection");
    assert!(closed_by_server(&mut no_tls).await, "no TLS handshake");
    assert!(
        closed_by_server(&mut kept).await,
        "idle HTTP/1.1 keep-alive"
    );

    // An HTTP/2 connection after one request: told to go away, then closed.
    let tls = tls_stream(addr, ca, &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://{}/healthz", support::HOST))
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .is_ok(),
        "idle HTTP/2 connection still open"
    );

    // The server still serves.
    let mut client = connect(addr, ca).await.unwrap();
    assert_eq!(client.get("/healthz").await.unwrap().status, 200);
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let server = start_with(
        "conn-cap",
        Duration::from_secs(60),
        limits(Duration::from_secs(60), 2),
    )
    .await;
    let (ca, addr) = (&server.bundle.ca_pem, server.addr);
    let mut first = connect(addr, ca).await.unwrap();
    let mut second = connect(addr, ca).await.unwrap();
    assert_eq!(first.get("/healthz").await.unwrap().status, 200);
    assert_eq!(second.get("/healthz").await.unwrap().status, 200);

    // The third is not accepted while two are open: its TLS handshake gets no answer.
    let third = tokio::spawn({
        let ca = ca.clone();
        async move { connect(addr, &ca).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");

    // One closes: the third is accepted and served.
    drop(first);
    let mut third = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("accepted once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(third.get("/healthz").await.unwrap().status, 200);
    assert_eq!(second.get("/healthz").await.unwrap().status, 200);
}
