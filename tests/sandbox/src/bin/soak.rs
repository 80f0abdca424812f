//! `make soak`: the sandbox mesh of `make demo` under mixed load for a set time
//! (`SOAK_MINUTES`, default 10), to find what only time shows: memory or descriptors that creep,
//! counters that do not come back to zero.
//!
//! Every round (about 10 s), at once: the client pod sends keep-alive load to green, requests on
//! new connections to green, and keep-alive load to red, all through its sidecar (whose outbound
//! pool, 3 connections and 1 pending, overflows); blue (not meshed) sends an overflowing burst
//! straight at green's sidecar (green's pool is 10/10), slow clients (half a request head, then
//! nothing) and garbage clients (bytes that are not HTTP); green's sidecar has its log level
//! changed live (from inside the pod, as `kubectl exec` does); and every third round red's pod is
//! deleted and created again (a new IP, through the webhook).
//!
//! It reports each sidecar's RSS and open descriptors over time, every non-2xx answer with its
//! response flag (from the access logs), and, once the load has stopped, the counters that must
//! balance. Exit status 0 only if memory and descriptors stayed flat and every counter balanced.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sandbox::load::{self, LoadResult};
use sandbox::mesh::{Mesh, ADMIN_PORT};

const PREFIX: &str = "trellis-soak";
/// The sidecars watched (blue has none).
const MESHED: [&str; 3] = ["green", "red", "client"];
const ROUND: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let _lock = match sandbox::session::begin("make soak", PREFIX) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10.0);
    let result = Mesh::start(PREFIX).and_then(|mut mesh| {
        let r = soak(&mut mesh, Duration::from_secs_f64(minutes * 60.0));
        if !matches!(r, Ok(true)) {
            mesh.keep_logs = true;
        }
        r
    });
    kit::netns::remove_stale(PREFIX);
    sandbox::cleanup::all();
    match result {
        Ok(true) => {
            println!("\nsoak: every check passed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nsoak: SOME CHECKS FAILED (see FAIL above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("\nsoak: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One reading of a sidecar process.
#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
}

fn sample(mesh: &Mesh, app: &str) -> Option<Sample> {
    let pid = mesh.pod(app).container("proxy")?.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample { rss_kib, fds })
}

/// `(code, flag)` of every access log line of `app`'s sidecar that is not 2xx.
fn non_2xx(mesh: &Mesh, app: &str, into: &mut BTreeMap<(String, String, String), u64>) {
    for line in mesh.pod(app).logs("proxy").lines() {
        // `[time] "METHOD PATH PROTO" CODE FLAGS ...`
        let Some((_, rest)) = line.split_once("\" ") else {
            continue;
        };
        let mut f = rest.split(' ');
        let (Some(code), Some(flag)) = (f.next(), f.next()) else {
            continue;
        };
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) && !code.starts_with('2') {
            *into
                .entry((app.to_string(), code.to_string(), flag.to_string()))
                .or_default() += 1;
        }
    }
}

/// Raw connections from `from` that hold a slot without being useful: `n` slow clients (half a
/// head) and `n` garbage clients (not HTTP). Dropped after `hold`.
fn hostile(
    mesh: &Mesh,
    from: &str,
    to: SocketAddr,
    n: usize,
    hold: Duration,
) -> std::thread::JoinHandle<()> {
    let mut socks = Vec::new();
    for i in 0..2 * n {
        let Ok(s) = mesh.pod(from).ns.socket_for(to) else {
            continue;
        };
        let Ok(mut s) = connect(s, to) else { continue };
        let bytes: &[u8] = if i < n {
            b"GET / HTTP/1.1\r\nhost: green\r\n"
        } else {
            b"\x16\x03\x01\x00\x05garbage"
        };
        let _ = s.write_all(bytes);
        socks.push(s);
    }
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(socks);
    })
}

/// Connects a socket made in a pod's namespace.
fn connect(s: TcpStream, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = kit::block_on(async {
        let connect = tokio::net::TcpSocket::from_std_stream(s).connect(to);
        tokio::time::timeout(Duration::from_secs(5), connect)
            .await??
            .into_std()
    })?;
    s.set_nonblocking(false)?;
    Ok(s)
}

