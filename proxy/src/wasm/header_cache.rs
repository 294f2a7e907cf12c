//! Header names and values an instance writes, kept per instance so a header a guest
//! sets on every request is parsed and allocated once.

use http::header::{HeaderName, HeaderValue};

/// Header names and values an instance wrote recently, parsed once. Filters write the
/// same few names (and often the same values) on every request; parsing one validates
/// it and allocates, while a cached one is a reference-count increment.
#[derive(Debug, Default)]
pub struct HeaderCache {
    names: Vec<HeaderName>,
    values: Vec<HeaderValue>,
    /// The value slot to replace next once `values` is full.
    next_value: usize,
}

impl HeaderCache {
    /// Names kept (a linear scan: filters write a handful; the first ones stay).
    const NAMES: usize = 32;
    /// Values kept, replaced in turn (values may vary per request).
    const VALUES: usize = 16;
    /// Longer values are not cached.
    const VALUE_BYTES: usize = 128;

    /// `raw` as a header name (`None` when it is not a valid one).
    pub fn name(&mut self, raw: &[u8]) -> Option<HeaderName> {
        if let Some(n) = self.names.iter().find(|n| n.as_str().as_bytes() == raw) {
            return Some(n.clone());
        }
        let n = HeaderName::from_bytes(raw).ok()?;
        // Names given in another case are not cached under a key they do not match.
        if self.names.len() < Self::NAMES && n.as_str().as_bytes() == raw {
            self.names.push(n.clone());
        }
        Some(n)
    }

    /// `raw` as a header value (`None` when it is not a valid one).
    pub fn value(&mut self, raw: &[u8]) -> Option<HeaderValue> {
        if let Some(v) = self.values.iter().find(|v| v.as_bytes() == raw) {
            return Some(v.clone());
        }
        let v = HeaderValue::from_bytes(raw).ok()?;
        if raw.len() <= Self::VALUE_BYTES {
            if self.values.len() < Self::VALUES {
                self.values.push(v.clone());
            } else {
                self.values[self.next_value] = v.clone();
                self.next_value = (self.next_value + 1) % Self::VALUES;
            }
        }
        Some(v)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn cache_returns_equal_names_and_values_and_rejects_invalid_ones() {
        let mut c = HeaderCache::default();
        assert_eq!(c.name(b"x-env").unwrap(), "x-env");
        assert_eq!(c.name(b"x-env").unwrap(), "x-env");
        // Another case is normalised, not served from the lower-case entry's key.
        assert_eq!(c.name(b"X-Env").unwrap(), "x-env");
        assert!(c.name(b"bad name").is_none());
        assert_eq!(c.value(b"DENY").unwrap(), "DENY");
        assert_eq!(c.value(b"DENY").unwrap(), "DENY");
        assert!(c.value(b"bad\nvalue").is_none());
        // More distinct values than slots: each is still returned right.
        for i in 0..100 {
            let v = format!("v{i}");
            assert_eq!(c.value(v.as_bytes()).unwrap(), v.as_str());
            assert_eq!(c.value(v.as_bytes()).unwrap(), v.as_str());
        }
        assert!(c.values.len() <= HeaderCache::VALUES);
    }
}
