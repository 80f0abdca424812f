//! `grpc-echo`: the demo's gRPC app and its caller, both real gRPC (tonic over HTTP/2, the stack
//! most Rust services use), so that the sandbox shows what a gRPC user sees through the sidecars.
//!
//! `grpc-echo serve --port 9090` serves `trellis.demo.Echo`:
//! - `Unary`: answers the request's message and payload (or `reply_bytes` bytes) after
//!   `delay_ms` (plus the server's own `--delay-ms`, which makes a slow pod), with the pod's
//!   name (`x-pod`) and the request's `x-echo` metadata echoed as response headers; the reply carries how many calls were in flight in the app when it began
//!   (`in_flight`), so a caller can see what the proxy let through at once;
//! - `ServerStream`: `count` replies, then trailers carrying `x-echo-trailer` with `grpc-status: 0`;
//! - `Bidi`: one reply per request message, then the same trailers.
//!
//! `grpc-echo call --target http://IP:PORT` makes `--calls` calls from `--callers` concurrent
//! callers over one HTTP/2 connection (a tonic `Channel`), and prints one JSON line: the calls'
//! gRPC codes, how many overflows carried `x-envoy-overloaded`, the pods that answered, whether
//! metadata and trailers came back, and the most calls the app saw in flight at once.
//!
//! The messages are derived by hand with prost (no protoc):
//! `message EchoRequest { string message = 1; bytes payload = 2; uint32 delay_ms = 3;
//! uint32 reply_bytes = 4; uint32 count = 5; }` and
//! `message EchoReply { string message = 1; bytes payload = 2; string pod = 3; uint32 in_flight = 4; }`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt as _;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
    #[prost(uint32, tag = "3")]
    delay_ms: u32,
    #[prost(uint32, tag = "4")]
    reply_bytes: u32,
    #[prost(uint32, tag = "5")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
    #[prost(string, tag = "3")]
    pod: String,
    #[prost(uint32, tag = "4")]
    in_flight: u32,
}

const SERVICE: &str = "trellis.demo.Echo";
/// Messages up to this size either way (gRPC's default is 4 MiB; the demo sends 16 MiB).
const MAX_MESSAGE: usize = 32 << 20;

