//! Issue 16 item 3: one kustomize `images:` entry changes every reference to the Trellis image, the
//! Deployments' containers and the `proxy`/`proxyinit` images the webhook injects (its
//! `TRELLIS_PROXY_IMAGE`/`TRELLIS_PROXYINIT_IMAGE` env, rewritten through
//! `manifests/kustomizeconfig.yaml`). Renders with `kubectl kustomize`, as `kubectl apply -k` would;
//! scripts/install-deps.sh installs kubectl.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;

/// The image name every manifest defaults to.
const DEFAULT_NAME: &str = "ghcr.io/trellis-mesh/trellis";
/// What `examples/own-registry/` sets.
const EXAMPLE_IMAGE: &str = "registry.example.com/platform/trellis@sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// `kubectl kustomize <dir>`: the text and its objects.
fn kustomize(dir: &Path) -> (String, Vec<Value>) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("kustomize output parses"))
        .filter(|v| !v.is_null())
        .collect();
    (text, objects)
}

fn deployment<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["name"] == name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name} with a value"))
}

/// Every `image` of every container and init container of every workload.
fn images(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for o in objects {
        let spec = &o["spec"]["template"]["spec"];
        for key in ["containers", "initContainers"] {
            for c in spec[key].as_array().into_iter().flatten() {
                out.push(c["image"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

/// The Trellis install as an overlay sets it: no reference to the default image, and the webhook
/// and control containers and both injected images are `want`.
fn assert_install(text: &str, objects: &[Value], want: &str) {
    assert!(
        !text.contains(DEFAULT_NAME),
        "the build still names {DEFAULT_NAME}:\n{}",
        text.lines()
            .filter(|l| l.contains(DEFAULT_NAME))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let webhook = container(deployment(objects, "trellis-webhook"), "webhook");
    assert_eq!(webhook["image"], want);
    assert_eq!(env(webhook, "TRELLIS_PROXY_IMAGE"), want);
    assert_eq!(env(webhook, "TRELLIS_PROXYINIT_IMAGE"), want);
    let all = images(objects);
    assert!(all.len() >= 2, "{all:?}");
    assert!(all.iter().all(|i| i == want), "{all:?}");
}

#[test]
fn the_base_injects_the_image_it_runs() {
    let (_, objects) = kustomize(&repo().join("manifests"));
    let default = format!("{DEFAULT_NAME}:{}", env!("CARGO_PKG_VERSION"));
    let webhook = container(deployment(&objects, "trellis-webhook"), "webhook");
    assert_eq!(webhook["image"], default.as_str());
    // Written out in the Deployment (not left to the binary's default), so that `images:` can
    // rewrite them.
    assert_eq!(env(webhook, "TRELLIS_PROXY_IMAGE"), default);
    assert_eq!(env(webhook, "TRELLIS_PROXYINIT_IMAGE"), default);
}

#[test]
fn the_example_overlay_leaves_no_reference_to_the_default_image() {
    let (text, objects) = kustomize(&repo().join("examples/own-registry"));
    assert_install(&text, &objects, EXAMPLE_IMAGE);
    // The webhook and the control plane, both.
    let control = deployment(&objects, "trellis-control");
    assert_eq!(images(std::slice::from_ref(control)), [EXAMPLE_IMAGE]);
}

#[test]
fn the_example_demo_overlay_leaves_no_reference_to_the_default_image() {
    let (text, objects) = kustomize(&repo().join("examples/own-registry/demo"));
    assert!(!text.contains(DEFAULT_NAME), "{text}");
    let all = images(&objects);
    assert!(!all.is_empty());
    assert!(all.iter().all(|i| i == EXAMPLE_IMAGE), "{all:?}");
}

/// `dir` relative to `from` (both absolute): kustomize takes only relative paths to a base.
fn relative(dir: &Path, from: &Path) -> PathBuf {
    let a: Vec<Component> = dir.components().collect();
    let b: Vec<Component> = from.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &a[common..] {
        rel.push(c);
    }
    rel
}

#[test]
fn a_tag_override_in_a_new_overlay_reaches_the_injected_images() {
    let overlay = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-override-tag");
    std::fs::create_dir_all(&overlay).unwrap();
    let overlay = overlay.canonicalize().unwrap();
    let base = relative(&repo().join("manifests"), &overlay);
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n\
             images:\n  - name: {DEFAULT_NAME}\n    newName: localhost:5000/trellis\n    newTag: dev\n",
            base.display()
        ),
    )
    .unwrap();
    let (text, objects) = kustomize(&overlay);
    assert_install(&text, &objects, "localhost:5000/trellis:dev");
}

/// What the overlay sets is what gets injected: the env of the rendered webhook container, given to
/// `webhook inject` (the same flags as `webhook serve`), on the demo's green Deployment from the
/// example demo overlay. No container of the result names the default image.
#[test]
fn the_webhook_injects_what_the_overlay_sets() {
    let (_, install) = kustomize(&repo().join("examples/own-registry"));
    let webhook = container(deployment(&install, "trellis-webhook"), "webhook");
    let (_, demo) = kustomize(&repo().join("examples/own-registry/demo"));
    let green = deployment(&demo, "green");
    let input = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-override-green.json");
    std::fs::write(&input, serde_json::to_vec(green).unwrap()).unwrap();

    let bin = sandbox::bins::dir().join("webhook");
    let mut cmd = Command::new(&bin);
    cmd.args(["inject", "-f"]).arg(&input);
    for e in webhook["env"].as_array().unwrap() {
        if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
            if k.ends_with("_IMAGE") {
                cmd.env(k, v);
            }
        }
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{}: {e} (cargo build --release --bins first)",
            bin.display()
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let injected: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let spec = &injected[0]["spec"]["template"]["spec"];
    let named = |key: &str, name: &str| {
        spec[key]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .map(|c| c["image"].clone())
            .unwrap_or_else(|| panic!("no {key} {name} in {text}"))
    };
    assert_eq!(named("initContainers", "proxyinit"), EXAMPLE_IMAGE);
    let proxy = if spec["containers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == "proxy"))
    {
        named("containers", "proxy")
    } else {
        // Native sidecar: the proxy is a restartable init container.
        named("initContainers", "proxy")
    };
    assert_eq!(proxy, EXAMPLE_IMAGE);
    let all = images(&injected);
    assert!(all.iter().all(|i| i == EXAMPLE_IMAGE), "{all:?}");
}
