//! The L7 request path.

pub mod body;
pub mod headers;
pub mod upgrade;