#[derive(Parser)]
#[command(
    name = "grpc-echo",
    about = "The demo's gRPC app (serve) and caller (call)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve trellis.demo.Echo.
    Serve {
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// The name each reply carries (the kubelet sets POD_NAME from the downward API).
        #[arg(long, env = "POD_NAME", default_value = "grpc-echo")]
        pod: String,
        /// Each unary call waits this long more before its answer, whatever it asks: a slow pod
        /// (the GRPCRoute mirror scenario's mirror, which its callers must not wait for).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Call it and print a JSON summary.
    Call(CallArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Rpc {
    Unary,
    ServerStream,
    Bidi,
}

#[derive(Parser, Clone)]
struct CallArgs {
    /// `http://IP:PORT` (cleartext HTTP/2, as in-mesh gRPC is).
    #[arg(long)]
    target: String,
    #[arg(long, value_enum, default_value = "unary")]
    rpc: Rpc,
    /// Concurrent callers, all on one HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    callers: u32,
    /// Calls in all.
    #[arg(long, default_value_t = 1)]
    calls: u32,
    /// The app waits this long before answering (each message, for the streams).
    #[arg(long, default_value_t = 0)]
    delay_ms: u32,
    /// The call's deadline (`grpc-timeout`); none when 0.
    #[arg(long, default_value_t = 0)]
    deadline_ms: u64,
    /// Bytes of payload each request carries (echoed back).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Replies per ServerStream call; request messages per Bidi call.
    #[arg(long, default_value_t = 3)]
    messages: u32,
}

/// What `call` prints.
#[derive(Default, serde::Serialize)]
struct Summary {
    calls: u32,
    /// gRPC code name → calls.
    codes: BTreeMap<String, u32>,
    /// Failed calls whose status carried `x-envoy-overloaded: true`.
    overloaded: u32,
    /// Answers by pod.
    by_pod: BTreeMap<String, u32>,
    /// Reply messages received in all.
    messages: u64,
    /// Calls whose `x-echo` metadata came back as a response header.
    metadata_echoed: u32,
    /// Streaming calls that ended with the app's `x-echo-trailer` trailer.
    trailers_seen: u32,
    /// Calls whose reply payload was byte for byte the one sent.
    payload_intact: u32,
    /// The most calls the app had in flight when one of them began.
    peak_in_flight: u32,
    /// Milliseconds, over the calls that ended OK.
    p50_ms: u64,
    max_ms: u64,
    /// The slowest failed call, in milliseconds (a deadline's calls end near it).
    failed_max_ms: u64,
    /// The first failure's code and message.
    first_error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Serve {
            port,
            pod,
            delay_ms,
        } => rt.block_on(serve(port, pod, Duration::from_millis(delay_ms))),
        Cmd::Call(args) => {
            let summary = rt.block_on(call(args))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server.

#[derive(Clone)]
struct Echo {
    pod: Arc<str>,
    in_flight: Arc<AtomicU32>,
    /// `--delay-ms`: added to each unary call's own `delay_ms`.
    delay: Duration,
}

/// One call in flight in the app, counted until dropped (also when the caller gives up).
struct InFlight(Arc<AtomicU32>, u32);

impl InFlight {
    fn new(n: &Arc<AtomicU32>) -> InFlight {
        let now = n.fetch_add(1, Ordering::SeqCst) + 1;
        InFlight(n.clone(), now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Echo {
    fn reply(&self, req: &EchoRequest, in_flight: u32) -> EchoReply {
        let payload = if req.reply_bytes > 0 {
            vec![b'e'; req.reply_bytes as usize]
        } else {
            req.payload.clone()
        };
        EchoReply {
            message: req.message.clone(),
            payload,
            pod: self.pod.to_string(),
            in_flight,
        }
    }

    /// The response headers: the pod, and the request's `x-echo` echoed.
    fn headers(&self, request: &MetadataMap, response: &mut MetadataMap) {
        if let Ok(v) = MetadataValue::try_from(&*self.pod) {
            response.insert("x-pod", v);
        }
        if let Some(v) = request.get("x-echo") {
            response.insert("x-echo", v.clone());
        }
    }
}

/// The status a stream ends with: OK, with the app's trailer.
fn done_trailers() -> Status {
    let mut md = MetadataMap::new();
    md.insert("x-echo-trailer", MetadataValue::from_static("done"));
    Status::with_metadata(Code::Ok, "", md)
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn futures_util::Stream<Item = Result<EchoReply, Status>> + Send>>;

struct Unary(Echo);

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFut<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move {
            let guard = InFlight::new(&echo.in_flight);
            let msg = req.get_ref();
            tokio::time::sleep(Duration::from_millis(msg.delay_ms.into()) + echo.delay).await;
            let mut resp = tonic::Response::new(echo.reply(msg, guard.1));
            echo.headers(req.metadata(), resp.metadata_mut());
            Ok(resp)
        })
    }
}

struct ServerStream(Echo);

impl tonic::server::ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<Result<tonic::Response<ReplyStream>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move {
            let guard = InFlight::new(&echo.in_flight);
            let mut headers = MetadataMap::new();
            echo.headers(req.metadata(), &mut headers);
            let msg = req.into_inner();
            let n = msg.count;
            let replies = futures_util::stream::unfold(0u32, move |i| {
                let (echo, msg, peak) = (echo.clone(), msg.clone(), guard.1);
                async move {
                    if i == n {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(msg.delay_ms.into())).await;
                    Some((Ok(echo.reply(&msg, peak)), i + 1))
                }
            })
            .chain(futures_util::stream::once(async { Err(done_trailers()) }));
            let mut resp = tonic::Response::new(Box::pin(replies) as ReplyStream);
            *resp.metadata_mut() = headers;
            Ok(resp)
        })
    }
}

struct Bidi(Echo);

impl tonic::server::StreamingService<EchoRequest> for Bidi {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<Result<tonic::Response<ReplyStream>, Status>>;

    fn call(&mut self, req: tonic::Request<tonic::Streaming<EchoRequest>>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move {
            let guard = InFlight::new(&echo.in_flight);
            let mut headers = MetadataMap::new();
            echo.headers(req.metadata(), &mut headers);
            let peak = guard.1;
            let replies = req
                .into_inner()
                .then(move |m| {
                    let echo = echo.clone();
                    async move {
                        let m = m?;
                        tokio::time::sleep(Duration::from_millis(m.delay_ms.into())).await;
                        Ok(echo.reply(&m, peak))
                    }
                })
                .chain(futures_util::stream::once(async move {
                    drop(guard);
                    Err(done_trailers())
                }));
            let mut resp = tonic::Response::new(Box::pin(replies) as ReplyStream);
            *resp.metadata_mut() = headers;
            Ok(resp)
        })
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
            let method = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            Ok(match method.as_str() {
                "Unary" => grpc.unary(Unary(echo), req).await,
                "ServerStream" => grpc.server_streaming(ServerStream(echo), req).await,
                "Bidi" => grpc.streaming(Bidi(echo), req).await,
                other => {
                    Status::unimplemented(format!("{SERVICE} has no method {other:?}")).into_http()
                }
            })
        })
    }
}

