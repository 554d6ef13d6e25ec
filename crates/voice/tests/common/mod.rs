//! What the engine tests share.

use parlor_voice::models::{Model, ModelCache};

/// The model cache, if `models` are all in it. Without them the test says so and passes,
/// unless `PARLOR_REQUIRE_MODELS=1` (the test command sets it after fetching them), where a
/// missing model fails.
pub(crate) fn cache(models: &[Model]) -> Option<ModelCache> {
    let cache = ModelCache::from_env().expect("cache dir");
    for &m in models {
        if let Err(e) = cache.require(m) {
            if std::env::var("PARLOR_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
                panic!("{e}");
            }
            eprintln!("skipped (PARLOR_REQUIRE_MODELS unset): {e}");
            return None;
        }
    }
    Some(cache)
}
