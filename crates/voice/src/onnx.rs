//! ONNX Runtime, loaded at run time from the model cache (the `onnxruntime` wheel's library,
//! [`Model::OnnxRuntime`]): nothing is downloaded or linked at build time. One environment per
//! process, created on first use.

use std::path::Path;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::EngineError;
use crate::models::{Model, ModelCache};

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment, loading the library from `cache` the first time.
pub(crate) fn environment(cache: &ModelCache) -> Result<&'static Environment, EngineError> {
    cache.require(Model::OnnxRuntime)?;
    let lib = cache.path(Model::OnnxRuntime.files()[0].dest);
    ENVIRONMENT
        .get_or_init(|| {
            let builder = ort::init_from(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
            builder
                .with_name("parlor-voice")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Runtime(format!("cannot load ONNX Runtime: {e}")))
}

/// A session for the model file at `path`, with `threads` intra-op threads.
pub(crate) fn session(
    cache: &ModelCache,
    path: &Path,
    threads: usize,
) -> Result<Session, EngineError> {
    let env = environment(cache)?;
    build(env, path, threads)
        .map_err(|e| EngineError::Runtime(format!("cannot load {}: {e}", path.display())))
}

fn build(env: &Environment, path: &Path, threads: usize) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        // Idle pool threads sleep instead of spinning for the next op: with several agents'
        // engines sharing the cores, spinning only takes CPU from the others (4 answering
        // sessions: 13.0–13.4 % of a core each against 14.5–15.8 %, the same latency).
        .with_intra_op_spinning(false)?
        .commit_from_file(path)
}
