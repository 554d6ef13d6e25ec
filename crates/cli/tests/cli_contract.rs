//! Black-box checks of the `parlor` binary's stable CLI contract.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_parlor");
const SECRET: &str = "sk_test_cli_0123456789abcdef";

struct Serve {
    child: Child,
    url: String,
}

fn serve(args: &[&str]) -> Serve {
    serve_with(Command::new(BIN), args)
}

/// `parlor serve` through `cmd` (the binary itself, or a shell that lowers a limit first).
fn serve_with(mut cmd: Command, args: &[&str]) -> Serve {
    let mut child = cmd
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("PARLOR_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn parlor");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("readiness line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        url.starts_with("ws://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );
    Serve { child, url }
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Result<serde_json::Value, Option<u16>> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timeout");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("json")),
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| f.code.into())),
            Some(Ok(_)) => continue,
            _ => return Err(None),
        }
    }
}

fn token(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["token", "--secret", SECRET, "--kid", "main"])
        .args(args)
        .output()
        .expect("parlor token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn dev_mode_tokens_sigterm_and_no_credentials_in_logs() {
    let dir = std::env::temp_dir().join(format!("parlor-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let config = dir.join("parlor.toml");
    std::fs::write(
        &config,
        format!("[[secrets]]\nkid = \"main\"\nsecret = \"{SECRET}\"\naccount = \"acme\"\n"),
    )
    .expect("write config");
    let mut s = serve(&[
        "--dev-key",
        "pk_test_secretish",
        "--config",
        config.to_str().expect("p"),
    ]);

    // Dev key: every action on every channel.
    let (mut a, _) = connect_async(format!("{}/v1?key=pk_test_secretish", s.url))
        .await
        .expect("upgrade");
    let w = next_text(&mut a).await.expect("welcome");
    assert_eq!(w["type"], "welcome");
    a.send(Message::text(
        r#"{"type":"subscribe","channel":"any/thing","requestId":"1"}"#,
    ))
    .await
    .expect("send");
    assert_eq!(next_text(&mut a).await.expect("ack")["type"], "ack");
    assert_eq!(next_text(&mut a).await.expect("snap")["type"], "presence");

    // A token minted by `parlor token` is accepted, with its claims.
    let jwt = token(&[
        "--peer-metadata",
        r#"{"name":"bob"}"#,
        "--channel",
        "room-*",
    ]);
    let (mut b, _) = connect_async(format!("{}/v1?token={jwt}", s.url))
        .await
        .expect("upgrade");
    let w = next_text(&mut b).await.expect("welcome");
    assert!(w["expiresAt"].as_u64().is_some(), "{w}");
    // An expired one is refused with 4002; a bad key with 4001.
    let old = token(&["--ttl-secs", "-30"]);
    let (mut c, _) = connect_async(format!("{}/v1?token={old}", s.url))
        .await
        .expect("upgrade");
    assert_eq!(next_text(&mut c).await.err(), Some(Some(4002)));
    let (mut d, _) = connect_async(format!("{}/v1?key=pk_wrong_guess", s.url))
        .await
        .expect("upgrade");
    assert_eq!(next_text(&mut d).await.err(), Some(Some(4001)));

    // SIGTERM: going_away, then 1001, then the process exits 0.
    let pid = s.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    for ws in [&mut a, &mut b] {
        let g = next_text(ws).await.expect("going_away");
        assert_eq!(g["type"], "going_away");
        assert_eq!(next_text(ws).await.err(), Some(Some(1001)));
    }
    drop((a, b, c, d));
    let status = s.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    s.child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("logs");
    assert!(logs.contains("shutting down"), "{logs}");
    for secret in ["pk_test_secretish", "pk_wrong_guess", &jwt, &old, SECRET] {
        assert!(
            !logs.contains(secret),
            "credential leaked into logs:\n{logs}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn serve_without_credentials_fails_clearly() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dev-key"), "{err}");
}

#[test]
fn token_refuses_short_secrets_like_the_server() {
    let out = Command::new(BIN)
        .args(["token", "--secret", "sk_short"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"));
}

#[test]
fn token_rejects_bad_input() {
    for args in [
        vec!["--permission", "fly"],
        vec!["--peer-metadata", "[1]"],
        vec!["--metadata", "{nope"],
    ] {
        let out = Command::new(BIN)
            .args(["token", "--secret", SECRET])
            .args(&args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?}");
    }
}

#[test]
fn serve_tls_flags_fail_clearly() {
    // Both or neither.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--dev-key",
            "pk_x",
            "--tls-cert",
            "/nonexistent/cert.pem",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A missing file is named before the readiness line, which is never printed.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--dev-key", "pk_x"])
        .args(["--tls-cert", "/nonexistent/cert.pem"])
        .args(["--tls-key", "/nonexistent/key.pem"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

/// SIGTERM, wait for the exit, and return everything the server logged.
fn stop_and_read_logs(mut s: Serve) -> String {
    let pid = s.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = s.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    s.child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("logs");
    logs
}

/// Issue #23 finding 6: a broken configuration names its file, line and key, never the
/// value of the secret on that line.
#[test]
fn config_errors_name_the_place_never_the_secret() {
    let dir = std::env::temp_dir().join(format!("parlor-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let config = dir.join("broken.toml");
    for text in [
        // An unterminated string.
        "[[secrets]]\nkid = \"main\"\nsecret = \"sk_live_TOPSECRET_0123456789\naccount = \"a\"\n",
        // A string where a table belongs.
        "[[secrets]]\nkid = \"main\"\naccount = \"a\"\nsecret = \"sk_live_TOPSECRET_0123456789\"\nturn = \"sk_live_TOPSECRET_0123456789\"\n",
    ] {
        std::fs::write(&config, text).expect("write");
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("TOPSECRET"), "secret echoed:\n{err}");
        assert!(err.contains(&format!("{}:", config.display())), "{err}");
        assert!(err.contains("(key [[secrets]] "), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue #23 finding 7: refusal lines name the client address, from `X-Forwarded-For` only
/// when the TCP peer is a trusted proxy, and never the credential.
#[tokio::test]
async fn refusals_log_the_client_address() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = std::env::temp_dir().join(format!("parlor-cli-xff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let config = dir.join("proxy.toml");
    std::fs::write(&config, "trusted_proxies = [\"127.0.0.0/8\"]\n").expect("write");
    for (trusted, expect) in [(false, "client=127.0.0.1"), (true, "client=198.51.100.7")] {
        let mut args = vec!["--dev-key", "pk_test_right"];
        if trusted {
            args.extend(["--config", config.to_str().expect("p")]);
        }
        let s = serve(&args);
        let mut req = format!("{}/v1?key=pk_wrong_guess_42", s.url)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("x-forwarded-for", "198.51.100.7".parse().expect("h"));
        let (mut ws, _) = connect_async(req).await.expect("upgrade");
        assert_eq!(next_text(&mut ws).await.err(), Some(Some(4001)));
        drop(ws);
        let logs = stop_and_read_logs(s);
        let line = logs
            .lines()
            .find(|l| l.contains("credential refused"))
            .unwrap_or_else(|| panic!("no refusal line:\n{logs}"));
        assert!(line.contains(expect), "{line}");
        assert!(!logs.contains("pk_wrong_guess_42"), "{logs}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue #23 finding 1, with the open-file limit lowered so that exhaustion is reachable:
/// 300 stalled sockets from one address hold at most their per-address share of descriptors,
/// and a normal client connects while they are open.
#[tokio::test]
async fn a_client_connects_while_an_attacker_holds_sockets_at_a_low_file_limit() {
    let mut sh = Command::new("sh");
    sh.args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\"", BIN]);
    let s = serve_with(sh, &["--dev-key", "pk_test_x"]);
    let addr: std::net::SocketAddr = s
        .url
        .strip_prefix("ws://")
        .expect("ws url")
        .parse()
        .expect("addr");
    let mut attack = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("source"))
            .expect("bind");
        match socket.connect(addr).await {
            Ok(stream) => attack.push(stream),
            Err(e) => panic!("connect {}: {e}", attack.len()),
        }
    }
    for _ in 0..3 {
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            connect_async(format!("{}/v1?key=pk_test_x", s.url)),
        )
        .await
        .expect("a normal client is not starved")
        .expect("upgrade");
        assert_eq!(
            next_text(&mut ws).await.expect("welcome")["type"],
            "welcome"
        );
    }
    drop(attack);
    let logs = stop_and_read_logs(s);
    assert!(
        !logs.contains("accept failed"),
        "descriptors ran out:\n{logs}"
    );
}

/// nats-server, installed by scripts/system-deps.sh (PATH may lack /usr/sbin).
fn nats_server() -> Option<&'static str> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// `parlor bench ARGS --json`, which must succeed; its JSON.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn bench_connections_and_fanout_run_small() {
    let v = bench_json(&[
        "connections",
        "--count",
        "40",
        "--sources",
        "4",
        "--hold-secs",
        "0",
    ]);
    assert_eq!(v["held"], 40, "{v}");
    assert_eq!(v["failed"], 0, "{v}");

    let nats = nats_server();
    let mut args = vec![
        "fanout",
        "--channels",
        "2",
        "--subscribers",
        "3",
        "--seconds",
        "1",
    ];
    match nats {
        Some(p) => args.extend(["--nats-server", p]),
        None => args.push("--no-nats"),
    }
    let v = bench_json(&args);
    let sides: &[&str] = if nats.is_some() {
        &["parlor", "nats"]
    } else {
        &["parlor"]
    };
    for side in sides {
        let r = &v[side];
        assert!(r["published"].as_u64().unwrap_or(0) > 0, "{v}");
        assert_eq!(r["lost"], 0, "{v}");
        assert_eq!(r["out_of_order"], 0, "{v}");
    }
}

#[test]
fn bench_audio_runs_small_and_reports_every_figure() {
    let v = bench_json(&[
        "audio",
        "--conversations",
        "2",
        "--seconds",
        "1",
        "--signal",
        "synthetic",
    ]);
    assert!(v["python"].is_null(), "{v}");
    let v = &v["parlor"];
    assert_eq!(v["conversations"], 2, "{v}");
    for k in [
        "cpu_s_per_audio_s_per_conversation",
        "libopus_floor_cpu_s_per_audio_s",
        "paced_floor_cpu_s_per_audio_s_per_conversation",
        "ratio_to_paced_floor",
        "rss_bytes_per_conversation",
        "rss_bytes_per_extra_conversation",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    // The non-probe conversation heard the agent; its audio arrived without underruns.
    assert_eq!(v["conversations_with_audio"], 1, "{v}");
    assert_eq!(v["underruns"], 0, "{v}");
    assert!(v["barge_in_trials"].as_u64().is_some_and(|n| n > 0), "{v}");

    // Several runs: every run's figures, and the medians to quote.
    let v = bench_json(&[
        "audio",
        "--conversations",
        "1",
        "--seconds",
        "1",
        "--signal",
        "synthetic",
        "--runs",
        "2",
    ]);
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(2), "{v}");
    let m = &v["median"];
    assert!(
        m["parlor_cpu_s_per_audio_s_per_conversation"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(
        m["paced_floor_cpu_s_per_audio_s_per_conversation"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(m["python_over_parlor"].is_null(), "{v}");
}

#[test]
fn bench_connections_spreads_over_client_processes_and_cluster_nodes() {
    let nats = nats_server().expect("nats-server (scripts/system-deps.sh installs it)");
    let v = bench_json(&[
        "connections",
        "--count",
        "61",
        "--clients",
        "2",
        "--nodes",
        "2",
        "--nats-server",
        nats,
        "--sources",
        "3",
        "--hold-secs",
        "0",
    ]);
    assert_eq!(v["held"], 61, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["nodes"], 2, "{v}");
    assert_eq!(v["client_processes"], 2, "{v}");
}

#[test]
fn bench_fanout_runs_against_a_cluster() {
    let nats = nats_server().expect("nats-server (scripts/system-deps.sh installs it)");
    let v = bench_json(&[
        "fanout",
        "--nodes",
        "2",
        "--channels",
        "2",
        "--subscribers",
        "4",
        "--seconds",
        "1",
        "--no-nats",
        "--nats-server",
        nats,
    ]);
    assert_eq!(v["parlor_nodes"], 2, "{v}");
    let r = &v["parlor"];
    assert!(r["published"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(r["lost"], 0, "{v}");
    assert_eq!(r["out_of_order"], 0, "{v}");
}

#[test]
fn bench_direct_churn_and_reconnect_storm_run_small() {
    let v = bench_json(&["direct", "--pairs", "5", "--rate", "20", "--seconds", "1"]);
    assert!(v["sent"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");

    let v = bench_json(&[
        "churn",
        "--watchers",
        "4",
        "--churners",
        "3",
        "--seconds",
        "1",
    ]);
    assert!(v["cycles"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["events"], v["expected_events"], "{v}");
    assert_eq!(v["out_of_order"], 0, "{v}");

    let v = bench_json(&[
        "reconnect-storm",
        "--clients",
        "30",
        "--sources",
        "3",
        "--initial-delay-ms",
        "100",
    ]);
    assert_eq!(v["rejoined"], 30, "{v}");
}

/// `parlor models` on an empty cache: what is missing, and clear errors for bad names (no
/// download: the test command's own `parlor models fetch` exercises that).
#[test]
fn models_list_verify_and_bad_names() {
    let dir = std::env::temp_dir().join(format!("parlor-cli-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("models")
            .args(args)
            .env("PARLOR_MODELS", &dir)
            .env_remove("PARLOR_MODEL_SOURCES")
            .output()
            .expect("run")
    };
    let out = run(&["list"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    for name in [
        "onnxruntime",
        "silero-vad",
        "smart-turn",
        "piper-joe",
        "whisper-tiny.en",
    ] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(name) && l.contains("missing")),
            "{list}"
        );
    }
    assert!(list.contains("sha256 "), "{list}");
    let out = run(&["path"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dir.display().to_string()
    );
    let out = run(&["verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("parlor models fetch"));
    let out = run(&["fetch", "whisper-huge"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("whisper-huge") && err.contains("whisper-tiny.en"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn say_writes_a_wav_and_refuses_bad_speeds() {
    let dir = std::env::temp_dir().join(format!("parlor-cli-say-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let wav = dir.join("hello.wav");
    let out = Command::new(BIN)
        .args(["say", "--voice", "espeak", "Hello there.", "-o"])
        .arg(&wav)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&wav).expect("wav written");
    assert_eq!(&bytes[..4], b"RIFF");
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let secs = (bytes.len() - 44) as f64 / 2.0 / f64::from(rate);
    assert!((0.3..5.0).contains(&secs), "{secs} s at {rate} Hz");
    let out = Command::new(BIN)
        .args(["say", "--voice", "espeak", "--speed", "3", "x", "-o"])
        .arg(&wav)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--speed must be between 0.5 and 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_refuses_a_bad_stt_window() {
    for bad in ["31", "-1", "NaN"] {
        let out = Command::new(BIN)
            .args(["demo", "--listen", "127.0.0.1:0"])
            .arg(format!("--stt-window={bad}"))
            .output()
            .expect("run");
        assert!(!out.status.success(), "--stt-window {bad} was taken");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--stt-window must be between 0 and 30"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn demo_refuses_a_bad_stt_boost_or_beam() {
    let cases = [
        (
            "--stt-boost-by",
            &["11", "-1", "NaN", "inf"][..],
            "--stt-boost-by must be between 0 and 10 (logits)",
        ),
        (
            "--stt-beams",
            &["0", "9"][..],
            "--stt-beams must be between 1 and 8 (hypotheses)",
        ),
        ("--turn-words", &["maybe"][..], "invalid value 'maybe'"),
    ];
    for (flag, bad, says) in cases {
        for value in bad {
            let out = Command::new(BIN)
                .args(["demo", "--listen", "127.0.0.1:0"])
                .arg(format!("{flag}={value}"))
                .output()
                .expect("run");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{flag} {value} was taken");
            assert!(stderr.contains(says), "{stderr}");
        }
    }
}

#[test]
fn worker_refuses_bad_input_before_loading_anything_and_never_shows_its_secret() {
    let run = |args: &[&str], secret: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("worker")
            .args(args)
            .env_remove("PARLOR_WORKER_SECRET");
        if let Some(s) = secret {
            cmd.env("PARLOR_WORKER_SECRET", s);
        }
        let out = cmd.output().expect("run");
        assert!(!out.status.success(), "{args:?} was taken");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let secret = "ws_cli_secret_0123456789";
    assert!(run(&[], None).contains("PARLOR_WORKER_SECRET"));
    for (args, want) in [
        (&["--agent", "no spaces"][..], "--agent must be"),
        (&["--capacity", "0"][..], "--capacity must be"),
        (
            &["--server", "http://127.0.0.1:1"][..],
            "--server must be a ws:// or wss:// URL",
        ),
    ] {
        let err = run(args, Some(secret));
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains(secret), "the secret in an error: {err}");
    }
}

#[test]
fn bench_network_refuses_bad_links_before_loading_anything() {
    for (args, says) in [
        (&["--models", "gilbert"][..], "is not a loss model"),
        (
            &["--loss", "70"][..],
            "--loss: percentages between 0 and 50",
        ),
        (&["--jitter", "5000"][..], "--jitter: at most 1000 ms"),
    ] {
        let out = Command::new(BIN)
            .args(["bench", "network", "--no-stt"])
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} was taken");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("bench network:") && !stderr.contains(" present"),
            "{args:?} loaded models first"
        );
    }
}

#[test]
fn bench_call_setup_times_calls_through_a_delayed_signalling_path() {
    let dir = std::env::temp_dir().join(format!("parlor-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let json = dir.join("setup.json");
    let out = Command::new(BIN)
        .args([
            "bench",
            "call-setup",
            "--calls",
            "1",
            "--rtt",
            "0,100",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    let _ = std::fs::remove_dir_all(&dir);
    let rows = v["results"].as_array().expect("results");
    // Two RTTs × (pipelined, stop-and-wait), each a real call that got audio.
    assert_eq!(rows.len(), 4, "{v}");
    for r in rows {
        let first = r["first_audio_p50_ms"].as_f64().expect("first audio");
        assert!(first > 0.0, "{r}");
        // Through a 100 ms round trip a call takes at least the offer and the answer.
        if r["rtt_ms"] == 100 {
            assert!(first >= 200.0, "{r}");
        }
    }
    let refused = Command::new(BIN)
        .args(["bench", "call-setup", "--calls", "0"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--calls must be at least 1"));
}

#[test]
fn bench_agent_measures_listening_sessions_and_refuses_bad_input() {
    for (args, says) in [
        (&["--sessions", "0"][..], "--sessions must be 1-500"),
        (&["--pause-secs", "0"][..], "--pause-secs must be 0.2-30"),
        (
            &["--turn-words", "on"][..],
            "--turn-words needs --engines neural",
        ),
        (
            &["--engines", "neural", "--turn-words", "maybe"][..],
            "invalid value 'maybe'",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["bench", "agent"])
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} was taken");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // The listening engines need Silero VAD (fetched by `parlor models fetch`).
    if std::env::var("PARLOR_REQUIRE_MODELS").as_deref() != Ok("1") {
        eprintln!("skipped the run: set PARLOR_REQUIRE_MODELS=1 with the models fetched");
        return;
    }
    let dir = std::env::temp_dir().join(format!("parlor-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (json, wav) = (dir.join("agent.json"), dir.join("question.wav"));
    let out = Command::new(BIN)
        .args(["bench", "agent", "--engines", "listen", "--sessions", "2"])
        .args(["--secs", "3", "--warmup-secs", "1", "--json"])
        .arg(&json)
        .arg("--wav")
        .arg(&wav)
        .env("PARLOR_LOG", "warn")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    assert_eq!(v["sessions"], 2);
    assert!(v["worker_cpu_s"].as_f64().is_some_and(|c| c > 0.0), "{v}");
    // Every question begun was heard by its agent's VAD (one may be cut by the stop).
    let (spoken, heard) = (
        v["spoken"].as_u64().expect("spoken"),
        v["heard"].as_u64().expect("heard"),
    );
    assert!(spoken >= 2 && heard + 2 >= spoken && heard <= spoken, "{v}");
    let audio = std::fs::read(&wav).expect("wav");
    assert!(
        audio.starts_with(b"RIFF") && audio.len() > 44_000,
        "the humans' audio as a WAV"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
