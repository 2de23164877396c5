//! DID authentication: signed requests, replay, digests, allowlist, gateway headers.

use std::sync::Arc;

use cas_api::{ApiSettings, AuthMode, AuthSettings, NoWitnesses};
use cas_auth::{BodyDigest, Ed25519Signer, RequestSigner, Secp256k1Signer, sha256_digest};
use cas_store::{PgStore, RequestStore, test_support::TestDb};
use serde_json::{Value, json};

use crate::helpers::*;

fn auth_settings(mode: AuthMode, allowed: &[&dyn RequestSigner]) -> ApiSettings {
    ApiSettings {
        auth: AuthSettings {
            mode,
            allowed_dids: allowed.iter().map(|s| s.did().to_owned()).collect(),
            ..AuthSettings::default()
        },
        ..ApiSettings::default()
    }
}

async fn app(store: PgStore, settings: ApiSettings) -> TestApp {
    spawn_app_with(store, Arc::new(NoWitnesses), settings).await
}

impl TestApp {
    fn requests_url(&self) -> String {
        format!("{}/requests", self.base)
    }

    /// POST exact bytes with extra headers.
    async fn post_with(
        &self,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.requests_url())
            .header("content-type", content_type)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POST a JSON body signed by `signer`, as ceramic-one does.
    async fn post_signed(&self, signer: &dyn RequestSigner, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let token = signer.sign(&self.requests_url(), Some(&sha256_digest(&bytes)));
        self.post_with(
            "application/json",
            bytes,
            &[("authorization", format!("Bearer {token}"))],
        )
        .await
    }

    async fn origin_of(&self, cid: &str) -> String {
        self.store.get_request(cid).await.unwrap().unwrap().origin
    }
}

fn unauthorized() -> (u16, Value) {
    (401, json!({"message": "Unauthorized"}))
}

#[tokio::test]
async fn unsigned_posts_are_refused_and_gets_stay_open() {
    let db = TestDb::new().await.unwrap();
    let node = Ed25519Signer::generate();
    let app = app(db.store, auth_settings(AuthMode::Allowlist, &[&node])).await;
    let cid = cid_for("unsigned").to_string();

    assert_eq!(app.post_json(&request_body(&cid)).await, unauthorized());
    assert_eq!(app.request_count().await, 0);

    // The same request signed by the allowed node is accepted.
    let (status, created) = app.post_signed(&node, &request_body(&cid)).await;
    assert_eq!(status, 201, "{created}");
    // Reads need no signature (js-ceramic polls with GET).
    let (status, fetched) = app.get(&format!("/requests/{cid}")).await;
    assert_eq!((status, &fetched), (200, &created));
    assert_eq!(app.get("/requests/bafy-nope").await.0, 400);
}

#[tokio::test]
async fn the_verified_did_is_the_origin_for_ed25519_and_secp256k1_keys() {
    let db = TestDb::new().await.unwrap();
    let ed = Ed25519Signer::from_seed([11; 32]);
    let k = Secp256k1Signer::from_seed([12; 32]).unwrap();
    let app = app(db.store, auth_settings(AuthMode::Allowlist, &[&ed, &k])).await;
    for (signer, tag) in [(&ed as &dyn RequestSigner, "ed"), (&k, "k256")] {
        let cid = cid_for(tag).to_string();
        let (status, body) = app.post_signed(signer, &request_body(&cid)).await;
        assert_eq!(status, 201, "{tag}: {body}");
        // REPLACED is decided per (stream, origin): the origin is the DID, not the address.
        assert_eq!(app.origin_of(&cid).await, signer.did());
    }
}

#[tokio::test]
async fn dids_outside_the_allowlist_are_refused_unless_relaxed() {
    let db = TestDb::new().await.unwrap();
    let allowed = Ed25519Signer::generate();
    let stranger = Ed25519Signer::generate();
    let strict = app(
        db.store.clone(),
        auth_settings(AuthMode::Allowlist, &[&allowed]),
    )
    .await;
    let cid = cid_for("stranger").to_string();
    assert_eq!(
        strict.post_signed(&stranger, &request_body(&cid)).await,
        unauthorized()
    );
    let relaxed = app(db.store, auth_settings(AuthMode::Relaxed, &[])).await;
    assert_eq!(
        relaxed.post_signed(&stranger, &request_body(&cid)).await.0,
        201
    );
    assert_eq!(relaxed.origin_of(&cid).await, stranger.did());
}

