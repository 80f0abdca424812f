//! Transparent mode for real: a "pod" network namespace with iptables REDIRECT rules like
//! `proxyinit` writes (inbound → 15006, outbound → 15001, uid 1337 and loopback exempt), the
//! sidecar running as uid 1337 inside it, a client namespace on the other end of a veth pair.
//! Needs root, iproute2 and iptables; skipped (with a message) without them.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{get, start_app_on, Client};

struct Sandbox {
    pod: String,
    client: String,
    pod_ip: String,
    client_ip: String,
    pod_ip6: String,
    proxy: Option<Child>,
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}

impl Sandbox {
    fn new() -> Option<Sandbox> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        let id = std::process::id();
        let net = format!("198.18.{}", id % 250);
        let s = Sandbox {
            pod: format!("trellis-pod-{id}"),
            client: format!("trellis-cl-{id}"),
            pod_ip: format!("{net}.2"),
            client_ip: format!("{net}.1"),
            pod_ip6: format!("fd00:7e11:{:x}::2", id % 65536),
            proxy: None,
        };
        if !sh(&["ip", "netns", "add", &s.pod]) {
            return None;
        }
        let (vp, vc) = (format!("tp{id}"), format!("tc{id}"));
        let ok = sh(&["ip", "netns", "add", &s.client])
            && sh(&[
                "ip", "link", "add", &vp, "type", "veth", "peer", "name", &vc,
            ])
            && sh(&["ip", "link", "set", &vp, "netns", &s.pod])
            && sh(&["ip", "link", "set", &vc, "netns", &s.client])
            && [(&s.pod, &vp, &s.pod_ip), (&s.client, &vc, &s.client_ip)]
                .iter()
                .all(|(ns, dev, ip)| {
                    sh(&[
                        "ip",
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{ip}/24"),
                        "dev",
                        dev,
                    ]) && sh(&["ip", "-n", ns, "link", "set", dev, "up"])
                        && sh(&["ip", "-n", ns, "link", "set", "lo", "up"])
                });
        assert!(ok, "could not build the sandbox network");
        let v6net = format!("fd00:7e11:{:x}", id % 65536);
        let ok6 = sh(&[
            "ip",
            "-n",
            &s.pod,
            "addr",
            "add",
            &format!("{v6net}::2/64"),
            "dev",
            &vp,
            "nodad",
        ]) && sh(&[
            "ip",
            "-n",
            &s.client,
            "addr",
            "add",
            &format!("{v6net}::1/64"),
            "dev",
            &vc,
            "nodad",
        ]);
        assert!(ok6, "could not add IPv6 addresses");
        // The rules proxyinit writes (admin 9901 not captured, like Istio's own ports).
        let rules = "*nat\n\
            :TRELLIS_INBOUND - [0:0]\n\
            :TRELLIS_OUTPUT - [0:0]\n\
            -A PREROUTING -p tcp -j TRELLIS_INBOUND\n\
            -A TRELLIS_INBOUND -p tcp --dport 9901 -j RETURN\n\
            -A TRELLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006\n\
            -A OUTPUT -p tcp -j TRELLIS_OUTPUT\n\
            -A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN\n\
            -A TRELLIS_OUTPUT -d 127.0.0.1/32 -j RETURN\n\
            -A TRELLIS_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n\
            COMMIT\n";
        let mut c = Command::new("ip")
            .args(["netns", "exec", &s.pod, "iptables-restore"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        std::io::Write::write_all(c.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success(), "iptables-restore failed");
        let rules6 = rules.replace("127.0.0.1/32", "::1/128");
        let mut c = Command::new("ip")
            .args(["netns", "exec", &s.pod, "ip6tables-restore"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("ip6tables-restore");
        std::io::Write::write_all(c.stdin.as_mut().unwrap(), rules6.as_bytes()).unwrap();
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success(), "ip6tables-restore failed");
        Some(s)
    }

    /// Starts the sidecar in the pod namespace as uid/gid 1337, like the injected container.
    fn start_proxy(&mut self, args: &[&str]) {
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.pod)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
        cmd.args(args).env_remove("TRELLIS_LOG_LEVEL");
        unsafe {
            cmd.pre_exec(move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(1337))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(1337))?;
                Ok(())
            });
        }
        self.proxy = Some(cmd.spawn().expect("spawn proxy in the pod"));
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        sh(&["ip", "netns", "del", &self.pod]);
        sh(&["ip", "netns", "del", &self.client]);
    }
}

/// Runs `f` on a thread whose network namespace is `ns`, with its own runtime; returns its result.
fn in_ns<T, Fut>(ns: &str, f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(path).unwrap();
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

/// Starts a server inside `ns` that lives for the rest of the test process.
fn serve_in_ns<Fut>(ns: &str, f: impl FnOnce() -> Fut + Send + 'static) -> SocketAddr
where
    Fut: Future<Output = SocketAddr> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(path).unwrap();
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(f().await).unwrap();
            std::future::pending::<()>().await
        })
    });
    rx.recv().unwrap()
}

