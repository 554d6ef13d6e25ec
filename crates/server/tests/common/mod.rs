//! Test harness: a real `parlor_server::serve` on a loopback port, and raw WebSocket clients.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use parlor_server::config::Config;

pub const DEV_KEY: &str = "pk_test_x";
pub const SECRET: &str = "sk_test_0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    handle: Option<parlor_server::ServerHandle>,
}

impl Server {
    /// Start a server from a TOML config plus the dev key.
    pub async fn start(toml: &str) -> Server {
        let mut config = Config::from_toml(toml).expect("test config");
        config.add_dev_key(DEV_KEY);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let handle = parlor_server::spawn(listener, config).expect("spawn");
        Server {
            addr: handle.local_addr(),
            handle: Some(handle),
        }
    }

    pub async fn dev() -> Server {
        Server::start("").await
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/v1?{}", self.addr, query)
    }

    /// Begin a graceful shutdown and wait for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), h.shutdown()).await;
        }
    }

    pub fn stop_signal(&mut self) {
        if let Some(h) = self.handle.as_mut() {
            h.begin_shutdown();
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub peer_id: String,
    pub welcome: Value,
    seq: u64,
}

/// What the next inbound event was.
#[derive(Debug)]
pub enum Inbound {
    Frame(Value),
    Closed(Option<u16>, String),
}

pub async fn raw(url: &str) -> Ws {
    let (ws, _) = connect_async(url).await.expect("websocket upgrade");
    ws
}

/// Next text frame or close, skipping pings/pongs.
pub async fn next_inbound(ws: &mut Ws) -> Inbound {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Inbound::Frame(serde_json::from_str(&t).expect("server frame is JSON"));
            }
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return Inbound::Closed(Some(code.into()), reason.to_string());
            }
            Some(Ok(Message::Close(None))) => return Inbound::Closed(None, String::new()),
            Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Inbound::Closed(None, format!("error: {e}")),
            None => return Inbound::Closed(None, "eof".into()),
        }
    }
}

/// Expect the connection to be closed with `code`, with no text frame before it.
pub async fn expect_close(ws: &mut Ws, code: u16) -> String {
    match next_inbound(ws).await {
        Inbound::Closed(Some(c), reason) if c == code => reason,
        other => panic!("expected close {code}, got {other:?}"),
    }
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let mut ws = raw(url).await;
        let welcome = match next_inbound(&mut ws).await {
            Inbound::Frame(f) => f,
            other => panic!("expected welcome, got {other:?}"),
        };
        assert_eq!(welcome["type"], "welcome", "first frame must be welcome");
        let peer_id = welcome["peerId"].as_str().expect("peerId").to_owned();
        Client {
            ws,
            peer_id,
            welcome,
            seq: 0,
        }
    }

    pub async fn dev(server: &Server) -> Client {
        Client::connect(&server.url(&format!("key={DEV_KEY}"))).await
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send text");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub fn rid(&mut self) -> String {
        self.seq += 1;
        format!("r{}", self.seq)
    }

    pub async fn next(&mut self) -> Value {
        match next_inbound(&mut self.ws).await {
            Inbound::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Next frame of the given type, failing on anything else.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let f = self.next().await;
        assert_eq!(f["type"], ty, "unexpected frame: {f}");
        f
    }

    pub async fn expect_close(&mut self, code: u16) -> String {
        expect_close(&mut self.ws, code).await
    }

    /// Assert nothing arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Request and wait for its ack.
    pub async fn request(&mut self, mut v: Value) -> Value {
        let rid = self.rid();
        v["requestId"] = json!(rid);
        self.send_json(v).await;
        let f = self.next().await;
        assert_eq!(f["requestId"], json!(rid), "uncorrelated reply: {f}");
        f
    }

    /// Subscribe and return the snapshot (after checking ack came first).
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let ack = self
            .request(json!({"type":"subscribe","channel":channel}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let snap = self.expect("presence").await;
        assert_eq!(snap["channel"], channel);
        snap
    }

    pub async fn ping_pong(&mut self) {
        self.send_json(json!({"type":"ping"})).await;
        self.expect("pong").await;
    }
}

pub fn ids(entries: &Value) -> Vec<String> {
    let mut v: Vec<String> = entries
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["peerId"].as_str().expect("peerId").to_owned())
        .collect();
    v.sort();
    v
}