async fn serve(port: u16, pod: String, delay: Duration) -> anyhow::Result<()> {
    let echo = Echo {
        pod: pod.into(),
        in_flight: Arc::default(),
        delay,
    };
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    eprintln!("grpc-echo: serving {SERVICE} on {addr}");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(100))
        .max_concurrent_streams(Some(2048))
        .add_service(echo)
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The caller.

type Client = tonic::client::Grpc<tonic::transport::Channel>;

/// One call's outcome.
#[derive(Default)]
struct Outcome {
    status: Option<Status>,
    pod: Option<String>,
    messages: u64,
    metadata_echoed: bool,
    trailer: bool,
    payload_intact: bool,
    peak: u32,
    ms: u64,
}

async fn call(args: CallArgs) -> anyhow::Result<Summary> {
    let channel = tonic::transport::Endpoint::from_shared(args.target.clone())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e:?}", args.target))?;
    let client = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let payload: Arc<Vec<u8>> = Arc::new((0..args.payload_bytes).map(|i| i as u8).collect());
    let next = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.callers.max(1) {
        let (client, args, payload, next) =
            (client.clone(), args.clone(), payload.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut outs = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < args.calls {
                outs.push(one(client.clone(), &args, &payload).await);
            }
            outs
        }));
    }
    let mut sum = Summary::default();
    let mut ok_ms = Vec::new();
    for t in tasks {
        for o in t.await? {
            sum.calls += 1;
            let code = o.status.as_ref().map_or(Code::Ok, Status::code);
            *sum.codes.entry(format!("{code:?}")).or_default() += 1;
            if let Some(s) = &o.status {
                if s.metadata()
                    .get("x-envoy-overloaded")
                    .is_some_and(|v| v == "true")
                {
                    sum.overloaded += 1;
                }
                sum.first_error
                    .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                sum.failed_max_ms = sum.failed_max_ms.max(o.ms);
            } else {
                ok_ms.push(o.ms);
            }
            if let Some(p) = o.pod {
                *sum.by_pod.entry(p).or_default() += 1;
            }
            sum.messages += o.messages;
            sum.metadata_echoed += u32::from(o.metadata_echoed);
            sum.trailers_seen += u32::from(o.trailer);
            sum.payload_intact += u32::from(o.payload_intact);
            sum.peak_in_flight = sum.peak_in_flight.max(o.peak);
        }
    }
    ok_ms.sort_unstable();
    sum.p50_ms = ok_ms.get(ok_ms.len() / 2).copied().unwrap_or(0);
    sum.max_ms = ok_ms.last().copied().unwrap_or(0);
    Ok(sum)
}

