//! The OpenAI-compatible reply hook against a local endpoint that streams chat-completion
//! chunks the way OpenAI, llama.cpp and Ollama do (server-sent events ending in `[DONE]`).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use parlor_agent::openai::OpenAiLlm;
use parlor_agent::{Flow, Llm, Role, Turn};
use serde_json::Value;

/// What the endpoint saw: the Authorization header and the JSON body of each request.
type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

async fn serve(seen: Seen) -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body: Value = serde_json::from_str(&body).unwrap_or_default();
                seen.lock().expect("lock").push((auth.clone(), body));
                if auth.as_deref() != Some("Bearer sk-test") {
                    return (StatusCode::UNAUTHORIZED, "{\"error\":\"bad key\"}").into_response();
                }
                let mut sse = String::new();
                for piece in ["It is sun", "ny. Twenty", " one degrees! Enjoy", " it."] {
                    let chunk = serde_json::json!({"choices": [{"delta": {"content": piece}}]});
                    sse.push_str(&format!("data: {chunk}\n\n"));
                }
                sse.push_str("data: [DONE]\n\n");
                ([("content-type", "text/event-stream")], sse).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sentences_and_reports_http_errors_without_the_key() {
    let seen: Seen = Arc::default();
    let base = serve(Arc::clone(&seen)).await;
    let history = vec![Turn {
        role: Role::Human,
        text: "what is the weather".into(),
    }];

    let llm = OpenAiLlm::new(&base, "test-model", Some("sk-test".into()));
    let h = history.clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        llm.reply(&h, &mut |s| {
            got.push(s.to_owned());
            Flow::Continue
        })
        .map(|()| got)
    })
    .await
    .expect("join")
    .expect("reply");
    assert_eq!(
        got,
        vec!["It is sunny.", "Twenty one degrees!", "Enjoy it."]
    );
    {
        let seen = seen.lock().expect("lock");
        let body = &seen[0].1;
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "what is the weather");
    }

    let wrong = OpenAiLlm::new(&base, "test-model", Some("sk-wrong-secret".into()));
    let e = tokio::task::spawn_blocking(move || wrong.reply(&history, &mut |_| Flow::Continue))
        .await
        .expect("join")
        .expect_err("401");
    let msg = e.to_string();
    assert!(msg.contains("401"), "{msg}");
    assert!(!msg.contains("sk-wrong-secret"), "{msg}");
}
