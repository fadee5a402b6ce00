//! Which instance of a `balance = "hash"` pool a client goes to: the one its key (its
//! address, a token claim, a header or a query parameter) ranks first, so that one user,
//! room or device keeps landing on the same instance while the pool stays as it is.
//!
//! Instances are ranked by rendezvous hashing (highest random weight): each instance's
//! score for a key is a hash of the key's hash and the instance's URL. When an instance
//! joins or leaves, only the keys it ranks first move; when it is ejected or full, its
//! keys go to their second choice, and come back when it does. The hash is XXH3, fixed by
//! its specification, so every gateway process (and every release) ranks alike.

use std::net::SocketAddr;

use hyper::header::HeaderName;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// What a `balance = "hash"` pool hashes (`hash_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `"ip"`: the client's address (the PROXY protocol's, with `[server] proxy_protocol`).
    Ip,
    /// `"claim:NAME"`: a claim of the verified token (a string or a number).
    Claim(String),
    /// `"header:NAME"`: a request header (its first line).
    Header(HeaderName),
    /// `"query:NAME"`: a query parameter of the request target (its first non-empty value).
    Query(String),
}

/// The forms `hash_key` takes, for messages.
pub const FORMS: &str = "\"ip\", \"claim:NAME\", \"header:NAME\" or \"query:NAME\"";

impl HashKey {
    /// Parses a `hash_key` value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?}: expected {FORMS}");
        if text == "ip" {
            return Ok(Self::Ip);
        }
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        match kind {
            "claim" => Ok(Self::Claim(name.to_owned())),
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("{text:?}: {name:?} is not a header name")),
            "query" => Ok(Self::Query(name.to_owned())),
            _ => Err(bad()),
        }
    }

    /// The config spelling.
    pub fn describe(&self) -> String {
        match self {
            Self::Ip => "ip".into(),
            Self::Claim(name) => format!("claim:{name}"),
            Self::Header(name) => format!("header:{name}"),
            Self::Query(name) => format!("query:{name}"),
        }
    }

    /// The hash of this request's key; `None` when the request has none (no such header,
    /// parameter or claim, or a claim that is not a string or a number): the pool then
    /// takes its instances in turn, as HAProxy's `balance hdr()` does.
    pub fn of(
        &self,
        req: &hyper::Request<impl Sized>,
        peer: SocketAddr,
        claims: &Map<String, Value>,
    ) -> Option<u64> {
        match self {
            Self::Ip => Some(match peer.ip().to_canonical() {
                std::net::IpAddr::V4(ip) => xxh3_64(&ip.octets()),
                std::net::IpAddr::V6(ip) => xxh3_64(&ip.octets()),
            }),
            Self::Claim(name) => {
                crate::auth::claim_name(claims, name).map(|value| xxh3_64(value.as_bytes()))
            }
            Self::Header(name) => Some(xxh3_64(req.headers().get(name)?.as_bytes())),
            Self::Query(name) => {
                let value = crate::credentials::query_param(req.uri().query()?, name)?;
                Some(xxh3_64(value.as_bytes()))
            }
        }
    }
}

/// An instance's rank for the key hashed to `key`: the highest goes first.
pub fn score(key: u64, instance_url: &str) -> u64 {
    xxh3_64_with_seed(instance_url.as_bytes(), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse_and_read_back() {
        for text in ["ip", "claim:sub", "header:x-room", "query:room"] {
            assert_eq!(
                HashKey::parse(text).map(|k| k.describe()),
                Ok(text.to_owned())
            );
        }
        for bad in [
            "",
            "IP",
            "sub",
            "claim:",
            "cookie:a",
            "header:bad name",
            "header:a\u{1}",
        ] {
            assert!(HashKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn request(uri: &str, header: Option<&str>) -> hyper::Request<()> {
        let mut req = hyper::Request::builder().uri(uri);
        if let Some(v) = header {
            req = req.header("x-room", v);
        }
        req.body(()).unwrap_or_default()
    }

    #[test]
    fn each_key_is_read_from_its_place_and_absent_ones_are_none() {
        let peer: SocketAddr = ([10, 0, 0, 7], 5000).into();
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:6000".parse().unwrap_or(peer);
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{ "sub": "alice", "uid": 42, "scp": ["a"] }"#)
                .unwrap_or_default();
        let req = request("/gateway?room=blue&x=1", Some("blue"));
        let key = |text: &str, req: &hyper::Request<()>, peer| {
            HashKey::parse(text)
                .ok()
                .and_then(|k| k.of(req, peer, &claims))
        };
        // The same address from another port, or mapped into IPv6, is the same client.
        assert_eq!(key("ip", &req, peer), key("ip", &req, mapped));
        assert!(key("ip", &req, peer).is_some());
        assert_eq!(key("claim:sub", &req, peer), Some(xxh3_64(b"alice")));
        assert_eq!(key("claim:uid", &req, peer), Some(xxh3_64(b"42")));
        assert_eq!(key("claim:scp", &req, peer), None);
        assert_eq!(key("claim:none", &req, peer), None);
        // A header and a query parameter of the same value are the same key.
        assert_eq!(key("header:x-room", &req, peer), Some(xxh3_64(b"blue")));
        assert_eq!(key("query:room", &req, peer), Some(xxh3_64(b"blue")));
        let bare = request("/gateway", None);
        assert_eq!(key("header:x-room", &bare, peer), None);
        assert_eq!(key("query:room", &bare, peer), None);
    }

    #[test]
    fn an_instance_leaving_moves_only_the_keys_it_ranked_first() {
        let urls: Vec<String> = (0..5).map(|i| format!("ws://10.0.0.{i}:8081/ws")).collect();
        let first = |key: u64, urls: &[String]| -> String {
            urls.iter()
                .max_by_key(|u| score(key, u))
                .cloned()
                .unwrap_or_default()
        };
        let keys: Vec<u64> = (0..5000u32).map(|k| xxh3_64(&k.to_le_bytes())).collect();
        let before: Vec<String> = keys.iter().map(|&k| first(k, &urls)).collect();
        // Spread: each of 5 instances ranks about a fifth of the keys first.
        for u in &urls {
            let n = before.iter().filter(|b| *b == u).count();
            assert!((800..1200).contains(&n), "{u}: {n} of 5000");
        }
        let without: Vec<String> = urls[1..].to_vec();
        for (k, was) in keys.iter().zip(&before) {
            let now = first(*k, &without);
            if *was != urls[0] {
                assert_eq!(&now, was, "a key of a remaining instance moved");
            }
        }
    }
}
