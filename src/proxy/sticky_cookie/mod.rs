//! The signed sticky cookie (`sticky_cookie = { … }` on an upstream): a client that carries a
//! valid cookie goes back to the backend it names while that backend is up and not draining;
//! every other request is balanced as usual, and its response carries a cookie naming the
//! backend that actually answered (after a spill or a failed connect too).
//!
//! Cookies are read per RFC 6265 §5.4 (`a=1; b=2`, from every `Cookie` field, as HTTP/2 may
//! split them, RFC 9113 §8.2.3) and set per §4.1 (`Path=/; Max-Age; HttpOnly; SameSite=Lax`,
//! `Secure` on TLS listeners). Like HAProxy's `cookie … insert indirect`, the proxy's cookie is
//! removed from the request before it reaches the backend: it is the proxy's business, the
//! application never needs it, and a backend that logs cookies does not log routes. The token
//! itself is in [`token`]. Replicas with the same secret and servers mint and honour the same
//! tokens, with nothing shared between them at run time.

pub mod token;

use http::Response;
use http::header::{self, HeaderMap, HeaderValue};
use prometheus::IntCounter;
use ring::hmac;

use super::ConnInfo;
use crate::balancer::Balancer;
use crate::config::Upstream;
use crate::metrics::Metrics;
use token::BackendId;

/// How a request's cookie was judged: the `outcome` label of `switchboard_sticky_cookie_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A valid token named a backend that takes connections: the request goes there.
    Valid = 0,
    /// No cookie of this name.
    Missing = 1,
    /// A cookie of this name whose token is malformed or wrongly signed (tampered, or signed
    /// with another secret).
    Invalid = 2,
    /// A valid token for a backend that is down, draining or no longer configured.
    Unavailable = 3,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Valid,
        Outcome::Missing,
        Outcome::Invalid,
        Outcome::Unavailable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Missing => "missing",
            Outcome::Invalid => "invalid",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// One upstream's cookie, ready for the request path: built once per snapshot, so a request
/// hashes nothing but its own token.
pub struct Routes {
    upstream: String,
    name: String,
    key: hmac::Key,
    /// `Max-Age` in seconds; `None`: a session cookie.
    max_age: Option<u64>,
    /// Each backend's id, index-aligned with the balancer's backends (config order).
    ids: Vec<BackendId>,
    /// `switchboard_sticky_cookie_total` per outcome, in [`Outcome::ALL`] order.
    outcomes: [IntCounter; 4],
}

impl Routes {
    /// The cookie of `upstream`, if it has one.
    pub fn new(upstream: &Upstream, metrics: &Metrics) -> Option<Routes> {
        let cookie = upstream.sticky_cookie.as_ref()?;
        Some(Routes {
            upstream: upstream.name.clone(),
            name: cookie.name.clone(),
            key: cookie.key.clone(),
            max_age: cookie.max_age.map(|d| d.as_secs()),
            ids: upstream
                .servers
                .iter()
                .map(|s| token::backend_id(&upstream.name, &s.name))
                .collect(),
            outcomes: Outcome::ALL.map(|o| {
                metrics
                    .sticky_cookie_total
                    .with_label_values(&[upstream.name.as_str(), o.as_str()])
            }),
        })
    }

    /// Judges the request's cookie, counts the outcome, and removes the cookie from `headers`
    /// (the backend never sees it). Call after [`super::headers::join_cookies`].
    pub fn read(&self, balancer: &Balancer, headers: &mut HeaderMap) -> Sticky<'_> {
        let mut seen = false;
        let mut named = None;
        for value in headers.get_all(header::COOKIE) {
            for (name, value) in pairs(value.as_bytes()) {
                if name != self.name.as_bytes() {
                    continue;
                }
                seen = true;
                if let Some(id) = token::verify(&self.key, &self.upstream, value) {
                    // A valid token for a server no longer configured names nothing.
                    named = Some(self.ids.iter().position(|known| *known == id));
                    break;
                }
            }
            if named.is_some() {
                break;
            }
        }
        let (outcome, named) = match named {
            Some(Some(index)) if balancer.can_pin(index) => (Outcome::Valid, Some(index)),
            Some(Some(index)) => (Outcome::Unavailable, Some(index)),
            Some(None) => (Outcome::Unavailable, None),
            None if seen => (Outcome::Invalid, None),
            None => (Outcome::Missing, None),
        };
        self.outcomes[outcome as usize].inc();
        if seen {
            strip(headers, &self.name);
        }
        Sticky {
            routes: Some(self),
            outcome,
            named,
        }
    }

    /// The `Set-Cookie` value naming backend `index`.
    fn set_cookie(&self, index: usize, secure: bool) -> Option<HeaderValue> {
        let id = self.ids.get(index)?;
        let mut text = format!(
            "{}={}; Path=/",
            self.name,
            token::mint(&self.key, &self.upstream, id)
        );
        if let Some(age) = self.max_age {
            text.push_str(&format!("; Max-Age={age}"));
        }
        text.push_str("; HttpOnly; SameSite=Lax");
        if secure {
            text.push_str("; Secure");
        }
        HeaderValue::from_str(&text).ok()
    }
}

/// What one request's cookie says, from [`Routes::read`] (or [`Sticky::none`] for an upstream
/// without a cookie).
pub struct Sticky<'a> {
    routes: Option<&'a Routes>,
    outcome: Outcome,
    /// The backend a valid token named, whether it could be used or not.
    named: Option<usize>,
}

impl<'a> Sticky<'a> {
    /// The judgement for `upstream` of `snap`: [`Routes::read`] if it has a cookie.
    pub fn read(snap: &'a super::Snapshot, upstream: usize, headers: &mut HeaderMap) -> Self {
        match &snap.sticky_cookies[upstream] {
            Some(routes) => routes.read(&snap.balancers[upstream], headers),
            None => Sticky::none(),
        }
    }

    /// No cookie configured: nothing is pinned and nothing set.
    pub fn none() -> Self {
        Sticky {
            routes: None,
            outcome: Outcome::Missing,
            named: None,
        }
    }

    /// The backend to try first, if the cookie names one that takes connections.
    pub fn pin(&self) -> Option<usize> {
        (self.outcome == Outcome::Valid)
            .then_some(self.named)
            .flatten()
    }

    /// How the cookie was judged.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Adds `Set-Cookie` naming backend `index`, which answered, to its response, unless the
    /// request's valid cookie already names it. After the backend's own `Set-Cookie`s, if any.
    pub fn answer<B>(&self, response: &mut Response<B>, index: usize, conn: &ConnInfo) {
        let Some(routes) = self.routes else {
            return;
        };
        if self.named == Some(index) {
            return;
        }
        if let Some(value) = routes.set_cookie(index, conn.proto == "https") {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}

/// The `name=value` pairs of one `Cookie` field, trimmed, a quoted value unquoted; pairs without
/// `=` are skipped.
fn pairs(field: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    field.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        Some((name, value))
    })
}

/// Removes every `name=…` pair from the `Cookie` fields, keeping the others in order; a
/// field left empty is dropped.
fn strip(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<Vec<u8>> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            let rest: Vec<&[u8]> = value
                .as_bytes()
                .split(|&b| b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|pair| {
                    let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
                    !pair.is_empty() && key.trim_ascii() != name.as_bytes()
                })
                .collect();
            (!rest.is_empty()).then(|| rest.join(&b"; "[..]))
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.append(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests;
