//! A fixed-rate HTTP/1.1 load client for `make bench`, with microsecond latency resolution (hey
//! rounds to 0.1 ms, too coarse to see what a proxy pair adds).
//!
//! `bench_rate URL_HOST:PORT RATE SECONDS CONNS` keeps CONNS keep-alive connections, each sending
//! `GET /` on its own fixed schedule (RATE/CONNS per second, start times staggered). Latency is
//! measured from the send, or from the scheduled time when the previous answer arrived after it,
//! so a stall counts for the requests it held up (no coordinated omission, as in wrk2). Blocking
//! sockets, one thread per connection: no runtime timer rounding to the millisecond.
//! Prints one line:
//! `rps=… p50_ms=… p90_ms=… p99_ms=… p999_ms=… max_ms=… ok=… errors=…`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads one response (head + `content-length` body) into `buf`; returns whether it was a 2xx.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let ok = head.as_bytes().get(9) == Some(&b'2');
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let want = end + 4 + len;
            while buf.len() < want {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(ok);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection on its own thread (blocking sockets, `thread::sleep` to the schedule: no
/// runtime timer wheel rounding sends to the millisecond).
fn one_conn(addr: String, interval: Duration, first: Instant, until: Instant) -> (Vec<u32>, u64) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bench_rate\r\n\r\n");
    let mut buf = Vec::with_capacity(4096);
    let mut conn: Option<TcpStream> = None;
    let mut at = first;
    let mut prev_done = first;
    while at < until {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if conn.is_none() {
            match TcpStream::connect(&addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                Err(_) => {
                    errors += 1;
                    at += interval;
                    continue;
                }
            }
        }
        let s = conn.as_mut().expect("connected");
        // Latency runs from the send, unless the previous answer came after this request's
        // scheduled time: then from the schedule, so a stall counts for every request it held
        // up (no coordinated omission). The client's own sleep overshoot is never counted.
        let from = if prev_done > at { at } else { Instant::now() };
        let r = match s.write_all(req.as_bytes()) {
            Ok(()) => read_response(s, &mut buf),
            Err(e) => Err(e),
        };
        match r {
            Ok(true) => lat.push(from.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Ok(false) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
        prev_done = Instant::now();
        at += interval;
    }
    (lat, errors)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, rate, secs, conns] = &args[..] else {
        eprintln!("usage: bench_rate HOST:PORT RATE SECONDS CONNS");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().expect("RATE");
    let secs: f64 = secs.parse().expect("SECONDS");
    let conns: usize = conns.parse().expect("CONNS");
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let until = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let first = start + interval.mul_f64(i as f64 / conns as f64);
            let addr = addr.clone();
            std::thread::spawn(move || one_conn(addr, interval, first, until))
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().expect("connection thread");
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let q = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    println!(
        "rps={:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} ok={} errors={}",
        lat.len() as f64 / secs,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        q(1.0),
        lat.len(),
        errors
    );
}