fn request<T>(msg: T, args: &CallArgs) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("x-echo", MetadataValue::from_static("trellis"));
    if args.deadline_ms > 0 {
        req.set_timeout(Duration::from_millis(args.deadline_ms));
    }
    req
}

fn path(method: &str) -> http::uri::PathAndQuery {
    format!("/{SERVICE}/{method}")
        .parse()
        .expect("a valid path")
}

async fn one(mut client: Client, args: &CallArgs, payload: &[u8]) -> Outcome {
    let start = Instant::now();
    let msg = EchoRequest {
        message: "hello".into(),
        payload: payload.to_vec(),
        delay_ms: args.delay_ms,
        reply_bytes: 0,
        count: args.messages,
    };
    let mut out = Outcome::default();
    let deadline = args.deadline_ms;
    let call = async {
        client
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel: {e}")))?;
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let echoed = |md: &MetadataMap| md.get("x-echo").is_some_and(|v| v == "trellis");
        match args.rpc {
            Rpc::Unary => {
                let resp = client
                    .unary(request(msg, args), path("Unary"), codec)
                    .await?;
                out.metadata_echoed = echoed(resp.metadata());
                let r = resp.into_inner();
                out.payload_intact = r.payload == payload;
                out.note(&r);
            }
            Rpc::ServerStream => {
                let resp = client
                    .server_streaming(request(msg, args), path("ServerStream"), codec)
                    .await?;
                out.metadata_echoed = echoed(resp.metadata());
                let mut s = resp.into_inner();
                while let Some(r) = s.message().await? {
                    out.payload_intact = r.payload == payload;
                    out.note(&r);
                }
                out.trailer = s
                    .trailers()
                    .await?
                    .is_some_and(|t| t.get("x-echo-trailer").is_some_and(|v| v == "done"));
            }
            Rpc::Bidi => {
                let n = args.messages;
                let reqs = futures_util::stream::iter((0..n).map(move |_| msg.clone()));
                let resp = client
                    .streaming(request(reqs, args), path("Bidi"), codec)
                    .await?;
                out.metadata_echoed = echoed(resp.metadata());
                let mut s = resp.into_inner();
                let mut intact = true;
                while let Some(r) = s.message().await? {
                    intact &= r.payload == payload;
                    out.note(&r);
                }
                out.payload_intact = intact && out.messages == u64::from(n);
                out.trailer = s
                    .trailers()
                    .await?
                    .is_some_and(|t| t.get("x-echo-trailer").is_some_and(|v| v == "done"));
            }
        }
        Ok::<(), Status>(())
    };
    // The deadline is the server's and the proxy's to enforce (`grpc-timeout`); the caller gives
    // up only well past it, so a lost deadline shows as a hang, not as a quiet success.
    let guard = if deadline > 0 {
        Duration::from_millis(deadline * 4 + 5_000)
    } else {
        Duration::from_secs(60)
    };
    let result = tokio::time::timeout(guard, call).await;
    out.status = match result {
        Ok(Ok(())) => None,
        Ok(Err(s)) => Some(s),
        Err(_) => Some(Status::new(
            Code::Unknown,
            format!("no answer within {guard:?}"),
        )),
    };
    out.ms = start.elapsed().as_millis() as u64;
    out
}

impl Outcome {
    fn note(&mut self, r: &EchoReply) {
        self.messages += 1;
        self.pod.get_or_insert_with(|| r.pod.clone());
        self.peak = self.peak.max(r.in_flight);
    }
}
