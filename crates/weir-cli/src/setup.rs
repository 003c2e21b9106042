//! `weir setup`: install what the binary needs besides itself (ONNX
//! Runtime, the training runtimes' Python environment), or say what is
//! missing.

use std::process::ExitCode;

use weir_setup::{PythonEnvironment, TRAINING_ENVIRONMENT};

#[derive(clap::Args)]
pub struct Args {
    /// Only say what is installed and what is missing (exit 1 if anything is).
    #[arg(long)]
    check: bool,
    /// Python environments to install (default: `train`, the training
    /// runtimes'); `test`, `bench`, `automl` and `serve` are the tests' and
    /// benchmarks'.
    #[arg(long = "python", default_value = TRAINING_ENVIRONMENT)]
    environments: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let environments = args
        .environments
        .iter()
        .map(|name| PythonEnvironment::named(name))
        .collect::<Result<Vec<_>, _>>()?;
    if args.check {
        let library = weir_setup::installed_onnxruntime();
        let mut missing = !library.is_file();
        println!(
            "ONNX Runtime {:<8} {} {}",
            weir_setup::ONNXRUNTIME_VERSION,
            if library.is_file() {
                "installed"
            } else {
                "missing  "
            },
            library.display()
        );
        for environment in &environments {
            missing |= !environment.is_installed();
            println!(
                "Python `{}`{:<6} {} {}",
                environment.name,
                "",
                if environment.is_installed() {
                    "installed"
                } else {
                    "missing  "
                },
                environment.dir.display()
            );
        }
        if missing {
            println!("`weir setup` installs what is missing.");
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let library = weir_setup::install_onnxruntime()?;
    println!("ONNX Runtime  {}", library.display());
    for environment in &environments {
        let python = environment.install()?;
        println!("Python `{}`  {}", environment.name, python.display());
    }
    Ok(ExitCode::SUCCESS)
}