fn stats(pod: &str) -> std::collections::HashMap<String, String> {
    in_ns(pod, || async {
        let (s, body) = get("127.0.0.1:9901".parse().unwrap(), "/stats")
            .await
            .unwrap();
        assert_eq!(s, 200);
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

#[test]
fn sidecar_in_a_network_namespace_with_iptables_redirect() {
    let Some(mut sb) = Sandbox::new() else {
        eprintln!("skipping: needs root, `ip netns` and iptables");
        return;
    };
    let pod = sb.pod.clone();
    let client = sb.client.clone();

    // The app in the pod, on 8080; an outside HTTP service and a server-speaks-first service.
    let app = serve_in_ns(&pod, || start_app_on("0.0.0.0:8080"));
    assert_eq!(app.port(), 8080);
    let app6 = serve_in_ns(&pod, || start_app_on("[::]:8081"));
    assert_eq!(app6.port(), 8081);
    let cip: std::net::IpAddr = sb.client_ip.parse().unwrap();
    let outside = SocketAddr::new(
        cip,
        serve_in_ns(&client, || start_app_on("0.0.0.0:0")).port(),
    );
    let banner = serve_in_ns(&client, || async {
        let l = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let _ = s
                        .write_all(b"220 hello from a server that speaks first\r\n")
                        .await;
                    let mut b = [0u8; 16];
                    let _ = s.read(&mut b).await;
                });
            }
        });
        addr
    });
    let banner = SocketAddr::new(cip, banner.port());

    sb.start_proxy(&[
        "--max-connections=1",
        "--max-pending-requests=1",
        "--outbound-max-connections=5",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_ns(&pod, || async {
        get("127.0.0.1:9901".parse().unwrap(), "/ready")
            .await
            .map(|r| r.0)
            .unwrap_or(0)
    }) != 200
    {
        assert!(Instant::now() < deadline, "sidecar never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1. Inbound: the client dials the pod's app port; the sidecar sits in between.
    let target: SocketAddr = format!("{}:8080", sb.pod_ip).parse().unwrap();
    let client_ip = sb.client_ip.clone();
    in_ns(&client, move || async move {
        let mut c = Client::connect(target).await.unwrap();
        let a = c.get("/").await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["x-seen-x-forwarded-for"], client_ip.as_str());
        assert!(a.headers.contains_key("x-seen-x-request-id"));
    });
    let s = stats(&pod);
    assert_eq!(s["cluster.inbound_8080.upstream_rq_200"], "1");
    assert_eq!(s["http.inbound.downstream_rq_total"], "1");

    // Inbound limits 1 connection / 1 pending: 4 slow concurrent requests, some 503 UO.
    let codes = in_ns(&client, move || async move {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(target).await.unwrap();
                let a = c.get("/?delay_ms=500").await.unwrap();
                (a.status, a.headers.contains_key("x-envoy-overloaded"))
            }));
        }
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });
    let uo = codes.iter().filter(|c| **c == (503, true)).count();
    let ok = codes.iter().filter(|c| c.0 == 200).count();
    assert!(uo >= 1 && ok >= 1 && uo + ok == 4, "{codes:?}");
    let s = stats(&pod);
    assert_eq!(
        s["cluster.inbound_8080.upstream_rq_pending_overflow"],
        uo.to_string()
    );

    // IPv6 inbound: IP6T_SO_ORIGINAL_DST.
    let target6: SocketAddr = format!("[{}]:8081", sb.pod_ip6).parse().unwrap();
    in_ns(&client, move || async move {
        let mut c = Client::connect(target6).await.unwrap();
        assert_eq!(c.get("/").await.unwrap().status, 200);
    });
    let s = stats(&pod);
    assert_eq!(s["cluster.inbound_8081.upstream_rq_200"], "1");

    // 2. Outbound: the app dials an outside service; the sidecar (uid 1337, exempt) forwards it.
    in_ns(&pod, move || async move {
        let mut c = Client::connect(outside).await.unwrap();
        assert_eq!(c.get("/").await.unwrap().status, 200);
    });
    let s = stats(&pod);
    assert_eq!(s[&format!("cluster.{outside}.upstream_rq_200")], "1");
    assert_eq!(s["http.outbound.downstream_rq_total"], "1");

    // 3. Server speaks first: nothing to sniff, so after the detection timeout it is opaque TCP.
    in_ns(&pod, move || async move {
        let mut s = TcpStream::connect(banner).await.unwrap();
        let mut b = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("banner relayed")
            .unwrap();
        assert!(b[..n].starts_with(b"220 hello"));
    });
    let s = stats(&pod);
    assert_eq!(s["tcp.outbound.downstream_cx_total"], "1");
    assert_eq!(s[&format!("cluster.{banner}.upstream_cx_total")], "1");

    // 4. No loops: a connection whose destination is the proxy's own listener is refused.
    in_ns(&pod, || async {
        let mut s = TcpStream::connect("127.0.0.1:15001").await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "a looping connection must be closed");
    });
    let s = stats(&pod);
    assert_eq!(s["http.outbound.downstream_cx_loop_refused"], "1");
}
