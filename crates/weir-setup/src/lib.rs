//! What a machine needs to run Weir beyond the `weir` binary, where it
//! lives, and how it is installed: the ONNX Runtime shared library (serving,
//! evaluation, training's export checks) and the Python virtual
//! environments of the built-in training runtimes, the tests and the
//! benchmarks.
//!
//! Everything lives under the **cache** (`~/.cache/weir`, or `WEIR_CACHE`):
//!
//! ```text
//! ~/.cache/weir/onnxruntime/<version>/libonnxruntime.so.<version>
//! ~/.cache/weir/venv/<name>-<hash of its requirements>/bin/python
//! ```
//!
//! `weir setup` and `cargo xtask setup` install both through this crate, so
//! the binary finds what the set-up made whether or not it runs under
//! `cargo xtask`. `WEIR_ORT_LIB` and `WEIR_PYTHON` still override the
//! library and the training runtimes' Python.
//!
//! The crate uses only `std`: `cargo xtask` builds it, in seconds, before
//! anything else is installed. (For the same reason its error type is
//! written out rather than derived.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime version the set-up installs (pinned once, in
/// `.cargo/config.toml`).
pub const ONNXRUNTIME_VERSION: &str = env!("WEIR_ONNXRUNTIME_VERSION");

/// The requirements of each managed Python environment
/// (`python/requirements-<name>.txt`), built into the binary so that it
/// can install them wherever it runs.
const REQUIREMENTS: &[(&str, &str)] = &[
    (
        "train",
        include_str!("../../../python/requirements-train.txt"),
    ),
    (
        "test",
        include_str!("../../../python/requirements-test.txt"),
    ),
    (
        "bench",
        include_str!("../../../python/requirements-bench.txt"),
    ),
    (
        "automl",
        include_str!("../../../python/requirements-automl.txt"),
    ),
    (
        "serve",
        include_str!("../../../python/requirements-serve.txt"),
    ),
];

/// The environment the built-in training runtimes run in.
pub const TRAINING_ENVIRONMENT: &str = "train";

/// A set-up step that failed, or something missing that it would install.
#[derive(Debug)]
pub enum SetupError {
    /// A command the set-up runs could not start or failed.
    Command {
        /// The command, as it was run.
        command: String,
        /// How it ended.
        outcome: String,
    },
    /// Reading or writing under the cache failed.
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No environment by that name.
    UnknownEnvironment(String),
    /// Something Weir needs is not installed.
    Missing {
        /// What, for people.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Command { command, outcome } => write!(f, "{command}: {outcome}"),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::UnknownEnvironment(name) => write!(
                f,
                "no Python environment `{name}` (one of: {})",
                REQUIREMENTS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Missing { what, path } => write!(
                f,
                "{what} is not installed (looked in {}): run `weir setup` to install it",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache directory: `$WEIR_CACHE`, else `~/.cache/weir`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("weir")
}

/// Where the set-up puts the ONNX Runtime library.
pub fn installed_onnxruntime() -> PathBuf {
    cache_dir()
        .join("onnxruntime")
        .join(ONNXRUNTIME_VERSION)
        .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
}

/// The ONNX Runtime library to load: `$WEIR_ORT_LIB`, else the installed one.
pub fn onnxruntime_library() -> Result<PathBuf, SetupError> {
    if let Some(path) = std::env::var_os("WEIR_ORT_LIB") {
        return Ok(PathBuf::from(path));
    }
    let library = installed_onnxruntime();
    if library.is_file() {
        Ok(library)
    } else {
        Err(SetupError::Missing {
            what: format!("ONNX Runtime {ONNXRUNTIME_VERSION}"),
            path: library,
        })
    }
}

/// The Python the built-in training runtimes run: `$WEIR_PYTHON`, else the
/// managed training environment's.
pub fn training_python() -> Result<PathBuf, SetupError> {
    if let Some(path) = std::env::var_os("WEIR_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    let environment = PythonEnvironment::named(TRAINING_ENVIRONMENT)?;
    if environment.is_installed() {
        Ok(environment.python())
    } else {
        Err(SetupError::Missing {
            what: "the Python environment of the training runtimes (scikit-learn, LightGBM, \
                   their ONNX converters)"
                .into(),
            path: environment.dir,
        })
    }
}

/// Unpacks the pinned ONNX Runtime library from its PyPI wheel into the
/// cache, unless it is there; returns its path.
pub fn install_onnxruntime() -> Result<PathBuf, SetupError> {
    let library = installed_onnxruntime();
    if library.exists() {
        return Ok(library);
    }
    let dir = library
        .parent()
        .expect("the library's path has a parent")
        .to_path_buf();
    eprintln!("setup: fetching ONNX Runtime {ONNXRUNTIME_VERSION} from PyPI");
    let download = cache_dir()
        .join("downloads")
        .join(format!("onnxruntime-{ONNXRUNTIME_VERSION}"));
    std::fs::create_dir_all(&download).map_err(io(&download))?;
    run(Command::new(python3())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            &format!("onnxruntime=={ONNXRUNTIME_VERSION}"),
            "-d",
        ])
        .arg(&download))?;
    // Extract into a scratch folder, then rename: a crash never leaves a half library.
    let scratch = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
    let extract = r#"
import glob, os, sys, zipfile
download, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(download, "onnxruntime-*.whl"))
if not wheels:
    sys.exit("no onnxruntime wheel downloaded")
with zipfile.ZipFile(wheels[0]) as wheel:
    for name in wheel.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with open(os.path.join(out, base), "wb") as f:
                f.write(wheel.read(name))
"#;
    run(Command::new(python3())
        .args(["-c", extract])
        .arg(&download)
        .arg(&scratch))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&scratch, &dir).map_err(io(&dir))?;
    if !library.exists() {
        return Err(SetupError::Missing {
            what: format!("the onnxruntime {ONNXRUNTIME_VERSION} wheel's library"),
            path: library,
        });
    }
    Ok(library)
}