#[tokio::test]
async fn a_replayed_token_is_refused_by_every_instance() {
    let db = TestDb::new().await.unwrap();
    let node = Ed25519Signer::generate();
    let settings = || auth_settings(AuthMode::Allowlist, &[&node]);
    // Two API instances on one database.
    let first = app(db.store.clone(), settings()).await;
    let second = app(db.store.clone(), settings()).await;

    let cid = cid_for("replay").to_string();
    let bytes = serde_json::to_vec(&request_body(&cid)).unwrap();
    // The signed URL names the route; the host differs between instances and is not checked.
    let token = node.sign(&first.requests_url(), Some(&sha256_digest(&bytes)));
    let headers = [("authorization", format!("Bearer {token}"))];
    assert_eq!(
        first
            .post_with("application/json", bytes.clone(), &headers)
            .await
            .0,
        201
    );
    assert_eq!(
        first
            .post_with("application/json", bytes.clone(), &headers)
            .await,
        unauthorized()
    );
    assert_eq!(
        second
            .post_with("application/json", bytes.clone(), &headers)
            .await,
        unauthorized()
    );
    // A fresh nonce on the same body is a normal re-POST (how ceramic-one polls).
    assert_eq!(second.post_signed(&node, &request_body(&cid)).await.0, 202);
}

#[tokio::test]
async fn the_digest_and_url_bind_the_token_to_this_request() {
    let db = TestDb::new().await.unwrap();
    let node = Ed25519Signer::generate();
    let app = app(db.store, auth_settings(AuthMode::Allowlist, &[&node])).await;
    let url = app.requests_url();
    let body = request_body(&cid_for("digest").to_string());
    let bytes = serde_json::to_vec(&body).unwrap();
    let other = serde_json::to_vec(&request_body(&cid_for("other").to_string())).unwrap();
    let bearer = |token: String| [("authorization", format!("Bearer {token}"))];

    // The token of another body.
    let token = node.sign(&url, Some(&sha256_digest(&other)));
    assert_eq!(
        app.post_with("application/json", bytes.clone(), &bearer(token))
            .await,
        unauthorized()
    );
    // No digest at all (a GET-style token).
    let token = node.sign(&url, None);
    assert_eq!(
        app.post_with("application/json", bytes.clone(), &bearer(token))
            .await,
        unauthorized()
    );
    // Signed for another route.
    let token = node.sign(&format!("{url}/bafyfoo"), Some(&sha256_digest(&bytes)));
    assert_eq!(
        app.post_with("application/json", bytes.clone(), &bearer(token))
            .await,
        unauthorized()
    );
    assert_eq!(app.request_count().await, 0);

    // The client signed the compact form and sent it reformatted: the re-serialization in
    // key order matches, as the reference server's JSON.stringify(body) did.
    let pretty = serde_json::to_vec_pretty(&body).unwrap();
    assert_ne!(pretty, bytes);
    let token = node.sign(&url, Some(&sha256_digest(&bytes)));
    assert_eq!(
        app.post_with("application/json", pretty, &bearer(token))
            .await
            .0,
        201
    );
}

