//! The API server double against the real kube client and kube-runtime watcher: what works
//! against it here is what the control plane's Kubernetes source relies on.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kit::apiserver::{ApiServer, Options, SERVICES, TRAFFICPOLICIES};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::{json, Value};

fn service(name: &str, ip: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap()
}

fn ip(s: &Service) -> String {
    s.spec.as_ref().unwrap().cluster_ip.clone().unwrap()
}

#[tokio::test]
async fn a_typed_api_creates_lists_gets_patches_replaces_and_deletes() {
    let server = ApiServer::start().unwrap();
    let api: Api<Service> = Api::namespaced(server.client(), "default");

    let created = api
        .create(&PostParams::default(), &service("web", "10.96.0.1"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let err = api
        .create(&PostParams::default(), &service("web", "10.96.0.1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    api.create(&PostParams::default(), &service("db", "10.96.0.2"))
        .await
        .unwrap();

    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 2);
    let rv: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(rv, server.resource_version());
    let web = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    let not_web = api
        .list(&ListParams::default().labels("app!=web,app in (db, x)"))
        .await
        .unwrap();
    assert_eq!(not_web.items[0].metadata.name.as_deref(), Some("db"));
    let everywhere: Api<Service> = Api::all(server.client());
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    // Merge and JSON patches; a spec change bumps the generation.
    let p = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": "10.96.0.9"}})),
        )
        .await
        .unwrap();
    assert_eq!(ip(&p), "10.96.0.9");
    assert_eq!(p.metadata.generation, Some(2));
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/labels/tier", "value": "front"}
    ]))
    .unwrap();
    let p = api
        .patch("web", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["tier"], "front");
    assert_eq!(p.metadata.generation, Some(2), "labels are not spec");

    // Status goes through /status only.
    let s = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}, "spec": {"clusterIP": "1.1.1.1"}})),
        )
        .await
        .unwrap();
    assert_eq!(ip(&s), "10.96.0.9", "a status write leaves the spec");
    assert!(s.status.is_some());
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.7".into());
    let err = api
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    let mut fresh = api.get("web").await.unwrap();
    fresh.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.7".into());
    fresh.status = None;
    let r = api
        .replace("web", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(ip(&r), "10.96.0.7");
    assert!(r.status.is_some(), "a replace keeps the status");

    api.delete("web", &DeleteParams::default()).await.unwrap();
    let err = api.get("web").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
    assert!(server.object(&SERVICES.gvr, "default", "db").is_some());
    assert!(server.object(&SERVICES.gvr, "default", "web").is_none());
}

#[tokio::test]
async fn discovery_answers_what_the_client_asks() {
    let server = ApiServer::start().unwrap();
    let client = server.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.minor, "33");
    let core = client.list_core_api_versions().await.unwrap();
    assert_eq!(core.versions, ["v1"]);
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["discovery.k8s.io", "trellis.dev"]);
    let resources = client
        .list_api_group_resources("trellis.dev/v1alpha1")
        .await
        .unwrap();
    let names: Vec<&str> = resources
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["trafficpolicies", "trafficpolicies/status"]);
    let core = client.list_core_api_resources("v1").await.unwrap();
    assert!(core
        .resources
        .iter()
        .any(|r| r.name == "services" && r.namespaced));
}

