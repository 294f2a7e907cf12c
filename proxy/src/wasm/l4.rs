//! Network (TCP) filter contexts; see `l4.rs`.
