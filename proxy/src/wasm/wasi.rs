//! WASI preview1 as far as proxy-wasm guests need it (registered under both
//! `wasi_snapshot_preview1` and `wasi_unstable`): stdout/stderr go to Tandem's log with
//! the filter's name, one entry per line; the environment is the filter's `env`, clocks
//! and randomness work; files, sockets and arguments do not exist. `proc_exit` ends the
//! call as a trap.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::memory::read;
use super::output::{log_line, Stream};
use super::state::HostState;

type C<'a> = Caller<'a, HostState>;

type R = wasmtime::Result<i32>;

const ESUCCESS: i32 = 0;

const EBADF: i32 = 8;

const EINVAL: i32 = 28;

const ENOENT: i32 = 44;

const ENOSYS: i32 = 52;

const ENOTSUP: i32 = 58;

fn put(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let m = c.data().memory.ok_or_else(|| wasmtime::format_err!("no memory"))?;
    m.write(&mut *c, ptr as u32 as usize, bytes)
        .map_err(|_| wasmtime::format_err!("guest pointer out of bounds"))
}

fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

/// Logs what a guest left without a newline (see [`GuestOutput::flush`]).
pub fn flush_output(st: &mut HostState) {
    let name = &st.plugin.name;
    st.output.flush(|s, line| log_line(name, s, line));
}

/// Registers the WASI functions.
pub fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        l.func_wrap(
            m,
            "fd_write",
            |mut c: C<'_>, fd: i32, iovs: i32, n: i32, written: i32| -> R {
                if fd != 1 && fd != 2 {
                    return Ok(EBADF);
                }
                let vecs = read(&mut c, iovs, n.saturating_mul(8))?;
                let mut text = Vec::new();
                for v in vecs.chunks_exact(8) {
                    let p = i32::from_le_bytes(v[0..4].try_into().expect("4 bytes"));
                    let l = i32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
                    text.extend(read(&mut c, p, l)?);
                }
                let total = text.len() as u32;
                let st = c.data_mut();
                let stream = if fd == 1 { Stream::Stdout } else { Stream::Stderr };
                let name = &st.plugin.name;
                st.output.write(stream, &text, |s, line| log_line(name, s, line));
                put(&mut c, written, &total.to_le_bytes())?;
                Ok(ESUCCESS)
            },
        )?;
        l.func_wrap(m, "environ_sizes_get", |mut c: C<'_>, count: i32, size: i32| -> R {
            let env = &c.data().plugin.env;
            let n = env.len() as u32;
            let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            put(&mut c, count, &n.to_le_bytes())?;
            put(&mut c, size, &(bytes as u32).to_le_bytes())?;
            Ok(ESUCCESS)
        })?;
        l.func_wrap(m, "environ_get", |mut c: C<'_>, ptrs: i32, buf: i32| -> R {
            let env = c.data().plugin.env.clone();
            let mut at = buf as u32;
            for (i, (k, v)) in env.iter().enumerate() {
                let entry = format!("{k}={v}\0");
                put(&mut c, ptrs + (i as i32) * 4, &at.to_le_bytes())?;
                put(&mut c, at as i32, entry.as_bytes())?;
                at += entry.len() as u32;
            }
            Ok(ESUCCESS)
        })?;
        l.func_wrap(m, "args_sizes_get", |mut c: C<'_>, count: i32, size: i32| -> R {
            put(&mut c, count, &0u32.to_le_bytes())?;
            put(&mut c, size, &0u32.to_le_bytes())?;
            Ok(ESUCCESS)
        })?;
        l.func_wrap(m, "args_get", |_c: C<'_>, _a: i32, _b: i32| -> R { Ok(ESUCCESS) })?;
        l.func_wrap(
            m,
            "clock_time_get",
            |mut c: C<'_>, id: i32, _precision: i64, ret: i32| -> R {
                let ns = match id {
                    0 => SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                    1 => monotonic_ns(),
                    _ => return Ok(ENOTSUP),
                };
                put(&mut c, ret, &ns.to_le_bytes())?;
                Ok(ESUCCESS)
            },
        )?;
        l.func_wrap(m, "clock_res_get", |mut c: C<'_>, _id: i32, ret: i32| -> R {
            put(&mut c, ret, &1000u64.to_le_bytes())?;
            Ok(ESUCCESS)
        })?;
        l.func_wrap(m, "random_get", |mut c: C<'_>, ptr: i32, len: i32| -> R {
            let n = len as u32 as usize;
            if n > 64 << 10 {
                return Ok(EINVAL);
            }
            let mut buf = vec![0u8; n];
            use ring::rand::SecureRandom;
            if ring::rand::SystemRandom::new().fill(&mut buf).is_err() {
                fastrand::fill(&mut buf);
            }
            put(&mut c, ptr, &buf)?;
            Ok(ESUCCESS)
        })?;
        l.func_wrap(m, "proc_exit", |_c: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::format_err!("guest called proc_exit({code})"))
        })?;
        l.func_wrap(m, "sched_yield", |_c: C<'_>| -> R { Ok(ESUCCESS) })?;
        l.func_wrap(m, "fd_prestat_get", |_c: C<'_>, _fd: i32, _r: i32| -> R { Ok(EBADF) })?;
        l.func_wrap(m, "fd_prestat_dir_name", |_c: C<'_>, _fd: i32, _p: i32, _l: i32| -> R {
            Ok(EBADF)
        })?;
        l.func_wrap(m, "fd_close", |_c: C<'_>, _fd: i32| -> R { Ok(EBADF) })?;
        l.func_wrap(m, "fd_fdstat_get", |_c: C<'_>, _fd: i32, _r: i32| -> R { Ok(EBADF) })?;
        l.func_wrap(m, "fd_read", |_c: C<'_>, _fd: i32, _i: i32, _n: i32, _r: i32| -> R {
            Ok(EBADF)
        })?;
        l.func_wrap(m, "fd_seek", |_c: C<'_>, _fd: i32, _o: i64, _w: i32, _r: i32| -> R {
            Ok(EBADF)
        })?;
        l.func_wrap(
            m,
            "path_open",
            |_c: C<'_>, _a: i32, _b: i32, _p: i32, _l: i32, _o: i32, _r1: i64, _r2: i64, _f: i32, _ret: i32| -> R {
                Ok(ENOENT)
            },
        )?;
        l.func_wrap(
            m,
            "poll_oneoff",
            |mut c: C<'_>, _in: i32, _out: i32, _n: i32, ret: i32| -> R {
                put(&mut c, ret, &0u32.to_le_bytes())?;
                Ok(ESUCCESS)
            },
        )?;
        l.func_wrap(m, "sock_accept", |_c: C<'_>, _a: i32, _b: i32, _r: i32| -> R {
            Ok(ENOSYS)
        })?;
    }
    Ok(())
}
