//! The process-wide wasmtime engine (its epoch ticker, which bounds guest CPU per
//! callback, is `epoch_ticker`), and module compilation with an on-disk cache of
//! compiled code keyed by the module's sha256 (so a restart or a reload of an unchanged
//! module does not pay for Cranelift again).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use wasmtime::{Config, Engine, Module};

pub use crate::epoch_ticker::EPOCH_TICK;

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
        crate::epoch_ticker::start(engine.weak());
        engine
    })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory Tandem owns for compiled modules, with the key that signs its files.
///
/// Compiled code is native code: whoever can write the cache can run code in the proxy.
/// So the directory must be Tandem's own — created mode 0700, owned by this process's
/// user, not a symlink, writable by nobody else — and every file carries an HMAC-SHA256
/// tag under a key kept in the directory (mode 0600), checked before wasmtime sees the
/// bytes. A directory that fails the checks is not used: modules are compiled in memory.
/// A shared temp directory is never used.
pub struct CacheDir {
    dir: PathBuf,
    key: ring::hmac::Key,
}

/// Why a cache directory was refused.
#[derive(Debug, thiserror::Error)]
#[error("compiled-module cache {dir} not used: {why}")]
pub struct CacheRefused {
    /// The directory.
    pub dir: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// Tag length at the front of every cache file.
const TAG: usize = 32;

impl CacheDir {
    /// Creates (mode 0700) or checks `dir` and loads or creates its key.
    pub fn open(dir: &Path) -> Result<CacheDir, CacheRefused> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        let refuse = |why: String| CacheRefused {
            dir: dir.to_path_buf(),
            why,
        };
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            return Err(refuse(format!("cannot create it: {e}")));
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let m = std::fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
        if m.file_type().is_symlink() || !m.is_dir() {
            return Err(refuse("it is a symlink or not a directory".into()));
        }
        if m.uid() != me {
            return Err(refuse(format!(
                "it is owned by uid {}, not by this process (uid {me})",
                m.uid()
            )));
        }
        if m.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "others may write to it (mode {:o}); chmod 700 it",
                m.mode() & 0o7777
            )));
        }
        let key_path = dir.join("key");
        let mut fresh = [0u8; TAG];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
            .map_err(|_| refuse("no randomness for a key".into()))?;
        // A new key is created exclusively; an existing one must be ours and private.
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &fresh));
        let key = match created {
            Ok(()) => fresh.to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let km = std::fs::symlink_metadata(&key_path).map_err(|e| refuse(e.to_string()))?;
                if !km.is_file() || km.uid() != me || km.mode() & 0o077 != 0 {
                    return Err(refuse("its key file is not a private file of this user".into()));
                }
                let k = std::fs::read(&key_path).map_err(|e| refuse(format!("key: {e}")))?;
                if k.len() != TAG {
                    return Err(refuse("its key file is damaged".into()));
                }
                k
            }
            Err(e) => return Err(refuse(format!("cannot write its key: {e}"))),
        };
        Ok(CacheDir {
            dir: dir.to_path_buf(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cwasm"))
    }

    /// The tag over a file's name (module digest and engine) and contents.
    fn tag(&self, name: &str, code: &[u8]) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(b"tandem-wasm-cache-v1\0");
        ctx.update(name.as_bytes());
        ctx.update(b"\0");
        ctx.update(code);
        ctx.sign()
    }

    /// The compiled code stored under `name`, if its tag is right.
    fn get(&self, name: &str) -> Option<Vec<u8>> {
        let mut bytes = std::fs::read(self.file(name)).ok()?;
        if bytes.len() < TAG {
            return None;
        }
        let code = bytes.split_off(TAG);
        let tag = self.tag(name, &code);
        // Constant-time comparison of the stored and computed tags.
        let diff = tag.as_ref().iter().zip(&bytes).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(code)
    }

    /// Stores compiled code under `name` (tag first); failures only cost a recompile.
    fn put(&self, name: &str, code: &[u8]) {
        use std::os::unix::fs::OpenOptionsExt;
        let tag = self.tag(name, code);
        let tmp = self
            .dir
            .join(format!(".{name}-{}-{}.tmp", std::process::id(), fastrand::u64(..)));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, tag.as_ref())?;
                std::io::Write::write_all(&mut f, code)
            });
        if written.is_ok() {
            let _ = std::fs::rename(&tmp, self.file(name));
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Where compiled modules are cached: `$TANDEM_WASM_CACHE` if set; else systemd's
/// `$CACHE_DIRECTORY` (`CacheDirectory=tandem`) + `/wasm`; else `/var/cache/tandem/wasm`;
/// else `$XDG_CACHE_HOME` or `~/.cache` + `/tandem/wasm`. The first usable one wins (an
/// explicit `$TANDEM_WASM_CACHE` that fails its checks is not replaced by another);
/// otherwise why none is (modules are then compiled in memory; `tandem check` and the
/// log at start say so).
pub fn cache() -> Result<&'static CacheDir, &'static str> {
    static CACHE: OnceLock<Result<CacheDir, String>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let mut tried = Vec::new();
            for (dir, explicit) in cache_candidates() {
                match CacheDir::open(&dir) {
                    Ok(c) => return Ok(c),
                    Err(e) if explicit => return Err(e.to_string()),
                    Err(e) => tried.push(e.to_string()),
                }
            }
            Err(tried.join("; "))
        })
        .as_ref()
        .map_err(String::as_str)
}

