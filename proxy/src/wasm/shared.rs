//! Shared data (key/value with compare-and-swap) and shared queues: one store per node
//! ([`super::HostShared`]), keyed by VM id, so the copies of a filter in every worker
//! see one store, as in Envoy.
//! Keys under a filter's `shared_prefix` are cluster-scoped: their writes are also
//! published to the pair and reads prefer the replicated value.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use super::abi::status;
use super::HostShared;
use crate::pair::Pair;

/// One queue.
struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
    /// Wakes the registrants' `on_queue_ready` tasks.
    notify: Vec<Arc<tokio::sync::Notify>>,
}

/// A node's shared data and queues.
#[derive(Default)]
pub(crate) struct Store {
    data: HashMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    queues: Vec<Queue>,
}

/// Never 0 (the SDK reads 0 as "no CAS").
fn next_cas() -> u32 {
    static CAS: AtomicU32 = AtomicU32::new(1);
    loop {
        let c = CAS.fetch_add(1, Relaxed);
        if c != 0 {
            return c;
        }
    }
}

/// Most items a queue holds; enqueue beyond it is refused.
pub const MAX_QUEUE_ITEMS: usize = 100_000;
/// Largest shared value.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Reads a key: value and CAS.
/// `pair` is the node's member of the pair's group (keys under `prefix` are read from
/// what it replicated).
pub fn get(
    host: &HostShared,
    vm_id: &str,
    prefix: Option<&str>,
    key: &[u8],
    pair: Option<&Pair>,
) -> Option<(Vec<u8>, u32)> {
    let local = host
        .store
        .lock()
        .expect("shared data poisoned")
        .data
        .get(&(vm_id.to_string(), key.to_vec()))
        .cloned();
    if let (Some(p), Ok(k), Some(pair)) = (prefix, std::str::from_utf8(key), pair) {
        if k.starts_with(p) {
            if let Some(v) = pair.replicated_shared(k) {
                let cas = local.as_ref().map_or(0, |l| l.1);
                if local.as_ref().is_none_or(|l| l.0 != v) {
                    // A peer's newer value: adopt it locally with a fresh CAS.
                    let cas = next_cas();
                    host.store
                        .lock()
                        .expect("shared data poisoned")
                        .data
                        .insert((vm_id.to_string(), key.to_vec()), (v.clone(), cas));
                    return Some((v, cas));
                }
                return Some((v, cas));
            }
        }
    }
    local
}

/// Writes a key; with `cas != 0` only if it still matches. Returns a status.
/// Keys under `prefix` are published to `pair`, the node's member of the pair's group.
pub fn set(
    host: &HostShared,
    vm_id: &str,
    prefix: Option<&str>,
    key: &[u8],
    value: &[u8],
    cas: u32,
    pair: Option<&Pair>,
) -> i32 {
    if value.len() > MAX_VALUE_BYTES {
        return status::BAD_ARGUMENT;
    }
    let mut s = host.store.lock().expect("shared data poisoned");
    let k = (vm_id.to_string(), key.to_vec());
    if cas != 0 {
        if let Some((_, current)) = s.data.get(&k) {
            if *current != cas {
                return status::CAS_MISMATCH;
            }
        }
    }
    s.data.insert(k, (value.to_vec(), next_cas()));
    drop(s);
    if let (Some(p), Ok(k), Some(pair)) = (prefix, std::str::from_utf8(key), pair) {
        if k.starts_with(p) {
            pair.publish_shared(k, (!value.is_empty()).then(|| value.to_vec()));
        }
    }
    status::OK
}

/// Registers (or opens) queue `name` of `vm_id`; the notifier fires on enqueue.
pub fn register_queue(host: &HostShared, vm_id: &str, name: &str, notify: Arc<tokio::sync::Notify>) -> u32 {
    let mut s = host.store.lock().expect("shared data poisoned");
    if let Some(i) = s.queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
        let q = &mut s.queues[i];
        q.notify.retain(|n| Arc::strong_count(n) > 1);
        if !q.notify.iter().any(|n| Arc::ptr_eq(n, &notify)) {
            q.notify.push(notify);
        }
        return i as u32 + 1;
    }
    s.queues.push(Queue {
        vm_id: vm_id.to_string(),
        name: name.to_string(),
        items: VecDeque::new(),
        notify: vec![notify],
    });
    s.queues.len() as u32
}

/// Finds queue `name` of another (or the same) VM.
pub fn resolve_queue(host: &HostShared, vm_id: &str, name: &str) -> Option<u32> {
    let s = host.store.lock().expect("shared data poisoned");
    s.queues
        .iter()
        .position(|q| q.vm_id == vm_id && q.name == name)
        .map(|i| i as u32 + 1)
}

/// Pushes an item and wakes the registrants.
pub fn enqueue(host: &HostShared, id: u32, value: &[u8]) -> i32 {
    let mut s = host.store.lock().expect("shared data poisoned");
    let Some(q) = (id as usize).checked_sub(1).and_then(|i| s.queues.get_mut(i)) else {
        return status::NOT_FOUND;
    };
    if q.items.len() >= MAX_QUEUE_ITEMS {
        return status::INTERNAL_FAILURE;
    }
    q.items.push_back(value.to_vec());
    for n in &q.notify {
        n.notify_one();
    }
    status::OK
}

/// Pops an item: `Err(NOT_FOUND)` for an unknown queue, `Err(EMPTY)` for none.
pub fn dequeue(host: &HostShared, id: u32) -> Result<Vec<u8>, i32> {
    let mut s = host.store.lock().expect("shared data poisoned");
    let Some(q) = (id as usize).checked_sub(1).and_then(|i| s.queues.get_mut(i)) else {
        return Err(status::NOT_FOUND);
    };
    q.items.pop_front().ok_or(status::EMPTY)
}