pub fn mint(claims: Value) -> String {
    let claims: parlor_server::auth::Claims = serde_json::from_value(claims).expect("claims");
    parlor_server::auth::mint_token(SECRET, "main", &claims).expect("mint")
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A config with a secret (kid `main`) for JWTs in account `acme`.
pub fn jwt_config(extra: &str) -> String {
    format!(
        r#"
{extra}
[[secrets]]
kid = "main"
secret = "{SECRET}"
account = "acme"
"#
    )
}

/// Minimal HTTP/1.1 request over a raw socket (no client crate needed).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    http_with_body(addr, method, path, headers, "").await
}

/// [`http`] with a request body.
pub async fn http_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

// ---- cluster mode: a real nats-server and several nodes ----

/// nats-server on a free loopback port, killed on drop.
pub struct Nats {
    child: std::process::Child,
    port: u16,
}

impl Nats {
    pub async fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = std::process::Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server; scripts/system-deps.sh installs it)");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Nats { child, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `timeout_ms`: how long a silent node lingers in the others' presence.
pub fn node_config(nats: &Nats, extra: &str, timeout_ms: u64) -> String {
    format!(
        "{extra}\n[cluster]\nnats_url = \"{}\"\nname = \"t\"\nheartbeat_ms = 200\nnode_timeout_ms = {timeout_ms}\n",
        nats.url()
    )
}

pub async fn cluster_nodes(addr: SocketAddr) -> u64 {
    let (_, body) = http(addr, "GET", "/metrics", &[]).await;
    body.lines()
        .find_map(|l| l.strip_prefix("parlor_cluster_nodes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Start `n` nodes and wait until each is in sync with all the others.
pub async fn nodes(nats: &Nats, n: usize, extra: &str, timeout_ms: u64) -> Vec<Server> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(Server::start(&node_config(nats, extra, timeout_ms)).await);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    for s in &servers {
        while cluster_nodes(s.addr).await != (n - 1) as u64 {
            assert!(tokio::time::Instant::now() < deadline, "nodes never synced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    servers
}

// ---- agent dispatch: workers on /v1/worker ----

pub const WORKER_SECRET: &str = "ws_test_0123456789abcdef";

pub fn agents_config(extra: &str) -> String {
    format!(
        r#"
[agents]
worker_secret = "{WORKER_SECRET}"
offer_timeout_ms = 1000
join_timeout_ms = 1500
rejoin_window_ms = 500
{extra}

[[agents.rules]]
channels = ["call-*"]
agent = "voice"
grace_secs = 1
"#
    )
}

pub async fn worker_socket(server: &Server, secret: &str) -> Result<Ws, u16> {
    let mut req = format!("ws://{}/v1/worker", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("worker connect: {e}"),
    }
}

pub struct Worker {
    pub ws: Ws,
    pub id: u64,
}

impl Worker {
    pub async fn register(server: &Server, capacity: u32) -> Worker {
        let mut ws = worker_socket(server, WORKER_SECRET).await.expect("upgrade");
        send(
            &mut ws,
            json!({"type":"register","agents":["voice"],"capacity":capacity}),
        )
        .await;
        let f = frame(&mut ws).await;
        assert_eq!(f["type"], "registered", "{f}");
        Worker {
            ws,
            id: f["worker"].as_u64().expect("worker id"),
        }
    }

    pub async fn next(&mut self) -> Value {
        frame(&mut self.ws).await
    }

    pub async fn expect(&mut self, ty: &str) -> Value {
        let f = self.next().await;
        assert_eq!(f["type"], ty, "worker {} got {f}", self.id);
        f
    }

    pub async fn send(&mut self, v: Value) {
        send(&mut self.ws, v).await;
    }

    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("worker {}: expected silence, got {other:?}", self.id),
            }
        }
    }
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

pub async fn frame(ws: &mut Ws) -> Value {
    match next_inbound(ws).await {
        Inbound::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// The agent of an offered job, joining with its token.
pub async fn agent_joins(server: &Server, offer: &Value) -> Client {
    let token = offer["token"].as_str().expect("token");
    let mut agent = Client::connect(&server.url(&format!("token={token}"))).await;
    let channel = offer["channel"].as_str().expect("channel");
    agent.subscribe(channel).await;
    agent
}

/// An admin request with a JSON body: (status, body).
pub async fn http_body(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> (u16, String) {
    let bearer = format!("Bearer {auth}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    http_with_body(addr, method, path, &headers, body).await
}
