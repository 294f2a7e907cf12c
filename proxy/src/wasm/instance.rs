//! One instance of a plugin in one worker: its wasmtime store, the guest's callbacks
//! looked up once, the start-up sequence (`_initialize`, root context, `on_vm_start`,
//! `on_configure`), and every call into the guest bounded by the CPU limit. A trap,
//! deadline or memory cap poisons the instance: its paused streams are woken to fail
//! per policy, and the worker builds a fresh instance for the next request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Instance as WasmInstance, InstancePre, Linker, Store, TypedFunc, WasmParams, WasmResults};

use super::abi::Action;
use super::link::WorkerLink;
use super::state::{Deferred, Facts, HostState, IdHash, StreamData};
use crate::runtime::plugin::Plugin;

/// Why a guest call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The guest trapped (panic, unreachable, bad pointer, `proc_exit`).
    Trap(String),
    /// The callback ran past the CPU limit.
    Deadline,
    /// The instance needed more memory than its cap.
    Memory,
    /// The instance could not be created (or was recently failing to be).
    Unavailable(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Trap(m) => write!(f, "trap: {m}"),
            Fault::Deadline => f.write_str("CPU limit exceeded"),
            Fault::Memory => f.write_str("memory limit exceeded"),
            Fault::Unavailable(m) => write!(f, "instance unavailable: {m}"),
        }
    }
}

type F1 = Rc<TypedFunc<i32, ()>>;
type F1R = Rc<TypedFunc<i32, i32>>;
type F2 = Rc<TypedFunc<(i32, i32), ()>>;
type F2R = Rc<TypedFunc<(i32, i32), i32>>;
type F3 = Rc<TypedFunc<(i32, i32, i32), ()>>;
type F3R = Rc<TypedFunc<(i32, i32, i32), i32>>;
type F5 = Rc<TypedFunc<(i32, i32, i32, i32, i32), ()>>;

/// The guest's exported callbacks (each optional).
#[derive(Default)]
struct Callbacks {
    context_create: Option<F2>,
    vm_start: Option<F2R>,
    configure: Option<F2R>,
    done: Option<F1R>,
    log: Option<F1>,
    delete: Option<F1>,
    tick: Option<F1>,
    queue_ready: Option<F2>,
    foreign: Option<F3>,
    http_call_response: Option<F5>,
    grpc_initial: Option<F3>,
    grpc_receive: Option<F3>,
    grpc_trailing: Option<F3>,
    grpc_close: Option<F3>,
    request_headers3: Option<F3R>,
    request_headers2: Option<F2R>,
    request_body: Option<F3R>,
    request_trailers: Option<F2R>,
    response_headers3: Option<F3R>,
    response_headers2: Option<F2R>,
    response_body: Option<F3R>,
    response_trailers: Option<F2R>,
    new_connection: Option<F1R>,
    downstream_data: Option<F3R>,
    upstream_data: Option<F3R>,
    downstream_close: Option<F2>,
    upstream_close: Option<F2>,
}

/// A running instance.
pub struct Instance {
    store: Store<HostState>,
    cb: Callbacks,
    next_id: u32,
    /// Why the instance is unusable, once it is.
    pub poisoned: Option<Fault>,
    /// Set by the worker when the instance leaves its table (reload).
    pub retired: bool,
    /// The instance itself, for its ticks and queue watchers.
    me: Weak<RefCell<Instance>>,
}

thread_local! {
    static PRE: RefCell<HashMap<u64, InstancePre<HostState>>> = RefCell::new(HashMap::new());
}

fn instance_pre(plugin: &Plugin) -> Result<InstancePre<HostState>, String> {
    if let Some(p) = PRE.with(|m| m.borrow().get(&plugin.uid).cloned()) {
        return Ok(p);
    }
    let mut linker: Linker<HostState> = Linker::new(crate::wasm_engine::engine());
    super::host::define(&mut linker).map_err(|e| format!("{e:#}"))?;
    linker
        .define_unknown_imports_as_traps(&plugin.module)
        .map_err(|e| format!("{e:#}"))?;
    let pre = linker.instantiate_pre(&plugin.module).map_err(|e| format!("{e:#}"))?;
    PRE.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > 64 {
            m.clear();
        }
        m.insert(plugin.uid, pre.clone());
    });
    Ok(pre)
}

