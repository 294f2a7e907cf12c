//! Tandem's extensions to proxy-wasm, as safe functions over the official `proxy-wasm`
//! crate. Everything here is a documented property or foreign function of the standard
//! ABI, so a filter that uses it still loads in any proxy-wasm host (the calls then
//! return `NotFound`).
//!
//! - [`route_to_cluster`] / [`route_to_endpoint`]: choose where the current request goes;
//! - [`cluster_endpoints`]: a cluster's endpoints with live health and load;
//! - [`report_health`]: a health verdict, applied like a built-in active check;
//! - [`cluster_key`]: a shared-data key that is replicated to the pair.
//!
//! The names and records on the wire come from `tandem-abi`, the crate the host
//! decodes them with.
//!
//! ```ignore
//! use proxy_wasm::traits::{Context, HttpContext};
//! use proxy_wasm::types::Action;
//!
//! struct Pin;
//! impl Context for Pin {}
//! impl HttpContext for Pin {
//!     fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
//!         if self.get_http_request_header("x-beta").is_some() {
//!             tandem_sdk::route_to_cluster("beta").ok();
//!         }
//!         Action::Continue
//!     }
//! }
//! ```

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, Status};
use tandem_abi::{foreign, property, HealthReport};

pub use tandem_abi::property::{UPSTREAM_CLUSTER, UPSTREAM_ENDPOINT};
pub use tandem_abi::{endpoint_upstream, parse_endpoints, Endpoint, EndpointState as State};

/// Sends the current request to cluster `name` instead of the route's choice. Call it
/// from `on_http_request_headers` (or before resuming a request paused there).
pub fn route_to_cluster(name: &str) -> Result<(), Status> {
    hostcalls::set_property(vec![UPSTREAM_CLUSTER], Some(name.as_bytes()))
}

/// Sends the current request to endpoint `address` (`ip:port`) of its cluster for the
/// first attempt; retries use the balancer.
pub fn route_to_endpoint(address: &str) -> Result<(), Status> {
    hostcalls::set_property(vec![UPSTREAM_ENDPOINT], Some(address.as_bytes()))
}

/// The endpoints of cluster `name`, in configuration order.
pub fn cluster_endpoints(name: &str) -> Result<Vec<Endpoint>, Status> {
    let out = hostcalls::call_foreign_function(foreign::CLUSTER_ENDPOINTS, Some(name.as_bytes()))?;
    Ok(parse_endpoints(&String::from_utf8_lossy(&out.unwrap_or_default())))
}

/// The names of every cluster.
pub fn clusters() -> Result<Vec<String>, Status> {
    let out = hostcalls::call_foreign_function(foreign::CLUSTERS, None)?;
    Ok(
        tandem_abi::parse_clusters(&String::from_utf8_lossy(&out.unwrap_or_default()))
            .map(str::to_string)
            .collect(),
    )
}

/// Reports endpoint `address` of `cluster` healthy or unhealthy. The verdict goes
/// through the same module as Tandem's active checks (logged, counted, shared with
/// the pair).
pub fn report_health(cluster: &str, address: &str, healthy: bool) -> Result<(), Status> {
    let args = HealthReport {
        cluster,
        address,
        healthy,
    }
    .encode();
    hostcalls::call_foreign_function(foreign::REPORT_HEALTH, Some(args.as_bytes())).map(|_| ())
}

/// A shared-data key under the filter's `shared_prefix`: Tandem replicates such keys
/// to the other node of the pair (eventually; CAS holds per node).
pub fn cluster_key(prefix: &str, key: &str) -> String {
    format!("{prefix}{key}")
}

/// Reads a plugin configuration (from `get_plugin_configuration()`) as JSON into `T`
/// (an empty one reads as `{}`, so all-default configurations may be left out) and
/// checks it with `check`. On failure the reason is logged at error level and `None`
/// returned: return `false` from `on_configure` and Tandem refuses the configuration.
pub fn json_config<T: serde::de::DeserializeOwned>(
    bytes: Option<Vec<u8>>,
    check: impl Fn(&T) -> Result<(), &'static str>,
) -> Option<T> {
    let bytes = bytes.filter(|b| !b.is_empty()).unwrap_or_else(|| b"{}".to_vec());
    let why = match serde_json::from_slice::<T>(&bytes) {
        Ok(c) => match check(&c) {
            Ok(()) => return Some(c),
            Err(why) => why.to_string(),
        },
        Err(e) => format!("bad configuration: {e}"),
    };
    let _ = hostcalls::log(proxy_wasm::types::LogLevel::Error, &why);
    None
}

/// An HTTP filter configured by JSON: what is particular to it (its configuration's
/// type, its check, its per-request context), while [`JsonRoot`] does the rest of the
/// root context every such filter needs (read and check the configuration, refuse a
/// bad one, hand each request its share of it).
pub trait JsonFilter: serde::de::DeserializeOwned + 'static {
    /// Checks a decoded configuration; the reason is logged and the configuration refused.
    fn check(&self) -> Result<(), &'static str> {
        Ok(())
    }

    /// The context for one request.
    fn http_context(config: Rc<Self>, context_id: u32) -> Box<dyn HttpContext>;
}

/// The root context of a [`JsonFilter`]:
/// `proxy_wasm::set_root_context(|_| JsonRoot::<Config>::boxed())`.
pub struct JsonRoot<C: JsonFilter> {
    config: Option<Rc<C>>,
}

impl<C: JsonFilter> JsonRoot<C> {
    /// A root context that is not configured yet.
    pub fn boxed() -> Box<dyn RootContext> {
        Box::new(JsonRoot::<C> { config: None })
    }
}

impl<C: JsonFilter> Context for JsonRoot<C> {}

impl<C: JsonFilter> RootContext for JsonRoot<C> {
    fn on_configure(&mut self, _: usize) -> bool {
        self.config = json_config(self.get_plugin_configuration(), C::check).map(Rc::new);
        self.config.is_some()
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(C::http_context(self.config.clone()?, context_id))
    }
}

/// This worker's number (filters that should act once per node use worker 0).
pub fn worker_id() -> Option<u64> {
    let v = hostcalls::get_property(vec![property::WORKER_ID]).ok()??;
    Some(u64::from_le_bytes(v.get(..8)?.try_into().ok()?))
}