#[tokio::test]
async fn a_raw_watch_resumes_bookmarks_and_expires() {
    let server = ApiServer::with_options(Options {
        history: 3,
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .unwrap();
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let start = server.resource_version().to_string();
    server.create(service("a", "10.96.0.1")).unwrap();
    server
        .patch(
            &SERVICES.gvr,
            "default",
            "a",
            json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .unwrap();
    server.delete(&SERVICES.gvr, "default", "a").unwrap();

    let mut events = Vec::new();
    let wp = WatchParams::default().timeout(1);
    let mut stream = api.watch(&wp, &start).await.unwrap().boxed();
    while let Some(e) = stream.next().await {
        match e.unwrap() {
            WatchEvent::Added(s) => {
                events.push(format!("added {}", s.metadata.resource_version.unwrap()))
            }
            WatchEvent::Modified(s) => {
                events.push(format!("modified {}", s.metadata.resource_version.unwrap()))
            }
            WatchEvent::Deleted(s) => {
                events.push(format!("deleted {}", s.metadata.resource_version.unwrap()))
            }
            WatchEvent::Bookmark(b) => {
                events.push(format!("bookmark {}", b.metadata.resource_version))
            }
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    let n: u64 = start.parse().unwrap();
    assert_eq!(
        events[..3],
        [
            format!("added {}", n + 1),
            format!("modified {}", n + 2),
            format!("deleted {}", n + 3)
        ]
    );
    assert!(
        events[3..]
            .iter()
            .all(|e| *e == format!("bookmark {}", n + 3)),
        "{events:?}"
    );
    assert!(
        events.len() >= 4,
        "at least the closing bookmark: {events:?}"
    );

    // One more write pushes the ADDED out of the 3-event history: resuming before it is 410.
    server.create(service("b", "10.96.0.2")).unwrap();
    let mut stream = api.watch(&wp, &start).await.unwrap().boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(stream.next().await.is_none());
}

/// What a watcher event says, for comparing sequences.
fn describe(e: &watcher::Event<Service>) -> String {
    match e {
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(s) => format!(
            "init-apply {} {}",
            s.metadata.name.as_deref().unwrap(),
            ip(s)
        ),
        watcher::Event::InitDone => "init-done".into(),
        watcher::Event::Apply(s) => {
            format!("apply {} {}", s.metadata.name.as_deref().unwrap(), ip(s))
        }
        watcher::Event::Delete(s) => format!("delete {}", s.metadata.name.as_deref().unwrap()),
    }
}

/// Runs a watcher on its own task (a watcher only watches while polled), its events described.
fn spawn_watcher(api: Api<Service>) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(e) = stream.next().await {
            match e {
                Ok(e) => {
                    if tx.send(describe(&e)).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("watcher error (retried): {e}"),
            }
        }
    });
    rx
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the watcher ended"),
        Err(_) => panic!("no watcher event within 20s"),
    }
}

async fn wait_for_watches(server: &ApiServer, n: usize) {
    for _ in 0..200 {
        if server.open_watches() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} watches never opened");
}

#[tokio::test]
async fn a_watcher_sees_changes_in_order_and_survives_disconnects_and_410() {
    let server = ApiServer::start().unwrap();
    server.create(service("a", "10.96.0.1")).unwrap();
    let api: Api<Service> = Api::all(server.client());
    let mut stream = spawn_watcher(api);
    assert_eq!(next(&mut stream).await, "init");
    assert_eq!(next(&mut stream).await, "init-apply a 10.96.0.1");
    assert_eq!(next(&mut stream).await, "init-done");
    wait_for_watches(&server, 1).await;

    server.create(service("b", "10.96.0.2")).unwrap();
    server
        .patch(
            &SERVICES.gvr,
            "default",
            "b",
            json!({"spec": {"clusterIP": "10.96.0.3"}}),
        )
        .unwrap();
    server.delete(&SERVICES.gvr, "default", "a").unwrap();
    assert_eq!(next(&mut stream).await, "apply b 10.96.0.2");
    assert_eq!(next(&mut stream).await, "apply b 10.96.0.3");
    assert_eq!(next(&mut stream).await, "delete a");

    // Disconnected: the watcher resumes where it was, without a relist, and misses nothing.
    server.disconnect_watches();
    server.create(service("c", "10.96.0.4")).unwrap();
    assert_eq!(next(&mut stream).await, "apply c 10.96.0.4");
    wait_for_watches(&server, 1).await;

    // Expired: the watcher gets 410 and relists the whole set.
    server.expire_watches();
    server.delete(&SERVICES.gvr, "default", "c").unwrap();
    assert_eq!(next(&mut stream).await, "init");
    assert_eq!(next(&mut stream).await, "init-apply b 10.96.0.3");
    assert_eq!(next(&mut stream).await, "init-done");
    server.create(service("d", "10.96.0.5")).unwrap();
    assert_eq!(next(&mut stream).await, "apply d 10.96.0.5");
    assert!(server
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /api/v1/services?") && r.contains("watch=true")));
}

#[tokio::test]
async fn a_kind_not_served_is_404_until_installed() {
    let server = ApiServer::with_options(Options {
        resources: vec![SERVICES],
        ..Options::default()
    })
    .unwrap();
    let ar = kube::core::ApiResource {
        group: "trellis.dev".into(),
        version: "v1alpha1".into(),
        api_version: "trellis.dev/v1alpha1".into(),
        kind: "TrafficPolicy".into(),
        plural: "trafficpolicies".into(),
    };
    let api: Api<kube::core::DynamicObject> = Api::all_with(server.client(), &ar);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
    server.install(TRAFFICPOLICIES);
    server
        .create(json!({
            "apiVersion": "trellis.dev/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "p", "namespace": "default"}, "spec": {"targetRefs": []},
            "status": {"dropped": true},
        }))
        .unwrap();
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let namespaced: Api<kube::core::DynamicObject> =
        Api::namespaced_with(server.client(), "default", &ar);
    let p = namespaced
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Accepted"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.data["status"],
        json!({"conditions": [{"type": "Accepted"}]})
    );
    let stored: Value = server.object(&TRAFFICPOLICIES.gvr, "default", "p").unwrap();
    assert_eq!(
        stored["metadata"]["generation"], 1,
        "a status write is not a generation"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let server = ApiServer::with_options(Options {
        max_body: 1024,
        ..Options::default()
    })
    .unwrap();
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let mut big = service("big", "10.96.0.1");
    big.metadata.annotations = Some([("x".to_string(), "y".repeat(2048))].into());
    let err = api.create(&PostParams::default(), &big).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 413),
        "{err:?}"
    );
    assert!(server.objects(&SERVICES.gvr).is_empty());
}
