//! Where Weir keeps things on disk.
//!
//! - the **state directory** (`./.weir` by default, `WEIR_STATE_DIR` or
//!   `state_dir` in `weir.toml`): the embedded broker's data, stores;
//! - the **cache** (`~/.cache/weir`, `WEIR_CACHE`): what `cargo xtask setup`
//!   downloads, such as the ONNX Runtime library, and the build directory.

use std::env;
use std::path::PathBuf;

/// The ONNX Runtime version the set-up installs (pinned in `.cargo/config.toml`).
pub const ONNXRUNTIME_VERSION: &str = env!("WEIR_ONNXRUNTIME_VERSION");

/// The cache directory: `$WEIR_CACHE`, else `~/.cache/weir`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("WEIR_CACHE") {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("weir")
}

/// The ONNX Runtime shared library: `$WEIR_ORT_LIB`, else the one
/// `cargo xtask setup` unpacked into the cache.
pub fn onnxruntime_library() -> PathBuf {
    if let Some(path) = env::var_os("WEIR_ORT_LIB") {
        return PathBuf::from(path);
    }
    cache_dir()
        .join("onnxruntime")
        .join(ONNXRUNTIME_VERSION)
        .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
}