/// Cache directory candidates in order, each with whether the operator named it.
fn cache_candidates() -> Vec<(PathBuf, bool)> {
    if let Some(d) = std::env::var_os("TANDEM_WASM_CACHE") {
        return vec![(PathBuf::from(d), true)];
    }
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("CACHE_DIRECTORY") {
        if let Some(first) = std::env::split_paths(&d).next() {
            v.push((first.join("wasm"), false));
        }
    }
    v.push((PathBuf::from("/var/cache/tandem/wasm"), false));
    let home_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(h) = home_cache {
        v.push((h.join("tandem").join("wasm"), false));
    }
    v
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
    load_cached(path, &bytes, sha256, cache().ok())
}

/// Compiles `bytes` (the file at `path`, digest `sha256`), or loads its compilation from
/// `cache` when a correctly tagged one is there.
pub fn load_cached(
    path: &Path,
    bytes: &[u8],
    sha256: String,
    cache: Option<&CacheDir>,
) -> Result<LoadedModule, ModuleError> {
    let engine = engine();
    let compat = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        h.finish()
    };
    let name = format!("{sha256}-{compat:016x}");
    if let Some(code) = cache.and_then(|c| c.get(&name)) {
        // SAFETY: the bytes come from a directory only this user can write, and their
        // HMAC tag under that directory's private key proves Tandem wrote them with
        // `Module::serialize` for this module and engine; wasmtime checks its header too.
        if let Ok(module) = unsafe { Module::deserialize(engine, &code) } {
            return Ok(LoadedModule {
                module,
                sha256,
                from_cache: true,
            });
        }
    }
    let module = Module::new(engine, bytes).map_err(|e| ModuleError::Compile {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    if let (Some(c), Ok(code)) = (cache, module.serialize()) {
        c.put(&name, &code);
    }
    Ok(LoadedModule {
        module,
        sha256,
        from_cache: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The smallest valid module: the magic number and version.
    const EMPTY: &[u8] = b"\0asm\x01\0\0\0";

    fn load(cache: &CacheDir) -> LoadedModule {
        load_cached(Path::new("empty.wasm"), EMPTY, sha256_hex(EMPTY), Some(cache)).unwrap()
    }

    #[test]
    fn compiled_code_comes_back_from_a_private_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wasm");
        let cache = CacheDir::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let key_mode = std::fs::metadata(dir.join("key")).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert!(!load(&cache).from_cache);
        assert!(load(&cache).from_cache);
        // The key survives a restart: a second open reads the same one.
        assert!(load(&CacheDir::open(&dir).unwrap()).from_cache);
    }

    #[test]
    fn a_tampered_or_foreign_file_is_compiled_again() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(tmp.path()).unwrap();
        load(&cache);
        let file = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(!load(&cache).from_cache, "a changed byte must fail the tag");
        // A file planted by someone without the key fails too.
        let planted = [vec![0u8; TAG], b"native code".to_vec()].concat();
        std::fs::write(&file, planted).unwrap();
        assert!(!load(&cache).from_cache);
        // And the cache heals: the fresh compilation replaced it.
        assert!(load(&cache).from_cache);
    }

    #[test]
    fn a_directory_others_control_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CacheDir::open(&shared)
            .err()
            .expect("a world-writable directory is refused");
        assert!(e.why.contains("others may write"), "{e}");

        let link = tmp.path().join("link");
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = CacheDir::open(&link).err().expect("a symlink is refused");
        assert!(e.why.contains("symlink"), "{e}");

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("TANDEM_TEST_SKIP_PRIVILEGED").is_some(),
                "this test chowns a directory to another user and needs root; \
                 set TANDEM_TEST_SKIP_PRIVILEGED=1 to skip that part"
            );
            eprintln!("SKIPPED (TANDEM_TEST_SKIP_PRIVILEGED): the foreign-owner case needs root");
        } else {
            let foreign = tmp.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            let e = CacheDir::open(&foreign)
                .err()
                .expect("another user's directory is refused");
            assert!(e.why.contains("owned by uid 65534"), "{e}");
        }
    }
}