fn lookup<P: WasmParams, R: WasmResults>(
    i: &WasmInstance,
    store: &mut Store<HostState>,
    name: &str,
) -> Option<TypedFunc<P, R>> {
    i.get_typed_func::<P, R>(&mut *store, name).ok()
}

impl Instance {
    /// Instantiates `plugin` and runs its start-up sequence. `worker` is `None` for the
    /// trial run of configuration validation.
    pub fn create(
        plugin: &Arc<Plugin>,
        worker: Weak<dyn WorkerLink>,
        host: Arc<super::HostShared>,
    ) -> Result<Rc<RefCell<Instance>>, Fault> {
        plugin.stats.instances.fetch_add(1, Relaxed);
        let r = Self::create_inner(plugin, worker, host);
        if let Err(e) = &r {
            plugin.stats.instance_failures.fetch_add(1, Relaxed);
            tracing::error!(filter = %plugin.name, error = %e, "filter instance could not start");
        }
        r
    }

    fn create_inner(
        plugin: &Arc<Plugin>,
        worker: Weak<dyn WorkerLink>,
        host: Arc<super::HostShared>,
    ) -> Result<Rc<RefCell<Instance>>, Fault> {
        let pre = instance_pre(plugin).map_err(Fault::Unavailable)?;
        let state = HostState {
            plugin: plugin.clone(),
            worker,
            host,
            inbox: Weak::<RefCell<Instance>>::new(),
            memory: None,
            malloc: None,
            root: 1,
            effective: 0,
            streams: HashMap::default(),
            spare: Vec::new(),
            actions: Vec::new(),
            call_data: Vec::new(),
            callout: None,
            callouts: HashMap::default(),
            next_token: 0,
            grpc: HashMap::default(),
            next_grpc_token: 0,
            grpc_now: None,
            tick: (0, false),
            done_called: false,
            limits: super::state::MemoryCap {
                limit: plugin.memory_limit,
                refused: false,
                stats: plugin.stats.clone(),
            },
            last_status: (0, Vec::new()),
            new_queues: Vec::new(),
            output: Default::default(),
            header_cache: Default::default(),
        };
        let mut store = Store::new(crate::wasm_engine::engine(), state);
        store.limiter(|s| &mut s.limits as &mut dyn wasmtime::ResourceLimiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(plugin.deadline_ticks);
        // A module's start function runs here: the ticker must be awake to bound it.
        let running = crate::epoch_ticker::GuestCall::enter();
        let instantiated = pre.instantiate(&mut store);
        drop(running);
        let inst = match instantiated {
            Ok(i) => i,
            Err(e) => return Err(classify(e, store.data().limits.refused)),
        };
        let memory = inst.get_memory(&mut store, "memory");
        let malloc = lookup::<i32, i32>(&inst, &mut store, "malloc")
            .or_else(|| lookup::<i32, i32>(&inst, &mut store, "proxy_on_memory_allocate"));
        if memory.is_none() || malloc.is_none() {
            return Err(Fault::Unavailable(
                "the module exports no `memory` or no allocator (proxy_on_memory_allocate / malloc)".into(),
            ));
        }
        let abi_ok = [
            "proxy_abi_version_0_2_1",
            "proxy_abi_version_0_2_0",
            "proxy_abi_version_0_1_0",
        ]
        .iter()
        .any(|n| inst.get_func(&mut store, n).is_some());
        if !abi_ok {
            return Err(Fault::Unavailable(
                "not a proxy-wasm module (no proxy_abi_version_* export)".into(),
            ));
        }
        store.data_mut().memory = memory;
        store.data_mut().malloc = malloc;
        let cb = Callbacks {
            context_create: lookup(&inst, &mut store, "proxy_on_context_create").map(Rc::new),
            vm_start: lookup(&inst, &mut store, "proxy_on_vm_start").map(Rc::new),
            configure: lookup(&inst, &mut store, "proxy_on_configure").map(Rc::new),
            done: lookup(&inst, &mut store, "proxy_on_done").map(Rc::new),
            log: lookup(&inst, &mut store, "proxy_on_log").map(Rc::new),
            delete: lookup(&inst, &mut store, "proxy_on_delete").map(Rc::new),
            tick: lookup(&inst, &mut store, "proxy_on_tick").map(Rc::new),
            queue_ready: lookup(&inst, &mut store, "proxy_on_queue_ready").map(Rc::new),
            foreign: lookup(&inst, &mut store, "proxy_on_foreign_function").map(Rc::new),
            http_call_response: lookup(&inst, &mut store, "proxy_on_http_call_response").map(Rc::new),
            grpc_initial: lookup(&inst, &mut store, "proxy_on_grpc_receive_initial_metadata").map(Rc::new),
            grpc_receive: lookup(&inst, &mut store, "proxy_on_grpc_receive").map(Rc::new),
            grpc_trailing: lookup(&inst, &mut store, "proxy_on_grpc_receive_trailing_metadata").map(Rc::new),
            grpc_close: lookup(&inst, &mut store, "proxy_on_grpc_close").map(Rc::new),
            request_headers3: lookup(&inst, &mut store, "proxy_on_request_headers").map(Rc::new),
            request_headers2: lookup(&inst, &mut store, "proxy_on_request_headers").map(Rc::new),
            request_body: lookup(&inst, &mut store, "proxy_on_request_body").map(Rc::new),
            request_trailers: lookup(&inst, &mut store, "proxy_on_request_trailers").map(Rc::new),
            response_headers3: lookup(&inst, &mut store, "proxy_on_response_headers").map(Rc::new),
            response_headers2: lookup(&inst, &mut store, "proxy_on_response_headers").map(Rc::new),
            response_body: lookup(&inst, &mut store, "proxy_on_response_body").map(Rc::new),
            response_trailers: lookup(&inst, &mut store, "proxy_on_response_trailers").map(Rc::new),
            new_connection: lookup(&inst, &mut store, "proxy_on_new_connection").map(Rc::new),
            downstream_data: lookup(&inst, &mut store, "proxy_on_downstream_data").map(Rc::new),
            upstream_data: lookup(&inst, &mut store, "proxy_on_upstream_data").map(Rc::new),
            downstream_close: lookup(&inst, &mut store, "proxy_on_downstream_connection_close").map(Rc::new),
            upstream_close: lookup(&inst, &mut store, "proxy_on_upstream_connection_close").map(Rc::new),
        };
        // WASI reactor start-up (the Rust SDK's `main!` is `_initialize`), or a command.
        let init = lookup::<(), ()>(&inst, &mut store, "_initialize");
        let main = lookup::<(i32, i32), i32>(&inst, &mut store, "main");
        let start = lookup::<(), ()>(&inst, &mut store, "_start");
        let mut me = Instance {
            store,
            cb,
            next_id: 2,
            poisoned: None,
            retired: false,
            me: Weak::new(),
        };
        if let Some(f) = init {
            me.call(&f, (), 0)?;
            if let Some(m) = main {
                me.call(&m, (0, 0), 0)?;
            }
        } else if let Some(f) = start {
            me.call(&f, (), 0)?;
        }
        let root = me.store.data().root as i32;
        if let Some(f) = me.cb.context_create.clone() {
            me.call(&f, (root, 0), root as u32)?;
        }
        if let Some(f) = me.cb.vm_start.clone() {
            let n = plugin.vm_config.len() as i32;
            if me.call(&f, (root, n), root as u32)? == 0 {
                return Err(Fault::Unavailable("on_vm_start returned false".into()));
            }
        }
        if let Some(f) = me.cb.configure.clone() {
            let n = plugin.config.len() as i32;
            if me.call(&f, (root, n), root as u32)? == 0 {
                return Err(Fault::Unavailable(
                    "on_configure returned false: the plugin refused its configuration".into(),
                ));
            }
        }
        let rc = Rc::new(RefCell::new(me));
        {
            let mut i = rc.borrow_mut();
            i.me = Rc::downgrade(&rc);
            i.store.data_mut().inbox = Rc::downgrade(&rc) as Weak<RefCell<dyn super::state::Inbox>>;
        }
        rc.borrow_mut().start_ticker();
        rc.borrow_mut().start_queue_watchers();
        Ok(rc)
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.store.data().plugin
    }

    /// Host state (for the chain to move heads in and out).
    pub fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Calls `f` on context `ctx` within the CPU limit, then applies deferred actions.
    fn call<P: WasmParams, R: WasmResults>(&mut self, f: &TypedFunc<P, R>, args: P, ctx: u32) -> Result<R, Fault> {
        if let Some(p) = &self.poisoned {
            return Err(p.clone());
        }
        self.store.data_mut().effective = ctx;
        let ticks = self.store.data().plugin.deadline_ticks;
        self.store.set_epoch_deadline(ticks);
        let running = crate::epoch_ticker::GuestCall::enter();
        let r = f.call(&mut self.store, args);
        drop(running);
        self.store.data_mut().effective = 0;
        if !self.store.data().output.is_empty() {
            super::wasi::flush_output(self.store.data_mut());
        }
        match r {
            Ok(v) => {
                let st = self.store.data();
                if !st.actions.is_empty() || st.tick.1 || !st.new_queues.is_empty() {
                    self.apply_deferred();
                }
                Ok(v)
            }
            Err(e) => {
                let fault = classify(e, self.store.data().limits.refused);
                self.poison(fault.clone());
                Err(fault)
            }
        }
    }

    fn apply_deferred(&mut self) {
        if !self.store.data().new_queues.is_empty() {
            self.start_queue_watchers();
        }
        let st = self.store.data_mut();
        if st.actions.is_empty() {
            if st.tick.1 {
                self.start_ticker();
            }
            return;
        }
        let actions = std::mem::take(&mut st.actions);
        for (ctx, a) in actions {
            let Some(s) = st.streams.get_mut(&ctx) else { continue };
            match a {
                Deferred::Continue => s.resumed = true,
                Deferred::Local(r) => {
                    st.plugin.stats.local_responses.fetch_add(1, Relaxed);
                    s.local = Some(r);
                }
                Deferred::Close => s.closed = true,
            }
            s.wake();
        }
        if st.tick.1 {
            self.start_ticker();
        }
    }

    /// Marks the instance unusable and wakes every paused stream so it fails per policy.
    pub fn poison(&mut self, fault: Fault) {
        let st = self.store.data_mut();
        let stats = &st.plugin.stats;
        match &fault {
            Fault::Deadline => stats.deadlines.fetch_add(1, Relaxed),
            Fault::Memory => stats.memory_faults.fetch_add(1, Relaxed),
            _ => stats.traps.fetch_add(1, Relaxed),
        };
        tracing::error!(filter = %st.plugin.name, error = %fault, "filter failed; its instance is replaced");
        for s in st.streams.values_mut() {
            s.waiter = None;
        }
        st.callouts.clear();
        self.poisoned = Some(fault);
    }

    /// Creates a stream context.
    pub fn create_stream(&mut self, facts: Facts) -> Result<u32, Fault> {
        if let Some(p) = &self.poisoned {
            return Err(p.clone());
        }
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).filter(|&n| n > 1).unwrap_or(2);
        let st = self.store.data_mut();
        let data = match st.spare.pop() {
            Some(mut d) => {
                d.facts = facts;
                d
            }
            None => Box::new(StreamData::new(facts)),
        };
        st.streams.insert(id, data);
        self.store.data().plugin.stats.streams.fetch_add(1, Relaxed);
        let root = self.store.data().root as i32;
        if let Some(f) = self.cb.context_create.clone() {
            if let Err(e) = self.call(&f, (id as i32, root), id) {
                self.store.data_mut().streams.remove(&id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Stream data of `ctx`.
    pub fn stream(&mut self, ctx: u32) -> Option<&mut StreamData> {
        self.store.data_mut().streams.get_mut(&ctx).map(|d| &mut **d)
    }

    /// `on_log`, `on_done`, `on_delete`, then forgets the context (and its callouts).
    pub fn finish_stream(&mut self, ctx: u32) {
        if self.poisoned.is_none() && self.store.data().streams.contains_key(&ctx) {
            let c = ctx as i32;
            let _ = self.cb.log.clone().map(|f| self.call(&f, c, ctx)).transpose();
            let _ = self.cb.done.clone().map(|f| self.call(&f, c, ctx)).transpose();
            let _ = self.cb.delete.clone().map(|f| self.call(&f, c, ctx)).transpose();
        }
        let st = self.store.data_mut();
        if let Some(mut d) = st.streams.remove(&ctx) {
            if st.spare.len() < SPARE_STREAMS {
                d.clear();
                st.spare.push(d);
            }
        }
        if !st.callouts.is_empty() {
            st.callouts.retain(|_, owner| *owner != ctx);
        }
        // gRPC calls and streams of a finished stream end with it (the server sees a
        // reset), so a stream the server keeps open does not hold a slot forever.
        if !st.grpc.is_empty() {
            st.grpc.retain(|_, call| {
                let keep = call.owner != ctx;
                if !keep {
                    call.task.abort();
                }
                keep
            });
        }
    }

    /// `on_request_headers` (3 arguments for 0.2.x, 2 for 0.1.0).
    pub fn on_request_headers(&mut self, ctx: u32, n: usize, eos: bool) -> Result<Action, Fault> {
        let c = ctx as i32;
        if let Some(f) = self.cb.request_headers3.clone() {
            return self.call(&f, (c, n as i32, eos as i32), ctx).map(Action::from_i32);
        }
        match self.cb.request_headers2.clone() {
            Some(f) => self.call(&f, (c, n as i32), ctx).map(Action::from_i32),
            None => Ok(Action::Continue),
        }
    }

    /// `on_response_headers`.
    pub fn on_response_headers(&mut self, ctx: u32, n: usize, eos: bool) -> Result<Action, Fault> {
        let c = ctx as i32;
        if let Some(f) = self.cb.response_headers3.clone() {
            return self.call(&f, (c, n as i32, eos as i32), ctx).map(Action::from_i32);
        }
        match self.cb.response_headers2.clone() {
            Some(f) => self.call(&f, (c, n as i32), ctx).map(Action::from_i32),
            None => Ok(Action::Continue),
        }
    }

    /// `on_request_body` / `on_response_body`.
    pub fn on_body(&mut self, response: bool, ctx: u32, size: usize, eos: bool) -> Result<Action, Fault> {
        let f = if response {
            self.cb.response_body.clone()
        } else {
            self.cb.request_body.clone()
        };
        match f {
            Some(f) => self
                .call(&f, (ctx as i32, size as i32, eos as i32), ctx)
                .map(Action::from_i32),
            None => Ok(Action::Continue),
        }
    }

    /// `on_request_trailers` / `on_response_trailers`.
    pub fn on_trailers(&mut self, response: bool, ctx: u32, n: usize) -> Result<Action, Fault> {
        let f = if response {
            self.cb.response_trailers.clone()
        } else {
            self.cb.request_trailers.clone()
        };
        match f {
            Some(f) => self.call(&f, (ctx as i32, n as i32), ctx).map(Action::from_i32),
            None => Ok(Action::Continue),
        }
    }

    /// `on_new_connection`.
    pub fn on_new_connection(&mut self, ctx: u32) -> Result<Action, Fault> {
        match self.cb.new_connection.clone() {
            Some(f) => self.call(&f, ctx as i32, ctx).map(Action::from_i32),
            None => Ok(Action::Continue),
        }
    }

    /// `on_downstream_data` / `on_upstream_data`.
    pub fn on_data(&mut self, upstream: bool, ctx: u32, size: usize, eos: bool) -> Result<Action, Fault> {
        let f = if upstream {
            self.cb.upstream_data.clone()
        } else {
            self.cb.downstream_data.clone()
        };
        match f {
            Some(f) => self
                .call(&f, (ctx as i32, size as i32, eos as i32), ctx)
                .map(Action::from_i32),
            None => Ok(Action::Continue),
        }
    }

    /// `on_downstream_connection_close` / `on_upstream_connection_close`.
    pub fn on_close(&mut self, upstream: bool, ctx: u32, peer: i32) -> Result<(), Fault> {
        let f = if upstream {
            self.cb.upstream_close.clone()
        } else {
            self.cb.downstream_close.clone()
        };
        match f {
            Some(f) => self.call(&f, (ctx as i32, peer), ctx),
            None => Ok(()),
        }
    }

    /// Delivers an `http_call` answer (or failure: `None`) to the root context.
    pub fn deliver_callout(&mut self, token: u32, resp: Option<super::state::CalloutResponse>) {
        if self.poisoned.is_some() {
            return;
        }
        let st = self.store.data_mut();
        let Some(owner) = st.callouts.remove(&token) else {
            return;
        };
        if owner != st.root && !st.streams.contains_key(&owner) {
            return;
        }
        let (nh, nb, nt) = resp
            .as_ref()
            .map_or((0, 0, 0), |r| (r.headers.len(), r.body.len(), r.trailers.len()));
        if resp.is_none() {
            st.plugin.stats.callout_failures.fetch_add(1, Relaxed);
            st.last_status = (super::abi::status::INTERNAL_FAILURE as u32, b"callout failed".to_vec());
        } else {
            st.last_status = (0, Vec::new());
        }
        st.callout = resp;
        let root = st.root;
        if let Some(f) = self.cb.http_call_response.clone() {
            let _ = self.call(&f, (root as i32, token as i32, nh as i32, nb as i32, nt as i32), root);
        }
        self.store.data_mut().callout = None;
    }

    /// Hands one event of gRPC call `token` to the guest (on the root context, as Envoy
    /// does; the SDK finds the context that opened it). False when nobody listens any
    /// more (cancelled, its stream gone, the instance failed): the call's task stops.
    pub fn deliver_grpc(&mut self, token: u32, ev: super::state::Event) -> bool {
        use super::state::{Delivery, Event};
        if self.poisoned.is_some() {
            return false;
        }
        let st = self.store.data_mut();
        let Some(owner) = st.grpc.get(&token).map(|c| c.owner) else {
            return false;
        };
        if owner != st.root && !st.streams.contains_key(&owner) {
            if let Some(c) = st.grpc.remove(&token) {
                c.task.abort();
            }
            return false;
        }
        let root = st.root;
        let (f, arg) = match ev {
            Event::InitialMetadata(m) => {
                let n = m.len();
                st.grpc_now = Some(Delivery {
                    initial: m,
                    ..Default::default()
                });
                (self.cb.grpc_initial.clone(), n)
            }
            Event::Message(m) => {
                let n = m.len();
                st.grpc_now = Some(Delivery {
                    message: m,
                    ..Default::default()
                });
                // A unary call ends with its message.
                if st.grpc.get(&token).is_some_and(|c| c.unary) {
                    st.grpc.remove(&token);
                }
                (self.cb.grpc_receive.clone(), n)
            }
            Event::TrailingMetadata(m) => {
                let n = m.len();
                st.grpc_now = Some(Delivery {
                    trailing: m,
                    ..Default::default()
                });
                (self.cb.grpc_trailing.clone(), n)
            }
            Event::Close(code, message) => {
                st.grpc.remove(&token);
                if code != super::grpc::code::OK {
                    st.plugin.stats.grpc_failures.fetch_add(1, Relaxed);
                }
                st.last_status = (code, message.into_bytes());
                st.grpc_now = None;
                (self.cb.grpc_close.clone(), code as usize)
            }
        };
        let ok = match f {
            Some(f) => self.call(&f, (root as i32, token as i32, arg as i32), root).is_ok(),
            None => true,
        };
        self.store.data_mut().grpc_now = None;
        ok && self.store.data().grpc.contains_key(&token)
    }

    /// Runs `on_tick` on the root context.
    fn tick(&mut self) {
        let root = self.store.data().root;
        if let Some(f) = self.cb.tick.clone() {
            let _ = self.call(&f, root as i32, root);
        }
    }

    /// Runs `on_queue_ready` for queue `id`.
    pub fn queue_ready(&mut self, id: u32) {
        let root = self.store.data().root;
        if let Some(f) = self.cb.queue_ready.clone() {
            let _ = self.call(&f, (root as i32, id as i32), root);
        }
    }

    /// Calls the guest's `proxy_on_foreign_function` with `args` in buffer 8.
    pub fn foreign(&mut self, function_id: u32, args: Vec<u8>) -> Result<(), Fault> {
        let root = self.store.data().root;
        let n = args.len();
        self.store.data_mut().call_data = args;
        let r = match self.cb.foreign.clone() {
            Some(f) => self.call(&f, (root as i32, function_id as i32, n as i32), root),
            None => Ok(()),
        };
        self.store.data_mut().call_data.clear();
        r
    }

    /// Starts (or restarts) the tick task after the guest changed its period. Ticks
    /// run only in workers (not in the validation trial).
    fn start_ticker(&mut self) {
        let st = self.store.data_mut();
        st.tick.1 = false;
        let ms = st.tick.0;
        if ms == 0 || st.worker.upgrade().is_none() || self.me.upgrade().is_none() {
            return;
        }
        let me = self.me.clone();
        tokio::task::spawn_local(async move {
            let period = Duration::from_millis(u64::from(ms));
            let mut next = tokio::time::Instant::now() + period;
            loop {
                tokio::time::sleep_until(next).await;
                next += period;
                let Some(inst) = me.upgrade() else { return };
                let Ok(mut i) = inst.try_borrow_mut() else { continue };
                if i.poisoned.is_some() || i.retired || i.store.data().tick.0 != ms || i.store.data().tick.1 {
                    return;
                }
                i.tick();
                if tokio::time::Instant::now() > next + period {
                    next = tokio::time::Instant::now() + period;
                }
            }
        });
    }

    /// Starts `on_queue_ready` watchers for newly registered queues (in workers only).
    fn start_queue_watchers(&mut self) {
        let st = self.store.data_mut();
        if st.worker.upgrade().is_none() || self.me.upgrade().is_none() {
            return;
        }
        for (id, notify) in std::mem::take(&mut st.new_queues) {
            Self::watch_queue(self.me.clone(), id, notify);
        }
    }

    /// Watches queue `id` and runs `on_queue_ready` on enqueue.
    fn watch_queue(me: Weak<RefCell<Instance>>, id: u32, notify: Arc<tokio::sync::Notify>) {
        tokio::task::spawn_local(async move {
            loop {
                notify.notified().await;
                let Some(inst) = me.upgrade() else { return };
                let Ok(mut i) = inst.try_borrow_mut() else { continue };
                if i.poisoned.is_some() || i.retired {
                    return;
                }
                i.queue_ready(id);
            }
        });
    }
}

impl super::state::Inbox for Instance {
    fn deliver_callout(&mut self, token: u32, resp: Option<super::state::CalloutResponse>) {
        Instance::deliver_callout(self, token, resp)
    }

    fn deliver_grpc(&mut self, token: u32, ev: super::state::Event) -> bool {
        Instance::deliver_grpc(self, token, ev)
    }
}

/// Turns a wasmtime error into a fault.
fn classify(e: wasmtime::Error, memory_refused: bool) -> Fault {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        if *t == wasmtime::Trap::Interrupt {
            return Fault::Deadline;
        }
    }
    if memory_refused {
        return Fault::Memory;
    }
    let msg = format!("{e:#}");
    Fault::Trap(msg.lines().next().unwrap_or("trap").chars().take(300).collect())
}

/// Instances of one worker, by plugin uid; replaced when poisoned, retired on reload.
pub struct WorkerInstances {
    map: HashMap<u64, Rc<RefCell<Instance>>, IdHash>,
    /// Last failed creation per plugin uid (restarts are rate limited).
    failed: HashMap<u64, Instant, IdHash>,
    /// What the node's filters share.
    host: Arc<super::HostShared>,
}

/// Finished streams' boxes kept per instance for reuse (more are freed).
const SPARE_STREAMS: usize = 64;

/// How long after a failed start an instance is not tried again.
const RESTART_BACKOFF: Duration = Duration::from_millis(250);

impl WorkerInstances {
    /// No instance yet; those created share `host` with the node's other workers.
    pub fn new(host: Arc<super::HostShared>) -> WorkerInstances {
        WorkerInstances {
            map: HashMap::default(),
            failed: HashMap::default(),
            host,
        }
    }

    /// The live instance of `plugin`, creating it if needed.
    pub fn get(&mut self, plugin: &Arc<Plugin>, worker: Weak<dyn WorkerLink>) -> Result<Rc<RefCell<Instance>>, Fault> {
        if let Some(i) = self.map.get(&plugin.uid) {
            if i.try_borrow().map(|b| b.poisoned.is_none()).unwrap_or(true) {
                return Ok(i.clone());
            }
            self.map.remove(&plugin.uid);
        }
        if let Some(t) = self.failed.get(&plugin.uid) {
            if t.elapsed() < RESTART_BACKOFF {
                return Err(Fault::Unavailable("restarting".into()));
            }
        }
        match Instance::create(plugin, worker, self.host.clone()) {
            Ok(i) => {
                self.failed.remove(&plugin.uid);
                self.map.insert(plugin.uid, i.clone());
                Ok(i)
            }
            Err(e) => {
                self.failed.insert(plugin.uid, Instant::now());
                Err(e)
            }
        }
    }

    /// Keeps only the instances of `live` plugins (others finish their streams and go).
    pub fn retain(&mut self, live: &[Arc<Plugin>]) {
        self.map.retain(|uid, inst| {
            let keep = live.iter().any(|p| p.uid == *uid);
            if !keep {
                if let Ok(mut i) = inst.try_borrow_mut() {
                    i.retired = true;
                }
            }
            keep
        });
        self.failed.retain(|uid, _| live.iter().any(|p| p.uid == *uid));
    }
}

impl std::fmt::Debug for WorkerInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerInstances")
            .field("instances", &self.map.len())
            .finish()
    }
}
