//! `cargo xtask`: the project's own set-up and entry points.
//!
//! A fresh machine needs nothing but the Rust toolchain and Python 3: every
//! task first runs the set-up it depends on, and every set-up step is
//! idempotent and cached under `~/.cache/weir` (outside the work tree, so CI
//! and later sessions reuse it):
//!
//! - system packages the build needs (`libclang-dev` for rocksdb's and
//!   libsql's bindgen), installed with apt-get when missing;
//! - the ONNX Runtime shared library, unpacked from the pinned `onnxruntime`
//!   wheel on PyPI (version: `WEIR_ONNXRUNTIME_VERSION` in `.cargo/config.toml`);
//! - Python virtual environments (`python/requirements-*.txt`), built only
//!   for the tasks that need them, keyed by a hash of the requirements file;
//! - the cargo target directory (`~/.cache/weir/target`).
//!
//! The library and the environments are installed by `weir-setup`, the
//! same code as `weir setup`, so the `weir` binary finds them without
//! `cargo xtask`. This crate and that one use only `std`, so that they
//! build in seconds before anything else is installed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the workspace needs to build.
const SYSTEM_PACKAGES: &[&str] = &["libclang-dev"];

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup [--python ENV]   install what the build and tests need (idempotent); ENV: test, train, bench, automl, serve
  test                   set-up, then fmt, clippy, all tests and doctests (what CI runs)
  demo [weir demo args]  set-up, then `weir demo`: the end-to-end loop on the embedded broker
  bench <name> [args]    set-up, then `weir bench <name>` built in release mode
  weir [args]            run the `weir` binary (debug build) with the set-up's environment
  env                    print the environment the tasks pass to cargo and weir
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup_from_args(&args[1..]).map(|_| ()),
        Some("test") => test(),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("weir") => weir(&args[1..]),
        Some("env") => print_env(),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn workspace_root() -> PathBuf {
    // xtask/ sits at the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| weir_setup::cache_dir().join("target"))
}

/// What the set-up produced, passed on to cargo and to `weir` as variables.
struct Setup {
    onnxruntime: PathBuf,
    python: Option<PathBuf>,
}

impl Setup {
    fn apply(&self, command: &mut Command) {
        command
            .env("CARGO_TARGET_DIR", target_dir())
            .env("WEIR_ORT_LIB", &self.onnxruntime)
            .current_dir(workspace_root());
        if let Some(python) = &self.python {
            command.env("WEIR_PYTHON", python);
        }
    }
}

fn setup_from_args(args: &[String]) -> Result<Setup> {
    match args {
        [] => setup(None),
        [flag, env] if flag == "--python" => setup(Some(env)),
        _ => Err(format!("bad arguments to setup: {args:?}\n\n{USAGE}")),
    }
}

fn setup(python_env: Option<&str>) -> Result<Setup> {
    system_packages()?;
    let onnxruntime = onnxruntime()?;
    let python = python_env.map(python_venv).transpose()?;
    Ok(Setup {
        onnxruntime,
        python,
    })
}

fn system_packages() -> Result<()> {
    let missing: Vec<&str> = SYSTEM_PACKAGES
        .iter()
        .copied()
        .filter(|package| !debian_package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        return Err(format!(
            "missing system packages {missing:?} and no apt-get to install them: install them by hand"
        ));
    }
    eprintln!("xtask: installing system packages {missing:?}");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| -> Result<()> {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut command)
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn onnxruntime() -> Result<PathBuf> {
    weir_setup::install_onnxruntime().map_err(|e| e.to_string())
}

/// Builds (once per requirements content) the virtual environment `name`
/// from `python/requirements-<name>.txt` and returns its interpreter.
fn python_venv(name: &str) -> Result<PathBuf> {
    weir_setup::PythonEnvironment::named(name)
        .and_then(|environment| environment.install())
        .map_err(|e| e.to_string())
}

/// A cargo command with the environment of a shell, not of `cargo run`:
/// cargo gives the xtask binary `CARGO_PKG_*`, `CARGO_MANIFEST_DIR` and the
/// like, and `ring`'s build script reruns when those change, so builds from
/// `cargo xtask` and from a plain `cargo` would rebuild everything that
/// depends on it, back and forth.
fn cargo() -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    command
}

fn test() -> Result<()> {
    let setup = setup(Some("test"))?;
    // The demo's environment too: a test runs the `weir` binary with a
    // clean environment, as a user would, and it must find it.
    python_venv("train")?;
    let step = |args: &[&str]| -> Result<()> {
        let mut command = cargo();
        command.args(args);
        setup.apply(&mut command);
        run(&mut command)
    };
    step(&["fmt", "--all", "--", "--check"])?;
    step(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    step(&["nextest", "run", "--workspace", "--no-fail-fast"])?;
    step(&["test", "--workspace", "--doc"])?;
    // The README's other command, in its own environment (the test one has
    // more packages, which once hid one the demo lacked), in a state
    // directory of its own: no test runs the whole loop.
    let state = workspace_root().join(".weir-test-demo");
    let _ = std::fs::remove_dir_all(&state);
    let result = demo_with(&[], Some(&state));
    let _ = std::fs::remove_dir_all(&state);
    result
}

fn demo(args: &[String]) -> Result<()> {
    demo_with(args, None)
}

/// `weir demo ARGS`, its state in `state` (the default `.weir` if `None`).
fn demo_with(args: &[String], state: Option<&Path>) -> Result<()> {
    // The demo trains a model with the built-in LightGBM runtime.
    let setup = setup(Some("train"))?;
    let mut command = cargo();
    command
        .args(["run", "--quiet", "--package", "weir-cli", "--", "demo"])
        .args(args);
    if let Some(state) = state {
        // The embedded broker's file must sit under the working directory.
        command
            .env("WEIR_STATE_DIR", state)
            .current_dir(workspace_root());
    }
    setup.apply(&mut command);
    run(&mut command)
}

fn bench(args: &[String]) -> Result<()> {
    // `bench automl` runs the training runtimes and Optuna, `bench serve`
    // MLServer; the others share the anchors' environment.
    let python = match args.first().map(String::as_str) {
        Some("automl") => "automl",
        Some("serve") => "serve",
        _ => "bench",
    };
    let setup = setup(Some(python))?;
    let mut command = cargo();
    command
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "weir-cli",
            "--",
            "bench",
        ])
        .args(args);
    setup.apply(&mut command);
    run(&mut command)
}

fn weir(args: &[String]) -> Result<()> {
    let setup = setup(None)?;
    let mut command = cargo();
    command
        .args(["run", "--quiet", "--package", "weir-cli", "--"])
        .args(args);
    setup.apply(&mut command);
    run(&mut command)
}

fn print_env() -> Result<()> {
    println!("CARGO_TARGET_DIR={}", target_dir().display());
    println!(
        "WEIR_ORT_LIB={}",
        weir_setup::installed_onnxruntime().display()
    );
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}
