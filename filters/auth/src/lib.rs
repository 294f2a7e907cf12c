//! Authentication: API keys or HS256 JWTs. A request without valid credentials gets
//! 401 (with `WWW-Authenticate`) before it reaches an upstream; a valid JWT's subject
//! is passed upstream in a header.
//!
//! ```json
//! { "mode": "api_key", "header": "x-api-key", "keys": ["k1", "k2"] }
//! { "mode": "jwt", "secret": "…", "issuer": "https://id.example", "audience": "api",
//!   "leeway_s": 30, "subject_header": "x-auth-subject" }
//! ```

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;
use sha2::Sha256;

#[derive(Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum Config {
    ApiKey {
        #[serde(default = "default_key_header")]
        header: String,
        keys: Vec<String>,
    },
    Jwt {
        secret: String,
        issuer: Option<String>,
        audience: Option<String>,
        #[serde(default = "default_leeway")]
        leeway_s: u64,
        #[serde(default = "default_subject_header")]
        subject_header: String,
    },
}

fn default_key_header() -> String {
    "x-api-key".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_subject_header() -> String {
    "x-auth-subject".into()
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| tandem_sdk::JsonRoot::<Config>::boxed());
}}

impl tandem_sdk::JsonFilter for Config {
    fn check(&self) -> Result<(), &'static str> {
        match self {
            Config::ApiKey { keys, .. } if keys.is_empty() => Err("api_key mode needs at least one key"),
            _ => Ok(()),
        }
    }

    fn http_context(config: Rc<Config>, _: u32) -> Box<dyn HttpContext> {
        Box::new(Auth { config })
    }
}

struct Auth {
    config: Rc<Config>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iss: Option<String>,
    aud: Option<serde_json::Value>,
}

/// Constant-time comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies an HS256 token; returns its subject (or "" when it has none).
fn verify(
    token: &str,
    secret: &[u8],
    iss: Option<&str>,
    aud: Option<&str>,
    leeway: u64,
    now: u64,
) -> Result<String, &'static str> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("malformed token");
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(h).map_err(|_| "bad header")?).map_err(|_| "bad header")?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err("unsupported alg");
    }
    let sig = b64.decode(s).map_err(|_| "bad signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    if !same(&mac.finalize().into_bytes(), &sig) {
        return Err("bad signature");
    }
    let claims: Claims =
        serde_json::from_slice(&b64.decode(p).map_err(|_| "bad payload")?).map_err(|_| "bad payload")?;
    if claims.exp.is_some_and(|e| now > e + leeway) {
        return Err("expired");
    }
    if claims.nbf.is_some_and(|n| now + leeway < n) {
        return Err("not yet valid");
    }
    if let Some(want) = iss {
        if claims.iss.as_deref() != Some(want) {
            return Err("wrong issuer");
        }
    }
    if let Some(want) = aud {
        let ok = match &claims.aud {
            Some(serde_json::Value::String(a)) => a == want,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err("wrong audience");
        }
    }
    Ok(claims.sub.unwrap_or_default())
}

impl Auth {
    fn deny(&self, scheme: &str, why: &str) -> Action {
        let challenge = format!("{scheme} error=\"invalid_token\", error_description=\"{why}\"");
        self.send_http_response(
            401,
            vec![("www-authenticate", challenge.as_str()), ("content-type", "text/plain")],
            Some(format!("unauthorized: {why}\n").as_bytes()),
        );
        Action::Pause
    }
}

impl Context for Auth {}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let config = self.config.clone();
        match &*config {
            Config::ApiKey { header, keys } => match self.get_http_request_header_bytes(header) {
                Some(k) if keys.iter().any(|want| same(want.as_bytes(), &k)) => {
                    self.set_http_request_header(header, None);
                    Action::Continue
                }
                Some(_) => self.deny("ApiKey", "unknown key"),
                None => self.deny("ApiKey", "missing key"),
            },
            Config::Jwt {
                secret,
                issuer,
                audience,
                leeway_s,
                subject_header,
            } => {
                let Some(auth) = self.get_http_request_header("authorization") else {
                    return self.deny("Bearer", "missing token");
                };
                let Some(token) = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")) else {
                    return self.deny("Bearer", "not a bearer token");
                };
                let now = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                match verify(
                    token.trim(),
                    secret.as_bytes(),
                    issuer.as_deref(),
                    audience.as_deref(),
                    *leeway_s,
                    now,
                ) {
                    Ok(sub) => {
                        self.set_http_request_header(subject_header, Some(&sub));
                        Action::Continue
                    }
                    Err(why) => self.deny("Bearer", why),
                }
            }
        }
    }
}
