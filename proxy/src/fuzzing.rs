//! Entry points for the fuzzers: every hand-written parser that reads bytes from the
//! network, a peer or a file, as one function of arbitrary bytes. The libFuzzer targets
//! in `fuzz/` call them (the long runs, see `fuzz/README.md`), and the test suite runs
//! each over its seed corpus and a few thousand mutations (the smoke run).
//!
//! Each function must never panic, whatever the bytes; where the parser has an
//! encoder, what it decoded must encode and decode back to the same value; lengths it
//! reports consumed must lie within the input.

use bytes::BytesMut;

/// A fuzz target: a name (as `fuzz/fuzz_targets/` and `fuzz/corpus/` name it) and its
/// entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The targets by name.
pub const TARGETS: [Target; 7] = [
    ("upstream_response", upstream_response),
    ("proxy_protocol", proxy_protocol),
    ("client_hello", client_hello),
    ("vrrp", vrrp),
    ("peer_frame", peer_frame),
    ("config", config),
    ("filter_callout", filter_callout),
];

/// An upstream HTTP/1.1 response arriving in pieces: the head parser, then the body
/// decoder for the framing the head chose. The first input byte picks whether the
/// request was HEAD and where the bytes are split into arrivals.
pub fn upstream_response(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let head_request = ctl & 1 == 1;
    let step = usize::from(ctl >> 1).max(1);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| -> bool {
        if fed >= rest.len() {
            return false;
        }
        let n = step.min(rest.len() - fed);
        buf.extend_from_slice(&rest[fed..fed + n]);
        fed += n;
        true
    };
    let head = loop {
        match crate::upstream::h1::parse_head_for_fuzzing(&mut buf, head_request) {
            Ok(Some(h)) => break h,
            Ok(None) => {
                if !feed(&mut buf) {
                    return;
                }
            }
            Err(_) => return,
        }
    };
    let mut framing = head;
    let mut body = 0usize;
    loop {
        let before = buf.len();
        match crate::upstream::h1::decode_body(&mut framing, &mut buf) {
            Ok(crate::upstream::h1::Step::Data(d)) => {
                assert!(!d.is_empty() && d.len() <= before, "data within what was buffered");
                body += d.len();
                assert!(body <= rest.len());
            }
            Ok(crate::upstream::h1::Step::More) => {
                if !feed(&mut buf) {
                    return;
                }
            }
            Ok(crate::upstream::h1::Step::Trailers(_) | crate::upstream::h1::Step::End) | Err(_) => return,
        }
    }
}

/// A PROXY protocol v1 or v2 header; what it names re-encodes (both versions) to a
/// header that parses to the same addresses.
pub fn proxy_protocol(data: &[u8]) {
    use crate::proxy_protocol::{encode_v1, encode_v2, parse};
    if let Ok(Some((len, addrs))) = parse(data) {
        assert!(len <= data.len(), "a header ends inside the input");
        if let Some((src, dst)) = addrs {
            if src.is_ipv4() == dst.is_ipv4() {
                for enc in [encode_v1(src, dst), encode_v2(src, dst)] {
                    let again = parse(&enc).expect("own header parses").expect("own header is whole");
                    assert_eq!(again, (enc.len(), Some((src, dst))));
                }
            }
        }
    }
}

/// A TLS ClientHello read for its server name and for an offered session, whole and
/// cut short. A hello that offers a session is a whole one.
pub fn client_hello(data: &[u8]) {
    let whole = crate::tls::client_hello::parse_client_hello(data);
    if crate::tls::client_hello::offers_session(data) {
        assert!(!matches!(whole, Ok(None)), "a session offered in an incomplete hello");
    }
    if let Ok(Some(crate::tls::client_hello::Hello::Sni(name))) = &whole {
        assert!(
            !name.is_empty() && name.bytes().all(|c| c.is_ascii_graphic()),
            "{name:?}"
        );
    }
    if !data.is_empty() {
        let _ = crate::tls::client_hello::parse_client_hello(&data[..data.len() / 2]);
        let _ = crate::tls::client_hello::offers_session(&data[..data.len() / 2]);
    }
}