#[tokio::test]
async fn car_requests_sign_their_root_cid() {
    let db = TestDb::new().await.unwrap();
    let node = Ed25519Signer::generate();
    let app = app(db.store, auth_settings(AuthMode::Allowlist, &[&node])).await;
    let car = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/core/tests/data/cas-car-request.car"
    ))
    .unwrap();
    let root = BodyDigest::Car(&car).compute().unwrap();
    assert!(root.starts_with("bafy"), "{root}");
    let url = app.requests_url();

    let hashed = node.sign(&url, Some(&sha256_digest(&car)));
    assert_eq!(
        app.post_with(
            "application/vnd.ipld.car",
            car.clone(),
            &[("authorization", format!("Bearer {hashed}"))]
        )
        .await,
        unauthorized()
    );
    let token = node.sign(&url, Some(&root));
    let (status, body) = app
        .post_with(
            "application/vnd.ipld.car",
            car,
            &[("authorization", format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn broken_tokens_are_401_never_500() {
    let db = TestDb::new().await.unwrap();
    let node = Ed25519Signer::generate();
    let app = app(db.store, auth_settings(AuthMode::Relaxed, &[])).await;
    let bytes = serde_json::to_vec(&request_body(&cid_for("broken").to_string())).unwrap();
    let good = node.sign(&app.requests_url(), Some(&sha256_digest(&bytes)));
    let parts: Vec<&str> = good.split('.').collect();
    let flipped_signature = {
        let mut s = parts[2].to_owned();
        let last = s.pop().unwrap();
        s.push(if last == 'A' { 'B' } else { 'A' });
        s
    };
    for value in [
        String::new(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "Basic dXNlcjpwYXNz".to_owned(),
        "Bearer not-a-jws".to_owned(),
        "Bearer a.b.c".to_owned(),
        format!("Bearer {}.{}.{flipped_signature}", parts[0], parts[1]),
        format!("Bearer {}.{}", parts[0], parts[1]),
        format!("Bearer {}..{}", parts[0], parts[2]),
        format!("Bearer {good}.extra"),
        format!("Bearer {}", "A".repeat(5000)),
    ] {
        let (status, body) = app
            .post_with(
                "application/json",
                bytes.clone(),
                &[("authorization", value.clone())],
            )
            .await;
        assert_eq!((status, body), unauthorized(), "{value:?}");
    }
    assert_eq!(app.request_count().await, 0);
}

#[tokio::test]
async fn gateway_headers_count_only_from_trusted_proxies() {
    let db = TestDb::new().await.unwrap();
    let node = Ed25519Signer::generate();
    let with_proxies = |ranges: &[&str], mode: AuthMode| {
        let mut settings = auth_settings(mode, &[&node]);
        settings.auth.trusted_proxies = ranges.iter().map(|r| r.parse().unwrap()).collect();
        settings
    };
    let gateway_headers = |bytes: &[u8]| {
        [
            ("did", node.did().to_owned()),
            ("digest", sha256_digest(bytes)),
            ("sourceip", "203.0.113.9".to_owned()),
        ]
    };

    // Not configured: a client setting `did` itself gets nowhere.
    let untrusted = app(db.store.clone(), with_proxies(&[], AuthMode::Allowlist)).await;
    let body = serde_json::to_vec(&request_body(&cid_for("gw1").to_string())).unwrap();
    assert_eq!(
        untrusted
            .post_with("application/json", body.clone(), &gateway_headers(&body))
            .await,
        unauthorized()
    );
    // Configured, but the caller is not in the trusted range.
    let elsewhere = app(
        db.store.clone(),
        with_proxies(&["10.0.0.0/8"], AuthMode::Allowlist),
    )
    .await;
    assert_eq!(
        elsewhere
            .post_with("application/json", body.clone(), &gateway_headers(&body))
            .await,
        unauthorized()
    );

    // From the trusted proxy: the gateway's word is taken, and the DID is the origin...
    let trusted = app(
        db.store.clone(),
        with_proxies(&["127.0.0.0/8"], AuthMode::Allowlist),
    )
    .await;
    let (status, created) = trusted
        .post_with("application/json", body.clone(), &gateway_headers(&body))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        trusted.origin_of(created["cid"].as_str().unwrap()).await,
        node.did()
    );
    // ...but the body must be the one whose digest the gateway checked.
    let other = serde_json::to_vec(&request_body(&cid_for("gw2").to_string())).unwrap();
    assert_eq!(
        trusted
            .post_with("application/json", other, &gateway_headers(&body))
            .await,
        unauthorized()
    );

    // Without auth, a trusted proxy's sourceIp is the origin; an untrusted one's is ignored.
    let open_trusted = app(
        db.store.clone(),
        with_proxies(&["127.0.0.1"], AuthMode::Off),
    )
    .await;
    let open_untrusted = app(db.store.clone(), with_proxies(&[], AuthMode::Off)).await;
    for (app, tag, origin) in [
        (&open_trusted, "gw3", "203.0.113.9"),
        (&open_untrusted, "gw4", "127.0.0.1"),
    ] {
        let body = serde_json::to_vec(&request_body(&cid_for(tag).to_string())).unwrap();
        let (status, created) = app
            .post_with(
                "application/json",
                body,
                &[("sourceip", "203.0.113.9".to_owned())],
            )
            .await;
        assert_eq!(status, 201);
        assert_eq!(
            app.origin_of(created["cid"].as_str().unwrap()).await,
            origin
        );
    }
}
