//! Agent dispatch through a real server: workers on `/v1/worker` (speaking the worker
//! protocol over real sockets, as `parlor worker` does), humans and job agents on `/v1`.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::*;

#[tokio::test]
async fn a_human_in_a_matching_channel_gets_one_agent_which_is_cancelled_after_the_grace() {
    let server = Server::start(&agents_config("")).await;
    let mut worker = Worker::register(&server, 2).await;

    // A channel no rule names: no job.
    let mut human = Client::dev(&server).await;
    human.subscribe("lobby").await;
    worker.expect_silence(Duration::from_millis(400)).await;

    // A matching one: an offer, with a token for that channel only.
    human.subscribe("call-1").await;
    let offer = worker.expect("offer").await;
    assert_eq!(offer["agent"], "voice");
    assert_eq!(offer["account"], "dev");
    assert_eq!(offer["channel"], "call-1");
    assert_eq!(offer["attempt"], 0);
    let job = offer["job"].as_str().expect("job").to_owned();
    worker.send(json!({"type":"accept","job":job})).await;

    let mut agent = agent_joins(&server, &offer).await;
    let joined = human.expect("presence").await;
    assert_eq!(ids(&joined["joined"]), vec![agent.peer_id.clone()]);
    assert_eq!(joined["joined"][0]["metadata"]["agentJob"], job);
    // The job token opens its channel and no other.
    let refused = agent
        .request(json!({"type":"subscribe","channel":"call-2"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");

    // A second human in the room: still one job.
    let mut second = Client::dev(&server).await;
    second.subscribe("call-1").await;
    human.expect("presence").await;
    worker.expect_silence(Duration::from_millis(400)).await;

    // Everyone leaves: after the 1 s grace, the job is cancelled at the worker.
    let left_at = std::time::Instant::now();
    drop(second);
    let left = human.expect("presence").await;
    assert_eq!(ids(&left["left"]).len(), 1, "{left}");
    let ack = human
        .request(json!({"type":"unsubscribe","channel":"call-1"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let cancel = worker.expect("cancel").await;
    assert_eq!(cancel["job"], job);
    assert!(
        left_at.elapsed() >= Duration::from_millis(900),
        "cancelled before the grace: {:?}",
        left_at.elapsed()
    );
    drop(agent);
    worker.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_refused_or_lost_job_goes_to_the_next_worker_and_a_stale_agent_is_evicted() {
    let server = Server::start(&agents_config("")).await;
    let mut a = Worker::register(&server, 1).await;
    let mut human = Client::dev(&server).await;
    human.subscribe("call-7").await;

    // The only worker refuses: no other candidate yet. A second worker registers and gets
    // the room.
    let offer = a.expect("offer").await;
    a.send(json!({"type":"refuse","job":offer["job"],"reason":"busy"}))
        .await;
    let mut b = Worker::register(&server, 1).await;
    let offer_b = b.expect("offer").await;
    assert_eq!(offer_b["channel"], "call-7");

    // b accepts and is then killed before its agent joined: the job moves on at once.
    b.send(json!({"type":"accept","job":offer_b["job"]})).await;
    drop(b);
    let offer_a = a.expect("offer").await;
    assert_ne!(offer_a["job"], offer_b["job"], "a new job");
    assert_eq!(
        offer_a["attempt"],
        offer_b["attempt"].as_u64().unwrap_or(0) + 1
    );
    a.send(json!({"type":"accept","job":offer_a["job"]})).await;
    let _agent = agent_joins(&server, &offer_a).await;

    // b's agent turns up late with the old job's token: closed (4020), not a second agent.
    let token = offer_b["token"].as_str().expect("token");
    let mut stale = Client::connect(&server.url(&format!("token={token}"))).await;
    let rid = stale.rid();
    stale
        .send_json(json!({"type":"subscribe","channel":"call-7","requestId":rid}))
        .await;
    loop {
        match next_inbound(&mut stale.ws).await {
            Inbound::Frame(_) => continue, // its ack and snapshot may come first
            Inbound::Closed(code, _) => {
                assert_eq!(code, Some(4020));
                break;
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_offer_not_answered_in_time_goes_to_another_worker() {
    let server = Server::start(&agents_config("")).await;
    let mut a = Worker::register(&server, 1).await;
    let mut human = Client::dev(&server).await;
    human.subscribe("call-9").await;
    let first = a.expect("offer").await;
    let mut b = Worker::register(&server, 1).await;
    // a never answers: after the 1 s offer timeout the job goes to b (cancelled at a).
    let cancel = a.expect("cancel").await;
    assert_eq!(cancel["job"], first["job"]);
    let second = b.expect("offer").await;
    assert_eq!(second["channel"], "call-9");
    server.shutdown().await;
}

#[tokio::test]
async fn workers_need_the_secret_and_speak_the_protocol() {
    // No [agents]: no endpoint.
    let plain = Server::dev().await;
    assert_eq!(worker_socket(&plain, WORKER_SECRET).await.err(), Some(404));
    plain.shutdown().await;

    let server = Server::start(&agents_config("")).await;
    assert_eq!(
        worker_socket(&server, "ws_wrong_0123456789abcdef")
            .await
            .err(),
        Some(401)
    );
    // A bad first frame: an error naming it, then close 1008.
    let mut ws = worker_socket(&server, WORKER_SECRET)
        .await
        .expect("upgrade");
    send(
        &mut ws,
        json!({"type":"register","agents":["a b"],"capacity":1}),
    )
    .await;
    let f = frame(&mut ws).await;
    assert_eq!(f["type"], "error");
    assert!(
        f["message"].as_str().unwrap_or("").contains("agent name"),
        "{f}"
    );
    expect_close(&mut ws, 1008).await;
    // A frame that is not the protocol after registering: the same.
    let mut w = Worker::register(&server, 1).await;
    w.send(json!({"type":"launch","job":"j_1"})).await;
    assert_eq!(w.expect("error").await["type"], "error");
    expect_close(&mut w.ws, 1008).await;
    // A job token for a job that does not exist (minted with a wrong key) is refused.
    let mut bad =
        raw(&server.url("token=eyJhbGciOiJIUzI1NiIsImtpZCI6InBhcmxvci1qb2IifQ.e30.x")).await;
    expect_close(&mut bad, 4001).await;
    server.shutdown().await;
}

#[test]
fn agents_config_is_checked() {
    use parlor_server::config::Config;
    let err = |toml: &str| Config::from_toml(toml).expect_err("refused").to_string();
    assert!(err("[agents]\nworker_secret = \"short\"").contains("worker_secret"));
    let e = err(&format!(
        "[agents]\nworker_secret = \"{WORKER_SECRET}\"\n[[agents.rules]]\nchannels = []\nagent = \"voice\""
    ));
    assert!(e.contains("channels"), "{e}");
    let e = err(&format!(
        "[agents]\nworker_secret = \"{WORKER_SECRET}\"\n[[agents.rules]]\nchannels = [\"*\"]\nagent = \"no spaces\""
    ));
    assert!(e.contains("agent"), "{e}");
    let e = err(&format!(
        "[[secrets]]\nkid = \"parlor-job\"\nsecret = \"{SECRET}\"\naccount = \"a\""
    ));
    assert!(e.contains("reserved"), "{e}");
    // The secret never appears in an error.
    let e = err(&format!(
        "[agents]\nworker_secret = \"{WORKER_SECRET}\"\noffer_timeout_ms = 1"
    ));
    assert!(!e.contains(WORKER_SECRET), "{e}");
}

#[tokio::test]
async fn the_admin_api_shows_rooms_and_requests_an_agent_for_any_channel() {
    const ADMIN: &str = "adm_0123456789";
    let server = Server::start(
        &agents_config("").replace("[agents]", &format!("admin_secret = \"{ADMIN}\"\n[agents]")),
    )
    .await;
    let mut worker = Worker::register(&server, 1).await;
    let body = r#"{"account":"dev","channel":"support","agent":"voice"}"#;
    let (status, _) = http_body(server.addr, "POST", "/admin/dispatch", "wrong", body).await;
    assert_eq!(status, 401);
    let (status, text) = http_body(
        server.addr,
        "POST",
        "/admin/dispatch",
        ADMIN,
        r#"{"account":"dev","channel":"support","agent":"no spaces"}"#,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    // No rule names "support" and nobody is there: the request alone dispatches.
    let (status, _) = http_body(server.addr, "POST", "/admin/dispatch", ADMIN, body).await;
    assert_eq!(status, 202);
    let offer = worker.expect("offer").await;
    assert_eq!(offer["channel"], "support");
    let (status, text) = http_body(server.addr, "GET", "/admin/dispatch", ADMIN, "").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["workers"], 1);
    assert_eq!(v["rooms"][0]["channel"], "support");
    assert_eq!(v["rooms"][0]["phase"], "offered");
    assert_eq!(v["rooms"][0]["worker"], worker.id);
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_that_asks_for_an_agent_gets_one_in_any_channel() {
    let server = Server::start(&jwt_config(&agents_config(""))).await;
    let mut worker = Worker::register(&server, 1).await;
    let exp = now_secs() + 600;
    // A bad agent name in the claim: the token is refused.
    let bad = mint(json!({"exp": exp, "parlorAgent": "not a name"}));
    let mut ws = raw(&server.url(&format!("token={bad}"))).await;
    expect_close(&mut ws, 4001).await;
    // No rule names "support-1": the token's claim asks for the agent.
    let token = mint(json!({"exp": exp, "parlorAgent": "voice"}));
    let mut human = Client::connect(&server.url(&format!("token={token}"))).await;
    human.subscribe("support-1").await;
    let offer = worker.expect("offer").await;
    assert_eq!(offer["account"], "acme");
    assert_eq!(offer["channel"], "support-1");
    // A token without the claim asks for nothing.
    let plain = mint(json!({"exp": exp}));
    let mut other = Client::connect(&server.url(&format!("token={plain}"))).await;
    other.subscribe("support-2").await;
    worker.expect_silence(Duration::from_millis(400)).await;
    server.shutdown().await;
}