fn soak(mesh: &mut Mesh, length: Duration) -> anyhow::Result<bool> {
    for app in sandbox::scenarios::ALL_PODS {
        mesh.deploy(app)?;
    }
    println!(
        "soak: {} minutes of mixed load on green (pool 10/10), red, and the client's sidecar; \
         a row every {}s\n",
        length.as_secs_f64() / 60.0,
        ROUND.as_secs()
    );
    print!("{:>6} {:>5}", "time", "round");
    for app in MESHED {
        print!("  {:>10} {:>5}", format!("{app} KiB"), "fds");
    }
    println!("  {:>6} {:>6} {:>6}", "200", "503", "other");
    let start = Instant::now();
    let mut history: Vec<BTreeMap<&str, Sample>> = Vec::new();
    let mut non2xx = BTreeMap::new();
    let mut totals = LoadResult::default();
    let mut round = 0u32;
    let mut ok = true;
    while start.elapsed() < length {
        round += 1;
        let round_start = Instant::now();
        let green = mesh.pod("green").addr(8080);
        let red = mesh.pod("red").addr(8080);
        let client = mesh.pod("client");
        let runs = vec![
            load::start(client, &format!("http://{green}/"), 4, 400)?,
            load::start_with(
                client,
                &format!("http://{green}/"),
                2,
                100,
                &["--new-connections"],
            )?,
            load::start(client, &format!("http://{red}/"), 3, 300)?,
            load::start(
                mesh.pod("blue"),
                &format!("http://{green}/?delay_ms=100"),
                30,
                150,
            )?,
        ];
        let hostile = hostile(mesh, "blue", green, 3, Duration::from_secs(3));
        // A live configuration change, from inside the pod.
        for level in ["debug", "info"] {
            let local = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
            let path = format!("/logging?level={level}");
            let r = sandbox::call(
                &mesh.pod("green").ns,
                None,
                "POST",
                local,
                &path,
                Vec::new(),
            )?;
            if r.status != 200 {
                ok &= check(false, &format!("POST {path} answered {}", r.status));
            }
        }
        for run in runs {
            let r = run.finish()?;
            totals.requests += r.requests;
            totals.errors += r.errors;
            for (code, n) in r.codes {
                *totals.codes.entry(code).or_default() += n;
            }
        }
        let _ = hostile.join();
        let mut row = BTreeMap::new();
        print!("{:>5}s {:>5}", start.elapsed().as_secs(), round);
        for app in MESHED {
            match sample(mesh, app) {
                Some(s) => {
                    print!("  {:>10} {:>5}", s.rss_kib, s.fds);
                    row.insert(app, s);
                }
                None => print!("  {:>10} {:>5}", "-", "-"),
            }
        }
        println!(
            "  {:>6} {:>6} {:>6}",
            totals.code(200),
            totals.code(503),
            totals.other()
        );
        history.push(row);
        if round.is_multiple_of(3) {
            // Its access log goes with it: count it first.
            non_2xx(mesh, "red", &mut non2xx);
            mesh.restart("red").context("restarting red")?;
        }
        if let Some(rest) = ROUND.checked_sub(round_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }

    println!("\nThe load has stopped; letting the sidecars settle.");
    std::thread::sleep(Duration::from_secs(3));
    for app in MESHED {
        non_2xx(mesh, app, &mut non2xx);
    }
    println!("\nEvery non-2xx answer, by sidecar, code and response flag (access logs):");
    for ((app, code, flag), n) in &non2xx {
        println!("  {app:<7} {code} {flag:<4} {n}");
    }
    println!(
        "\nWhat the client saw: {} requests, {} x 200, {} x 503, {} other, {} without an answer",
        totals.requests,
        totals.code(200),
        totals.code(503),
        totals.other(),
        totals.errors
    );
    ok &= check(totals.code(200) > 0, "the mesh served requests throughout");

    println!("\nCounters that must balance once the load has stopped:");
    for app in MESHED {
        let stats = mesh.stats(app)?;
        for part in [
            "upstream_rq_active",
            "upstream_rq_pending_active",
            "downstream_rq_active",
        ] {
            for name in stats.names_with(part) {
                ok &= check(
                    stats.num(&name) == 0,
                    &format!("{app:<7} {}", stats.line(&name)),
                );
            }
        }
    }
    let green = mesh.stats("green")?;
    let cx = "cluster.inbound_8080.upstream_cx_active";
    ok &= check(
        green.num(cx) <= 10,
        &format!(
            "green   {} (the pool's size, at most max-connections 10)",
            green.line(cx)
        ),
    );

    println!("\nMemory and descriptors (green and the client live throughout; red is restarted):");
    for app in ["green", "client"] {
        let series: Vec<Sample> = history.iter().filter_map(|r| r.get(app).copied()).collect();
        if series.len() < 3 {
            continue;
        }
        let third = series.len() / 3;
        let max_rss = |s: &[Sample]| s.iter().map(|x| x.rss_kib).max().unwrap_or(0);
        let middle = max_rss(&series[third..2 * third]);
        let last = max_rss(&series[2 * third..]);
        let (first_fds, last_fds) = (series[0].fds, series[series.len() - 1].fds);
        // Flat: the last third's peak within 10% (or 1 MiB) of the middle third's.
        ok &= check(
            last <= middle + (middle / 10).max(1024),
            &format!(
                "{app}: peak RSS {middle} KiB in the middle third, {last} KiB in the last third"
            ),
        );
        ok &= check(
            last_fds <= first_fds + 16,
            &format!("{app}: {first_fds} descriptors after round 1, {last_fds} at the end"),
        );
    }
    Ok(ok)
}

fn check(pass: bool, what: &str) -> bool {
    println!("  {} {what}", if pass { "ok  " } else { "FAIL" });
    pass
}
