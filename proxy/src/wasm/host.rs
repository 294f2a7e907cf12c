//! The host functions: every `env` import of proxy-wasm ABI 0.2.1 (plus the 0.1.0-only
//! ones) and the WASI preview1 calls Rust-SDK guests make. Every guest pointer and
//! length is bounds-checked; a bad one traps the call (the Rust SDK cannot represent
//! INVALID_MEMORY_ACCESS), which the instance turns into a failure per policy.
//! Host-to-guest buffers are allocated with the guest's own allocator and owned by it.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::Linker;

use super::abi::{self, status, BufferKind, MapKind, StreamKind};
use super::memory::{oob, read, read_str, with_slices, write, write_u32, write_u64, C};
use super::state::{Deferred, HostState, LocalReply};

type R = wasmtime::Result<i32>;

/// Hands `bytes` to the guest: allocated by its allocator, pointer and length written
/// to the return slots. Empty values are (0, 0).
pub(crate) fn give(c: &mut C<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> R {
    if bytes.is_empty() {
        write_u32(c, ret_ptr, 0)?;
        write_u32(c, ret_len, 0)?;
        return Ok(status::OK);
    }
    let malloc = c.data().malloc.clone().ok_or_else(oob)?;
    let ptr = malloc.call(&mut *c, bytes.len() as i32)?;
    if ptr == 0 {
        return Ok(status::INTERNAL_FAILURE);
    }
    write(c, ptr, bytes)?;
    write_u32(c, ret_ptr, ptr as u32)?;
    write_u32(c, ret_len, bytes.len() as u32)?;
    Ok(status::OK)
}

fn log_at(plugin: &str, level: i32, msg: &str) {
    match level {
        0 => tracing::trace!(filter = plugin, "{msg}"),
        1 => tracing::debug!(filter = plugin, "{msg}"),
        2 => tracing::info!(filter = plugin, "{msg}"),
        3 => tracing::warn!(filter = plugin, "{msg}"),
        _ => tracing::error!(filter = plugin, "{msg}"),
    }
}

fn defer(c: &mut C<'_>, d: Deferred) -> i32 {
    let ctx = c.data().effective;
    if c.data().streams.contains_key(&ctx) {
        c.data_mut().actions.push((ctx, d));
    }
    status::OK
}

/// Registers every host function in `linker`.
pub fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    define_context(l)?;
    define_maps(l)?;
    define_buffers(l)?;
    define_http(l)?;
    define_shared(l)?;
    define_misc(l)?;
    super::wasi::define(l)?;
    Ok(())
}

fn define_context(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_log", |mut c: C<'_>, level: i32, p: i32, n: i32| -> R {
        let msg = read_str(&mut c, p, n)?;
        log_at(&c.data().plugin.name, level, &msg);
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, ret: i32| -> R {
        use tracing::level_filters::LevelFilter as L;
        let lvl = match L::current() {
            L::TRACE => 0,
            L::DEBUG => 1,
            L::INFO => 2,
            L::WARN => 3,
            L::ERROR => 4,
            _ => 5,
        };
        write_u32(&mut c, ret, lvl)?;
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_set_effective_context", |mut c: C<'_>, ctx: i32| -> R {
        let ctx = ctx as u32;
        let st = c.data_mut();
        if ctx == st.root || st.streams.contains_key(&ctx) {
            st.effective = ctx;
            Ok(status::OK)
        } else {
            Ok(status::BAD_ARGUMENT)
        }
    })?;
    l.func_wrap("env", "proxy_done", |mut c: C<'_>| -> R {
        let st = c.data_mut();
        st.done_called = true;
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> R {
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            write_u64(&mut c, ret, ns)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> R {
            let st = c.data_mut();
            st.tick = (ms as u32, true);
            Ok(status::OK)
        },
    )?;
    l.func_wrap("env", "proxy_continue_stream", |mut c: C<'_>, kind: i32| -> R {
        match StreamKind::from_i32(kind) {
            Some(_) => Ok(defer(&mut c, Deferred::Continue)),
            None => Ok(status::BAD_ARGUMENT),
        }
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: C<'_>, kind: i32| -> R {
        match StreamKind::from_i32(kind) {
            Some(_) => Ok(defer(&mut c, Deferred::Close)),
            None => Ok(status::BAD_ARGUMENT),
        }
    })?;
    // ABI 0.1.0.
    l.func_wrap("env", "proxy_continue_request", |mut c: C<'_>| -> R {
        Ok(defer(&mut c, Deferred::Continue))
    })?;
    l.func_wrap("env", "proxy_continue_response", |mut c: C<'_>| -> R {
        Ok(defer(&mut c, Deferred::Continue))
    })?;
    l.func_wrap("env", "proxy_clear_route_cache", |_c: C<'_>| -> R { Ok(status::OK) })?;
    l.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut c: C<'_>, rp: i32, rl: i32| -> R {
            let cfg = c.data().plugin.config.clone();
            give(&mut c, &cfg, rp, rl)
        },
    )?;
    Ok(())
}

