//! `parlor bench`: measurements that print a table (or `--json`) and compare side by side
//! with a reference in the same run.
//!
//! * [`audio`]: the audio pipeline against the libopus floor and the Python SDK;
//! * [`load`]: the server under many WebSocket clients (`connections`, `fanout`), fan-out
//!   beside nats-server; `direct`; `churn`; `reconnect-storm`;
//! * [`network`]: what a lossy, jittery link does to what the agent hears (simulated link,
//!   the receiver now and before, Whisper's word error rate);
//! * [`setup`]: call setup with a signalling round-trip time, pipelined and stop-and-wait;
//! * [`calls`]: many calls through agent dispatch to a real `parlor worker`, and the worker's
//!   memory, descriptors and threads through them (a leak's slope);
//! * [`agent`]: N sessions at once on a real `parlor worker`: CPU per session (listening, or
//!   answering with voice-to-voice measured), beside Pipecat with `bench/agent_capacity.py`.

mod agent;
mod audio;
mod calls;
mod fleet;
mod load;
mod network;
mod setup;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Audio pipeline: CPU per audio-second, push→frame latency, join→first audio, RSS.
    Audio(audio::AudioArgs),
    /// A simulated lossy, jittery link: what the agent's receiver hands to speech-to-text
    /// (lost, concealed, delay, word error rate), now and before the jitter buffer.
    Network(network::NetworkArgs),
    /// Call setup (join → Connected, join → first audio) with a signalling round-trip time,
    /// the peer's signals pipelined and stop-and-wait side by side.
    CallSetup(setup::CallSetupArgs),
    /// Hold N idle connections: server RSS per connection, connect rate, welcome latency.
    Connections(load::ConnectionsArgs),
    /// One client process of `connections` (started by it).
    #[command(hide = true)]
    ConnectionsWorker(load::ConnectionsWorkerArgs),
    /// Publishers × subscribers per channel: delivered messages/s, latency, loss; the same
    /// shape against nats-server in the same run.
    Fanout(load::FanoutArgs),
    /// Sender → receiver pairs of direct messages: send→direct latency, loss, order.
    Direct(load::DirectArgs),
    /// Join/leave storms: presence deltas seen by watchers, their latency and order.
    Churn(load::ChurnArgs),
    /// Restart the server under N subscribed clients: time until all have rejoined.
    ReconnectStorm(load::ReconnectStormArgs),
    /// Calls through agent dispatch to a `parlor worker` child: answers heard, failures, and
    /// the worker's RSS, fds and threads per call (a leak's slope).
    Calls(calls::CallsArgs),
    /// N humans at once, each with a dispatched agent on a `parlor worker` child: the
    /// worker's CPU per session and sessions per core (listening, or answering).
    Agent(agent::AgentArgs),
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Audio(args) => audio::audio(args).await,
        BenchCommand::Network(args) => network::network(args).await,
        BenchCommand::CallSetup(args) => setup::call_setup(args).await,
        BenchCommand::Connections(args) => load::connections(args).await,
        BenchCommand::ConnectionsWorker(args) => load::connections_worker(args).await,
        BenchCommand::Fanout(args) => load::fanout(args).await,
        BenchCommand::Direct(args) => load::direct(args).await,
        BenchCommand::Churn(args) => load::churn(args).await,
        BenchCommand::ReconnectStorm(args) => load::reconnect_storm(args).await,
        BenchCommand::Calls(args) => calls::calls(args).await,
        BenchCommand::Agent(args) => agent::agent(args).await,
    }
}

/// CPU time (user + system) from a `/proc/…/stat` file.
pub(crate) fn stat_cpu(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A CPU clock of this process or thread, in seconds (nanosecond resolution).
pub(crate) fn clock_seconds(clock: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// This process's CPU time (all threads).
pub(crate) fn cpu_seconds() -> f64 {
    clock_seconds(rustix::time::ClockId::ProcessCPUTime)
}

/// Resident memory of a process (`"self"` or a pid), from `/proc/…/statm`.
pub(crate) fn rss_bytes_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// This process's resident memory.
pub(crate) fn rss_bytes() -> u64 {
    rss_bytes_of("self")
}

/// The `p` quantile (0–1) of `v` (sorted in place); NaN when empty.
pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}