/// A VRRP advert as the raw sockets deliver it: a whole IPv4 packet, and an IPv6
/// payload (addresses and hop limit from the first input bytes). A decoded advert
/// encodes back to bytes that decode to it.
pub fn vrrp(data: &[u8]) {
    use std::net::{IpAddr, Ipv6Addr};
    use tandem_ha::vip::packet::Advert;
    if let Ok((src, dst, a)) = Advert::decode_ip_as(data, tandem_ha::vip::packet::Version::V2) {
        let m = a.encode_as(tandem_ha::vip::packet::Version::V2, src, dst);
        // The interval is carried in whole seconds: a v2 advert round-trips.
        assert_eq!(Advert::decode_v2(&m), Ok(a));
    }
    if let Ok((src, _, a)) = Advert::decode_ip(data) {
        let dst = std::net::Ipv4Addr::new(data[16], data[17], data[18], data[19]);
        if a.addrs.iter().all(IpAddr::is_ipv4) {
            let m = a.encode(src, dst);
            assert_eq!(Advert::decode(&m, src, dst), Ok(a));
        }
    }
    if data.len() >= 33 {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&data[..16]).expect("16 bytes"));
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&data[16..32]).expect("16 bytes"));
        if let Ok(a) = Advert::decode_v6(&data[33..], src, dst, data[32]) {
            if a.addrs.iter().all(IpAddr::is_ipv6) {
                let m = a.encode(src, dst);
                assert_eq!(Advert::decode_v6(&m, src, dst, 255), Ok(a));
            }
        }
    }
}

/// What crosses between members and onto their disks: a framed request or reply as the
/// peer listener and clients read them, and a log entry as the log store reads it.
pub fn peer_frame(data: &[u8]) {
    use tandem_ha::protocol::{Reply, Request};
    use tandem_ha::wire::{decode, split_frame};
    if let Ok(Some((_, used))) = split_frame::<Request>(data) {
        assert!(used <= data.len());
    }
    if let Ok(Some((_, used))) = split_frame::<Reply>(data) {
        assert!(used <= data.len());
    }
    let _ = decode::<tandem_ha::openraft::Entry<tandem_ha::TypeConfig>>(data);
    let _ = decode::<tandem_ha::Tables>(data);
}

/// A configuration file: TOML parsing, typed deserialisation and every semantic check.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::load_str("fuzz.toml", text);
    }
}

/// What filters' callouts read from outside: gRPC messages framed in a response body
/// arriving in pieces (the first byte picks the piece size), Envoy's
/// `SetEnvoyFilterStateArguments` protobuf, and the records of Tandem's extensions a
/// filter sends or reads (`tandem-abi`: health reports, endpoint lines, pinned upstream
/// names). Framed messages frame back to the input; decoded records encode and decode
/// back to the same value.
pub fn filter_callout(data: &[u8]) {
    let _ = crate::wasm::extensions::filter_state_args(data);
    if let Ok(text) = std::str::from_utf8(data) {
        abi_records(text);
    }
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut buf = bytes::BytesMut::new();
    let mut seen = Vec::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        match crate::wasm::grpc::unframe(&mut buf) {
            Ok(messages) => seen.extend(messages),
            Err(_) => return,
        }
    }
    let framed: Vec<u8> = seen.iter().flat_map(|m| crate::wasm::grpc::frame(m).to_vec()).collect();
    assert_eq!(&framed[..], &rest[..rest.len() - buf.len()]);
}

/// The extension records of [`filter_callout`].
fn abi_records(text: &str) {
    use tandem_abi::{parse_endpoints, write_endpoint, HealthReport};
    if let Some(r) = HealthReport::decode(text) {
        assert_eq!(HealthReport::decode(&r.encode()), Some(r));
    }
    for e in parse_endpoints(text) {
        let mut line = String::new();
        write_endpoint(&mut line, &e.address, e.state, e.weight, e.active, e.ewma_us);
        assert_eq!(parse_endpoints(&line), [e]);
    }
    let (cluster, pinned) = tandem_abi::split_upstream(text);
    if let Some(address) = pinned {
        assert_eq!(
            tandem_abi::split_upstream(&tandem_abi::endpoint_upstream(cluster, address)),
            (cluster, pinned)
        );
    }
}