/// A managed Python virtual environment, keyed by the content of its
/// requirements: a changed requirements file makes a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnvironment {
    /// Its name (`train`, `test`, ...).
    pub name: String,
    /// Its folder under the cache.
    pub dir: PathBuf,
    requirements: String,
}

impl PythonEnvironment {
    /// The environment `name` (see `python/requirements-<name>.txt`).
    pub fn named(name: &str) -> Result<Self, SetupError> {
        let requirements = requirements(name)?;
        let dir = cache_dir()
            .join("venv")
            .join(format!("{name}-{:016x}", fnv1a(requirements.as_bytes())));
        Ok(Self {
            name: name.to_string(),
            dir,
            requirements,
        })
    }

    /// Its interpreter.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    fn marker(&self) -> PathBuf {
        self.dir.join(".complete")
    }

    /// Whether it was built to the end.
    pub fn is_installed(&self) -> bool {
        self.marker().exists()
    }

    /// Builds it unless it is built; returns its interpreter. Environments
    /// of the same name and older requirements are removed.
    pub fn install(&self) -> Result<PathBuf, SetupError> {
        let python = self.python();
        if self.is_installed() {
            return Ok(python);
        }
        eprintln!(
            "setup: building the `{}` Python environment in {}",
            self.name,
            self.dir.display()
        );
        let _ = std::fs::remove_dir_all(&self.dir);
        run(Command::new(python3()).args(["-m", "venv"]).arg(&self.dir))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--upgrade", "pip"]))?;
        let (together, alone) = split_no_deps(&self.requirements);
        let file = self.dir.join("requirements.txt");
        std::fs::write(&file, together).map_err(io(&file))?;
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&file))?;
        for requirement in alone {
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                requirement,
            ]))?;
        }
        std::fs::write(self.marker(), b"").map_err(io(&self.marker()))?;
        let parent = self.dir.parent().expect("an environment has a parent");
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                let stale = entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.name))
                    && entry.path() != self.dir;
                if stale {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(python)
    }
}

/// The names of the managed environments.
pub fn environment_names() -> impl Iterator<Item = &'static str> {
    REQUIREMENTS.iter().map(|(name, _)| *name)
}

/// The mark of a requirement installed without its dependencies, after
/// the others: a package whose declared dependencies are far more than
/// the code used needs.
const NO_DEPS: &str = "# no-deps";

/// `requirements` without the lines marked [`NO_DEPS`], and those lines'
/// requirements.
fn split_no_deps(requirements: &str) -> (String, Vec<&str>) {
    let mut together = String::new();
    let mut alone = Vec::new();
    for line in requirements.lines() {
        match line.trim_end().strip_suffix(NO_DEPS) {
            Some(requirement) => alone.push(requirement.trim()),
            None => {
                together.push_str(line);
                together.push('\n');
            }
        }
    }
    (together, alone)
}

/// `name`'s requirements with the files they include (`-r other.txt`)
/// inlined, as pip reads them.
fn requirements(name: &str) -> Result<String, SetupError> {
    let text = REQUIREMENTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .ok_or_else(|| SetupError::UnknownEnvironment(name.to_string()))?;
    let mut out = String::new();
    for line in text.lines() {
        match line
            .trim()
            .strip_prefix("-r requirements-")
            .and_then(|rest| rest.strip_suffix(".txt"))
        {
            Some(included) => out.push_str(&requirements(included)?),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// The interpreter environments are made with.
fn python3() -> &'static str {
    "python3"
}

/// FNV-1a: a stable content hash without a dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn run(command: &mut Command) -> Result<(), SetupError> {
    let described = format!("{command:?}");
    let status = command.status().map_err(|e| SetupError::Command {
        command: described.clone(),
        outcome: format!("cannot start: {e}"),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(SetupError::Command {
            command: described,
            outcome: format!("failed ({status})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_marked_no_deps_are_installed_apart() {
        let (together, alone) = split_no_deps("a==1\nb==2  # no-deps\n# c\n");
        assert_eq!(together, "a==1\n# c\n");
        assert_eq!(alone, ["b==2"]);
        let test = requirements("test").unwrap();
        let (together, alone) = split_no_deps(&test);
        assert!(alone.contains(&"obp==0.4.1"), "{alone:?}");
        assert!(!together.contains("obp=="));
    }

    #[test]
    fn included_requirements_are_inlined() {
        let test = requirements("test").unwrap();
        let train = requirements("train").unwrap();
        assert!(test.contains(&train), "{test}");
        assert!(!test.contains("-r "), "{test}");
    }

    #[test]
    fn every_requirements_file_is_known() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(env) = name
                .strip_prefix("requirements-")
                .and_then(|n| n.strip_suffix(".txt"))
            {
                assert!(
                    environment_names().any(|n| n == env),
                    "{name} is not in REQUIREMENTS"
                );
            }
        }
    }

    #[test]
    fn an_unknown_environment_is_named() {
        let error = PythonEnvironment::named("nope").unwrap_err().to_string();
        assert!(
            error.contains("`nope`") && error.contains("train"),
            "{error}"
        );
    }
}