/// The maps of a callout being delivered (gRPC metadata, `http_call` headers and
/// trailers), which are plain pairs; `None` for a stream's maps. `Some(&[])` when the
/// callout is not being delivered now.
fn callout_pairs(st: &HostState, kind: MapKind) -> Option<&[(Vec<u8>, Vec<u8>)]> {
    let pairs = match kind {
        MapKind::GrpcInitial => st.grpc_now.as_ref().map(|d| &d.initial),
        MapKind::GrpcTrailing => st.grpc_now.as_ref().map(|d| &d.trailing),
        MapKind::CallResponseHeaders => st.callout.as_ref().map(|r| &r.headers),
        MapKind::CallResponseTrailers => st.callout.as_ref().map(|r| &r.trailers),
        _ => return None,
    };
    Some(pairs.map_or(&[][..], |p| &p[..]))
}

/// The serialized map of `kind` for the effective context.
fn map_bytes(st: &HostState, kind: MapKind) -> Vec<u8> {
    if let Some(pairs) = callout_pairs(st, kind) {
        return abi::serialize_map(|| pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    }
    let Some(s) = st.streams.get(&st.effective) else {
        return Vec::new();
    };
    match kind {
        MapKind::RequestHeaders => s.req.as_ref().map(super::maps::req_serialize).unwrap_or_default(),
        MapKind::ResponseHeaders => s.resp.as_ref().map(super::maps::resp_serialize).unwrap_or_default(),
        MapKind::RequestTrailers => s
            .req_trailers
            .as_ref()
            .map(super::maps::plain_serialize)
            .unwrap_or_default(),
        MapKind::ResponseTrailers => s
            .resp_trailers
            .as_ref()
            .map(super::maps::plain_serialize)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn map_get(st: &HostState, kind: MapKind, key: &[u8]) -> Option<Vec<u8>> {
    if let Some(pairs) = callout_pairs(st, kind) {
        return pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone());
    }
    let s = st.streams.get(&st.effective)?;
    match kind {
        MapKind::RequestHeaders => super::maps::req_get(s.req.as_ref()?, key),
        MapKind::ResponseHeaders => super::maps::resp_get(s.resp.as_ref()?, key),
        MapKind::RequestTrailers => super::maps::plain_get(s.req_trailers.as_ref()?, key),
        MapKind::ResponseTrailers => super::maps::plain_get(s.resp_trailers.as_ref()?, key),
        _ => None,
    }
}

/// Applies an edit to a stream map. Writes to a map that is absent (too late, or a
/// map this stream does not have) are accepted and ignored, as the SDK would panic
/// on an error status.
fn map_edit(st: &mut HostState, kind: MapKind, edit: super::maps::Edit<'_>) {
    let eff = st.effective;
    let Some(s) = st.streams.get_mut(&eff) else { return };
    let cache = &mut st.header_cache;
    let ok = match kind {
        MapKind::RequestHeaders => s.req.as_mut().map(|h| super::maps::req_edit(h, edit, cache)),
        MapKind::ResponseHeaders => s.resp.as_mut().map(|h| super::maps::resp_edit(h, edit, cache)),
        MapKind::RequestTrailers => Some(super::maps::plain_edit(
            s.req_trailers.get_or_insert_with(Default::default),
            edit,
            cache,
        )),
        MapKind::ResponseTrailers => Some(super::maps::plain_edit(
            s.resp_trailers.get_or_insert_with(Default::default),
            edit,
            cache,
        )),
        _ => None,
    };
    if ok != Some(true) {
        tracing::debug!(filter = %st.plugin.name, ?kind, "header write ignored (map not writable now, or invalid name/value)");
    }
}

fn define_maps(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use super::maps::Edit;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, kind: i32, rp: i32, rl: i32| -> R {
            let Some(kind) = MapKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let bytes = map_bytes(c.data(), kind);
            give(&mut c, &bytes, rp, rl)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, kind: i32, rs: i32| -> R {
            let Some(kind) = MapKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let n = map_bytes(c.data(), kind).len();
            write_u32(&mut c, rs, n as u32)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, kind: i32, p: i32, n: i32| -> R {
            let Some(kind) = MapKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let bytes = read(&mut c, p, n)?;
            let Some(pairs) = abi::parse_map(&bytes) else {
                return Ok(status::SERIALIZATION_FAILURE);
            };
            map_edit(c.data_mut(), kind, Edit::ReplaceAll(&pairs));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, rp: i32, rl: i32| -> R {
            let Some(kind) = MapKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            match with_slices(&mut c, (kp, kl), (kp, 0), |k, _, st| map_get(st, kind, k))? {
                Some(v) => give(&mut c, &v, rp, rl),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let Some(kind) = MapKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            with_slices(&mut c, (kp, kl), (vp, vl), |k, v, st| {
                map_edit(st, kind, Edit::Add(k, v))
            })?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let Some(kind) = MapKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            with_slices(&mut c, (kp, kl), (vp, vl), |k, v, st| {
                map_edit(st, kind, Edit::Replace(k, v))
            })?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32| -> R {
            let Some(kind) = MapKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            with_slices(&mut c, (kp, kl), (kp, 0), |k, _, st| {
                map_edit(st, kind, Edit::Remove(k))
            })?;
            Ok(status::OK)
        },
    )?;
    Ok(())
}

/// The bytes of buffer `kind` for the effective context.
fn buffer(st: &HostState, kind: BufferKind) -> &[u8] {
    let stream = st.streams.get(&st.effective);
    match kind {
        BufferKind::RequestBody | BufferKind::DownstreamData => stream.map_or(&[], |s| &s.req_body[..]),
        BufferKind::ResponseBody | BufferKind::UpstreamData => stream.map_or(&[], |s| &s.resp_body[..]),
        BufferKind::CallResponseBody => st.callout.as_ref().map_or(&[], |r| &r.body[..]),
        BufferKind::VmConfiguration => &st.plugin.vm_config,
        BufferKind::PluginConfiguration => &st.plugin.config,
        BufferKind::CallData => &st.call_data,
        BufferKind::GrpcReceive => st.grpc_now.as_ref().map_or(&[], |d| &d.message[..]),
    }
}

fn define_buffers(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, rp: i32, rl: i32| -> R {
            let Some(kind) = BufferKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let buf = buffer(c.data(), kind);
            let start = (start as u32 as u64).min(buf.len() as u64) as usize;
            let end = (start as u64 + max as u32 as u64).min(buf.len() as u64) as usize;
            let bytes = buf[start..end].to_vec();
            give(&mut c, &bytes, rp, rl)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, kind: i32, rs: i32, rf: i32| -> R {
            let Some(kind) = BufferKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let n = buffer(c.data(), kind).len();
            write_u32(&mut c, rs, n as u32)?;
            write_u32(&mut c, rf, 0)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, p: i32, n: i32| -> R {
            let Some(kind) = BufferKind::from_i32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let value = read(&mut c, p, n)?;
            let st = c.data_mut();
            let eff = st.effective;
            let Some(s) = st.streams.get_mut(&eff) else {
                return Ok(status::OK);
            };
            let buf = match kind {
                BufferKind::RequestBody | BufferKind::DownstreamData => &mut s.req_body,
                BufferKind::ResponseBody | BufferKind::UpstreamData => &mut s.resp_body,
                _ => return Ok(status::BAD_ARGUMENT),
            };
            let len = buf.len() as u64;
            let start = (start as u32 as u64).min(len) as usize;
            let end = (start as u64 + size as u32 as u64).min(len) as usize;
            let mut next = bytes::BytesMut::with_capacity(buf.len() - (end - start) + value.len());
            next.extend_from_slice(&buf[..start]);
            next.extend_from_slice(&value);
            next.extend_from_slice(&buf[end..]);
            *buf = next.freeze();
            Ok(status::OK)
        },
    )?;
    Ok(())
}

fn define_http(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>, code: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, grpc: i32| -> R {
            let details = read_str(&mut c, dp, dl)?;
            let body = read(&mut c, bp, bl)?;
            let hbytes = read(&mut c, hp, hl)?;
            let Some(pairs) = abi::parse_map(&hbytes) else {
                return Ok(status::SERIALIZATION_FAILURE);
            };
            let headers = pairs.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            let reply = LocalReply {
                status: (code as u32).clamp(100, 599) as u16,
                body,
                headers,
                grpc_status: (grpc >= 0).then_some(grpc as u32),
                details,
            };
            Ok(defer(&mut c, Deferred::Local(reply)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         upl: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout_ms: i32,
         rt: i32|
         -> R {
            let cluster = read_str(&mut c, up, upl)?;
            let hbytes = read(&mut c, hp, hl)?;
            let body = read(&mut c, bp, bl)?;
            let tbytes = read(&mut c, tp, tl)?;
            let (Some(h), Some(t)) = (abi::parse_map(&hbytes), abi::parse_map(&tbytes)) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let own = |p: Vec<(&[u8], &[u8])>| -> Vec<(Vec<u8>, Vec<u8>)> {
                p.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
            };
            match super::callout::dispatch(c.data_mut(), &cluster, own(h), body, own(t), timeout_ms as u32) {
                Ok(token) => {
                    write_u32(&mut c, rt, token)?;
                    Ok(status::OK)
                }
                Err(s) => Ok(s),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, rc: i32, rp: i32, rl: i32| -> R {
            let (code, msg) = c.data().last_status.clone();
            write_u32(&mut c, rc, code)?;
            give(&mut c, &msg, rp, rl)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         up: i32,
         upl: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         timeout_ms: i32,
         rt: i32|
         -> R {
            let cluster = read_str(&mut c, up, upl)?;
            let service = read_str(&mut c, sp, sl)?;
            let method = read_str(&mut c, mp, ml)?;
            let hbytes = read(&mut c, hp, hl)?;
            let message = read(&mut c, bp, bl)?;
            let Some(metadata) = abi::parse_map(&hbytes) else {
                return Ok(status::PARSE_FAILURE);
            };
            let metadata = metadata.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            let st = c.data_mut();
            match super::grpc::open(
                st,
                &cluster,
                &service,
                &method,
                metadata,
                Some(message),
                timeout_ms as u32,
            ) {
                Ok(token) => {
                    write_u32(&mut c, rt, token)?;
                    Ok(status::OK)
                }
                Err(s) => Ok(s),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C<'_>, up: i32, upl: i32, sp: i32, sl: i32, mp: i32, ml: i32, hp: i32, hl: i32, rt: i32| -> R {
            let cluster = read_str(&mut c, up, upl)?;
            let service = read_str(&mut c, sp, sl)?;
            let method = read_str(&mut c, mp, ml)?;
            let hbytes = read(&mut c, hp, hl)?;
            let Some(metadata) = abi::parse_map(&hbytes) else {
                return Ok(status::PARSE_FAILURE);
            };
            let metadata = metadata.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            match super::grpc::open(c.data_mut(), &cluster, &service, &method, metadata, None, 0) {
                Ok(token) => {
                    write_u32(&mut c, rt, token)?;
                    Ok(status::OK)
                }
                Err(s) => Ok(s),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: C<'_>, token: i32, mp: i32, ml: i32, end: i32| -> R {
            let message = read(&mut c, mp, ml)?;
            Ok(super::grpc::send(c.data_mut(), token as u32, &message, end != 0))
        },
    )?;
    l.func_wrap("env", "proxy_grpc_cancel", |mut c: C<'_>, token: i32| -> R {
        Ok(super::grpc::cancel(c.data_mut(), token as u32))
    })?;
    l.func_wrap("env", "proxy_grpc_close", |mut c: C<'_>, token: i32| -> R {
        Ok(super::grpc::close(c.data_mut(), token as u32))
    })?;
    Ok(())
}

fn define_shared(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, rp: i32, rl: i32, rc: i32| -> R {
            let key = read(&mut c, kp, kl)?;
            let p = c.data().plugin.clone();
            let pair = c.data().worker.upgrade().and_then(|w| w.pair());
            match super::shared::get(
                &c.data().host,
                &p.vm_id,
                p.shared_prefix.as_deref(),
                &key,
                pair.as_deref(),
            ) {
                Some((v, cas)) => {
                    write_u32(&mut c, rc, cas)?;
                    give(&mut c, &v, rp, rl)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
            let key = read(&mut c, kp, kl)?;
            let value = read(&mut c, vp, vl)?;
            let p = c.data().plugin.clone();
            let pair = c.data().worker.upgrade().and_then(|w| w.pair());
            Ok(super::shared::set(
                &c.data().host,
                &p.vm_id,
                p.shared_prefix.as_deref(),
                &key,
                &value,
                cas as u32,
                pair.as_deref(),
            ))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, rq: i32| -> R {
            let name = read_str(&mut c, np, nl)?;
            let notify = std::sync::Arc::new(tokio::sync::Notify::new());
            let vm = c.data().plugin.vm_id.clone();
            let id = super::shared::register_queue(&c.data().host, &vm, &name, notify.clone());
            c.data_mut().new_queues.push((id, notify));
            write_u32(&mut c, rq, id)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, rq: i32| -> R {
            let mut vm = read_str(&mut c, vp, vl)?;
            if vm.is_empty() {
                vm = c.data().plugin.vm_id.clone();
            }
            let name = read_str(&mut c, np, nl)?;
            match super::shared::resolve_queue(&c.data().host, &vm, &name) {
                Some(id) => {
                    write_u32(&mut c, rq, id)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, q: i32, vp: i32, vl: i32| -> R {
            let v = read(&mut c, vp, vl)?;
            Ok(super::shared::enqueue(&c.data().host, q as u32, &v))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, q: i32, rp: i32, rl: i32| -> R {
            match super::shared::dequeue(&c.data().host, q as u32) {
                Ok(v) => give(&mut c, &v, rp, rl),
                Err(s) => Ok(s),
            }
        },
    )?;
    Ok(())
}

fn define_misc(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, rid: i32| -> R {
            if !(0..=2).contains(&kind) {
                return Ok(status::BAD_ARGUMENT);
            }
            let name = read_str(&mut c, np, nl)?;
            let id = super::metrics::define(&c.data().host, &c.data().plugin.name, &name, kind);
            write_u32(&mut c, rid, id)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap("env", "proxy_increment_metric", |c: C<'_>, id: i32, delta: i64| -> R {
        let Some(m) = super::metrics::get(&c.data().host, id as u32) else {
            return Ok(status::NOT_FOUND);
        };
        match m.kind {
            0 if delta < 0 => Ok(status::BAD_ARGUMENT),
            0 | 1 => {
                m.value.fetch_add(delta, Relaxed);
                Ok(status::OK)
            }
            _ => Ok(status::BAD_ARGUMENT),
        }
    })?;
    l.func_wrap("env", "proxy_record_metric", |c: C<'_>, id: i32, value: i64| -> R {
        let Some(m) = super::metrics::get(&c.data().host, id as u32) else {
            return Ok(status::NOT_FOUND);
        };
        match m.kind {
            2 => {
                m.value.fetch_add(value, Relaxed);
                m.count.fetch_add(1, Relaxed);
            }
            _ => m.value.store(value, Relaxed),
        }
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_get_metric", |mut c: C<'_>, id: i32, ret: i32| -> R {
        let Some(m) = super::metrics::get(&c.data().host, id as u32) else {
            return Ok(status::NOT_FOUND);
        };
        if m.kind == 2 {
            return Ok(status::BAD_ARGUMENT);
        }
        write_u64(&mut c, ret, m.value.load(Relaxed) as u64)?;
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, rp: i32, rl: i32| -> R {
            let path = read(&mut c, pp, pl)?;
            match super::properties::get(c.data(), &path) {
                Some(v) => give(&mut c, &v, rp, rl),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> R {
            let path = read(&mut c, pp, pl)?;
            let value = read(&mut c, vp, vl)?;
            Ok(super::properties::set(c.data_mut(), path, value))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, ap: i32, al: i32, rp: i32, rl: i32| -> R {
            let name = read_str(&mut c, np, nl)?;
            let args = read(&mut c, ap, al)?;
            match super::extensions::call(c.data_mut(), &name, &args) {
                Ok(out) => give(&mut c, &out, rp, rl),
                Err(s) => Ok(s),
            }
        },
    )?;
    // Emscripten-built modules import these; harmless no-ops.
    l.func_wrap("env", "emscripten_notify_memory_growth", |_c: C<'_>, _i: i32| {})?;
    l.func_wrap("env", "pthread_equal", |_c: C<'_>, a: i32, b: i32| -> i32 {
        (a == b) as i32
    })?;
    Ok(())
}
