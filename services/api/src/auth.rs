//! Who is calling: the client address (direct or through a trusted gateway) and, for
//! requests that create anchor requests, DID authentication.
//!
//! `POST /api/v0/requests` carries `Authorization: Bearer <compact JWS>` signed by a
//! `did:key`, with payload `{url, nonce, digest}` (see `cas-auth`). Unless auth is off, the
//! API checks the signature, the DID (allowlist, unless relaxed), that `url` names this
//! route, that `digest` is the body's, and that the nonce was never used (on any instance,
//! through the [`NonceStore`]). The verified DID is the request's origin, which scopes
//! REPLACED. Every failure answers 401 `{"message":"Unauthorized"}`. GETs need no token.
//!
//! Gateway mode: behind an API gateway that authenticates clients itself (as the reference's
//! "CAS Auth" lambda did), the gateway forwards `did`, `digest` and `sourceIp` headers. They
//! are honoured only on connections from a configured trusted proxy range; from anywhere
//! else they are ignored, since any client could set them.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use cas_auth::{BodyDigest, MAX_DID_LEN, verify_compact};
use cas_store::NonceStore;

use crate::{ApiError, AppState, limits::RateLimiter};

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No authentication: the origin of a request is its client IP.
    #[default]
    Off,
    /// Signed requests from the allowed DIDs only.
    Allowlist,
    /// Signed requests from any valid `did:key`.
    Relaxed,
}

impl FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "allowlist" => Ok(Self::Allowlist),
            "relaxed" => Ok(Self::Relaxed),
            other => Err(format!(
                "unknown auth mode {other:?}: use off, allowlist or relaxed"
            )),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Allowlist => "allowlist",
            Self::Relaxed => "relaxed",
        })
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in this range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network = canonical_ip(
            addr.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?,
        );
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as the IPv4 address they are.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Off, allowlist or relaxed.
    pub mode: AuthMode,
    /// The DIDs allowed in allowlist mode (`did:key:z…`).
    pub allowed_dids: Vec<String>,
    /// How long a used nonce is remembered; a token replayed after this is not detected.
    pub nonce_ttl: Duration,
    /// Peers whose `did`/`digest`/`sourceIp`/`X-Forwarded-For` headers are trusted (an API
    /// gateway or load balancer). Empty: those headers are ignored.
    pub trusted_proxies: Vec<IpRange>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Off,
            allowed_dids: Vec::new(),
            nonce_ttl: Duration::from_secs(3600),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The caller of one request, as established by [`identify_client`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client {
    /// The client's address: the TCP peer, or what a trusted proxy says it forwarded.
    pub(crate) ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy (its identity headers count).
    pub(crate) via_trusted_proxy: bool,
}

/// Why a request was refused; only the label reaches metrics and (debug) logs.
fn refuse(reason: &'static str, detail: impl fmt::Display) -> ApiError {
    metrics::counter!("cas_auth_rejected_total", "reason" => reason).increment(1);
    tracing::debug!(reason, detail = %detail, "request refused: unauthorized");
    ApiError::Unauthorized(reason)
}

/// The authentication of anchor-request POSTs.
pub(crate) struct Authenticator {
    settings: AuthSettings,
    allowed: HashSet<String>,
    nonces: Arc<dyn NonceStore>,
    did_limiter: Option<RateLimiter<String>>,
}

impl Authenticator {
    pub(crate) fn new(
        settings: AuthSettings,
        nonces: Arc<dyn NonceStore>,
        did_limiter: Option<RateLimiter<String>>,
    ) -> Self {
        let allowed = settings.allowed_dids.iter().cloned().collect();
        Self {
            settings,
            allowed,
            nonces,
            did_limiter,
        }
    }

    pub(crate) fn mode(&self) -> AuthMode {
        self.settings.mode
    }

    pub(crate) fn nonces(&self) -> &Arc<dyn NonceStore> {
        &self.nonces
    }

    pub(crate) fn nonce_ttl(&self) -> Duration {
        self.settings.nonce_ttl
    }

    /// Authenticate a request that creates an anchor request; returns its origin (the DID,
    /// or the client IP when auth is off).
    pub(crate) async fn authorize(
        &self,
        parts: &Parts,
        client: Client,
        body: BodyDigest<'_>,
    ) -> Result<String, ApiError> {
        if client.via_trusted_proxy
            && let Some(did) = parts.headers.get("did")
        {
            return self.authorize_from_gateway(&parts.headers, did, body);
        }
        if self.settings.mode == AuthMode::Off {
            return Ok(client.ip.to_string());
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(cas_auth::bearer_token)
            .ok_or_else(|| refuse("no-token", "no bearer token"))?;
        let verified = verify_compact(token).map_err(|e| refuse(e.reason(), e))?;
        let did = verified.did.as_str();
        self.check_did(did)?;
        check_url(&verified.claims.url, parts.uri.path())?;
        let claimed = verified
            .claims
            .digest
            .as_deref()
            .ok_or_else(|| refuse("no-digest", "the token has no digest"))?;
        if !body.matches(claimed) {
            return Err(refuse("bad-digest", format_args!("for {did}")));
        }
        self.check_rate(did)?;
        let expires_at = chrono::Utc::now()
            + chrono::Duration::from_std(self.settings.nonce_ttl)
                .unwrap_or(chrono::Duration::hours(1));
        if !self.nonces.claim(verified.claims.nonce, expires_at).await? {
            return Err(refuse("replayed-nonce", format_args!("for {did}")));
        }
        metrics::counter!("cas_auth_accepted_total").increment(1);
        Ok(did.to_owned())
    }

    /// A request a trusted gateway has authenticated: it names the DID and the digest it
    /// verified; the body must still be the one that digest names.
    fn authorize_from_gateway(
        &self,
        headers: &HeaderMap,
        did: &axum::http::HeaderValue,
        body: BodyDigest<'_>,
    ) -> Result<String, ApiError> {
        let did = did
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|d| !d.is_empty() && d.len() <= MAX_DID_LEN)
            .ok_or_else(|| refuse("gateway-bad-did", "unusable did header"))?;
        let digest = headers.get("digest").and_then(|v| v.to_str().ok());
        match digest {
            Some(digest) if !body.matches(digest) => {
                return Err(refuse("gateway-bad-digest", format_args!("for {did}")));
            }
            None if self.settings.mode != AuthMode::Off => {
                return Err(refuse("gateway-no-digest", format_args!("for {did}")));
            }
            _ => {}
        }
        if self.settings.mode != AuthMode::Off {
            self.check_did(did)?;
        }
        self.check_rate(did)?;
        metrics::counter!("cas_auth_accepted_total").increment(1);
        Ok(did.to_owned())
    }

    fn check_did(&self, did: &str) -> Result<(), ApiError> {
        if self.settings.mode == AuthMode::Allowlist && !self.allowed.contains(did) {
            return Err(refuse("did-not-allowed", did));
        }
        Ok(())
    }

    fn check_rate(&self, did: &str) -> Result<(), ApiError> {
        if let Some(limiter) = &self.did_limiter {
            limiter
                .check(did)
                .map_err(|retry_after| ApiError::TooManyRequests {
                    retry_after,
                    what: "did",
                })?;
        }
        Ok(())
    }
}

/// The signed URL must name the route being called. Only the path is compared: behind a
/// load balancer or gateway the scheme and host this process sees are not the ones the
/// client used, and the token is bound to its body and a one-time nonce anyway. A path
/// prefix added in front (a gateway mounting the API under `/cas`) is allowed.
fn check_url(signed: &str, path: &str) -> Result<(), ApiError> {
    let url = url::Url::parse(signed).map_err(|_| refuse("bad-url", "unparseable url"))?;
    let signed_path = url.path();
    let trimmed = |p: &str| p.trim_end_matches('/').to_owned();
    if trimmed(signed_path).ends_with(&trimmed(path)) {
        Ok(())
    } else {
        Err(refuse(
            "wrong-url",
            format_args!("signed for {signed_path}, called {path}"),
        ))
    }
}

/// Work out who the client is (and rate-limit it per IP) before anything else runs.
pub(crate) async fn identify_client(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| canonical_ip(addr.ip()));
    let client = match peer {
        Some(peer) => client_of(
            peer,
            request.headers(),
            &state.auth_settings.trusted_proxies,
        ),
        None => Client {
            ip: IpAddr::from([0, 0, 0, 0]),
            via_trusted_proxy: false,
        },
    };
    let path = request.uri().path();
    let exempt = path == "/api/v0/healthcheck" || path == "/metrics";
    if !exempt
        && let Some(limiter) = &state.ip_limiter
        && let Err(retry_after) = limiter.check(&rate_key(client.ip))
    {
        return ApiError::TooManyRequests {
            retry_after,
            what: "ip",
        }
        .into_response();
    }
    request.extensions_mut().insert(client);
    next.run(request).await
}

