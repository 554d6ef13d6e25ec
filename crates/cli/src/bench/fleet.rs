//! What `bench calls` and `bench agent` measure: an embedded server with `[agents]` (rooms
//! `call-*` get the `voice` agent, no grace) and a real `parlor worker` child process (this
//! binary), registered and ready.

use std::time::Duration;

use anyhow::Context;

/// The server and its worker; the worker is killed when this is dropped or stopped.
pub(super) struct Fleet {
    /// The server's `ws://` URL.
    pub(super) url: String,
    /// The worker's process id (its `/proc` entry is what the benches read).
    pub(super) pid: u32,
    server: Option<parlor_server::ServerHandle>,
    worker: std::process::Child,
}

impl Fleet {
    /// Start the server (API key `key`, accounts `bench`) and a worker with `engines`, `extra`
    /// arguments and `capacity`; `load_threshold` is the server's (a loaded worker gets no
    /// offers past it). Every line the worker prints goes to `on_line` (read on a thread of its own, so
    /// the worker never blocks on a full pipe). Returns once the worker has registered.
    pub(super) async fn start(
        key: &str,
        engines: &str,
        extra: &[String],
        capacity: usize,
        load_threshold: f32,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> anyhow::Result<Fleet> {
        const SECRET: &str = "ws_bench_fleet_0123456789";
        let mut config = parlor_server::config::Config::from_toml(&format!(
            r#"
[[keys]]
key = "{key}"
account = "bench"

[agents]
worker_secret = "{SECRET}"
load_threshold = {load_threshold}

[[agents.rules]]
channels = ["call-*"]
agent = "voice"
grace_secs = 0
"#
        ))?;
        config.limits.max_channel_members = 16;
        let server =
            parlor_server::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, config)?;
        let url = server.url();
        let exe = std::env::current_exe().context("this binary's path")?;
        // A diagnostic wrapper (a heap profiler: `PARLOR_BENCH_WORKER_WRAPPER=heaptrack`); the
        // pid read for RSS is then the wrapper's.
        let wrapper = std::env::var("PARLOR_BENCH_WORKER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = std::process::Command::new(program);
                c.args(words).arg(exe);
                c
            }
            None => std::process::Command::new(exe),
        };
        let mut worker = command
            .arg("worker")
            .args(["--server", &url, "--engines", engines])
            .args(extra)
            .args(["--capacity", &capacity.to_string()])
            .env("PARLOR_WORKER_SECRET", SECRET)
            .env(
                "PARLOR_LOG",
                std::env::var("PARLOR_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("cannot start parlor worker")?;
        let pid = worker.id();
        let stdout = worker.stdout.take().context("the worker's stdout")?;
        let fleet = Fleet {
            url,
            pid,
            server: Some(server),
            worker,
        };
        let (registered_tx, registered) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(registered_tx);
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
            {
                if line.contains("registered as worker")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                on_line(&line);
            }
        });
        // The first run may fetch the engines' models.
        tokio::time::timeout(Duration::from_secs(300), registered)
            .await
            .context("the worker did not register within 300 s")?
            .context("the worker exited before registering")?;
        Ok(fleet)
    }

    /// Kill the worker and stop the server.
    pub(super) async fn stop(mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
        if let Some(server) = self.server.take() {
            let _ = server.shutdown().await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
    }
}
