//! The process-wide wasmtime engine, the epoch ticker that bounds guest CPU per
//! callback, and module compilation with an on-disk cache of compiled code keyed by
//! the module's sha256 (so a restart or a reload of an unchanged module does not pay
//! for Cranelift again).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{Config, Engine, Module};

/// How often the epoch advances; CPU limits are rounded up to this. Coarse on purpose:
/// the ticker thread wakes 100 times a second, not on every request.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a module could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The file's sha256 is not the pinned one.
    #[error("sha256 of {path} is {actual}, but the configuration pins {expected}")]
    Pin {
        /// File.
        path: PathBuf,
        /// Pinned digest.
        expected: String,
        /// Digest of the file.
        actual: String,
    },
    /// Not a valid WebAssembly module (or one wasmtime refuses).
    #[error("{path} is not a usable WebAssembly module: {message}")]
    Compile {
        /// File.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
}

/// The engine every module and store uses (epoch interruption on).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut c = Config::new();
        c.epoch_interruption(true);
        c.max_wasm_stack(1 << 20);
        // Linear memories keep wasmtime's default 4 GiB reservation (address space only,
        // nothing committed): it lets compiled code drop explicit bounds checks on every
        // guest load and store (~5% of the instructions a header filter adds per request).
        let engine = Engine::new(&c).expect("wasmtime engine configuration is valid");
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(e) = ticker.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("epoch thread starts");
        engine
    })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where compiled modules are cached: `$TANDEM_WASM_CACHE`, else
/// `/var/cache/tandem/wasm` when writable, else the system temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TANDEM_WASM_CACHE") {
        return PathBuf::from(d);
    }
    let sys = PathBuf::from("/var/cache/tandem/wasm");
    if std::fs::create_dir_all(&sys).is_ok() && is_writable(&sys) {
        return sys;
    }
    std::env::temp_dir().join("tandem-wasm-cache")
}

fn is_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// A loaded module and its digest.
#[derive(Clone)]
pub struct LoadedModule {
    /// Compiled code.
    pub module: Module,
    /// sha256 of the `.wasm` file.
    pub sha256: String,
    /// Whether the compiled code came from the disk cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule").field("sha256", &self.sha256).finish()
    }
}

/// Reads, pins and compiles `path` (or loads its cached compilation).
pub fn load(path: &Path, pin: Option<&str>) -> Result<LoadedModule, ModuleError> {
    let bytes = std::fs::read(path).map_err(|source| ModuleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    if let Some(expected) = pin {
        if !expected.eq_ignore_ascii_case(&sha256) {
            return Err(ModuleError::Pin {
                path: path.to_path_buf(),
                expected: expected.to_string(),
                actual: sha256,
            });
        }
    }
    let engine = engine();
    let compat = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        h.finish()
    };
    let dir = cache_dir();
    let cached = dir.join(format!("{sha256}-{compat:016x}.cwasm"));
    if cached.exists() {
        // SAFETY: the file was written by `Module::serialize` of this same engine
        // configuration (the name carries its compatibility hash) into Tandem's own
        // cache directory; wasmtime still checks its header before use.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &cached) } {
            return Ok(LoadedModule {
                module,
                sha256,
                from_cache: true,
            });
        }
    }
    let module = Module::new(engine, &bytes).map_err(|e| ModuleError::Compile {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    if let Ok(code) = module.serialize() {
        let _ = std::fs::create_dir_all(&dir);
        let tmp = dir.join(format!(".{sha256}-{}.tmp", std::process::id()));
        if std::fs::write(&tmp, code).is_ok() {
            let _ = std::fs::rename(&tmp, &cached);
        }
    }
    Ok(LoadedModule {
        module,
        sha256,
        from_cache: false,
    })
}