fn client_of(peer: IpAddr, headers: &HeaderMap, trusted: &[IpRange]) -> Client {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return Client {
            ip: peer,
            via_trusted_proxy: false,
        };
    }
    let header_ip = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .map(canonical_ip)
    };
    // The gateway's own header first; else the nearest X-Forwarded-For hop that is not one
    // of our proxies (hops further left were written by the client and prove nothing).
    let forwarded = || {
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(canonical_ip)
            .collect();
        hops.iter()
            .rev()
            .find(|ip| !is_trusted(**ip))
            .or(hops.first())
            .copied()
    };
    Client {
        ip: header_ip("sourceip").or_else(forwarded).unwrap_or(peer),
        via_trusted_proxy: true,
    }
}

/// The rate-limit key of an address: IPv6 clients get a /64 each (one is one subscriber).
pub(crate) fn rate_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        let one: IpRange = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: IpRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "fd00::/129", "nope", "10.0.0.0/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<IpRange> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.7".parse().unwrap(),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        // Through our proxies: the nearest untrusted hop, not the client-written leftmost.
        assert_eq!(
            client_of(peer, &headers, &trusted).ip,
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        headers.insert("sourceip", "5.5.5.5".parse().unwrap());
        assert_eq!(
            client_of(peer, &headers, &trusted).ip,
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the headers are ignored.
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        let client = client_of(stranger, &headers, &trusted);
        assert_eq!(client.ip, stranger);
        assert!(!client.via_trusted_proxy);
    }

    #[test]
    fn urls_must_name_the_route() {
        let path = "/api/v0/requests";
        for ok in [
            "http://127.0.0.1:8081/api/v0/requests",
            "https://cas.example.com/api/v0/requests/",
            "https://gw.example.com/cas/api/v0/requests",
        ] {
            assert!(check_url(ok, path).is_ok(), "{ok}");
        }
        for bad in [
            "https://cas.example.com/api/v0/requests/bafy",
            "https://cas.example.com/",
            "/api/v0/requests",
            "not a url",
        ] {
            assert!(check_url(bad, path).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rate_key(a), rate_key(b));
        assert_ne!(rate_key(a), rate_key(c));
        assert_eq!(
            rate_key("::ffff:1.2.3.4".parse().unwrap()),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }
}
