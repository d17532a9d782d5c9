//! Rule 6 `ask`: a request to a host nobody allowed yet is held by the real proxy until an
//! answer arrives on the admin API (`GET /v1/approvals`, `POST /v1/approvals/{id}`), and
//! per-sandbox egress changes at run time (`PUT /v1/grants/{sandbox}/egress`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vault_proxy::audit::{Decision, EventKind};

struct Admin {
    url: String,
    c: reqwest::Client,
}

impl Admin {
    fn new(p: &Proxy) -> Admin {
        Admin {
            url: format!("http://{}", p.admin.unwrap()),
            c: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }
    async fn send(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .c
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or_default())
    }
    /// Waits until exactly `n` approvals are pending and returns them.
    async fn pending(&self, n: usize) -> Vec<Value> {
        for _ in 0..400 {
            let (s, v) = self.send(reqwest::Method::GET, "/v1/approvals", None).await;
            assert_eq!(s, 200);
            let list = v["approvals"].as_array().unwrap().clone();
            if list.len() == n {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never saw {n} pending approvals");
    }
    async fn decide(&self, id: &str, decision: &str, by: &str) -> u16 {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}"),
            Some(json!({"decision": decision, "by": by})),
        )
        .await
        .0
    }
}

#[tokio::test]
async fn ask_holds_the_request_until_answered_and_audits_who_decided() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let admin = Admin::new(&p);
    let (token, _) = p.grant("sb-a", &[]);
    // Under the proxy's `deny`, this sandbox is switched to `ask` at run time.
    let (s, v) = admin
        .send(
            reqwest::Method::PUT,
            "/v1/grants/sb-a/egress",
            Some(json!({"allow_hosts": [], "default": "ask"})),
        )
        .await;
    assert_eq!((s, v["default"].as_str()), (200, Some("ask")));
    let url = format!("https://evil.test:{}/held?token=secretvalue", up.port);

    // allow_once: the held request completes; the next one asks again.
    let c = p.client("sb-a", &token);
    let req = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    });
    let list = admin.pending(1).await;
    let a = &list[0];
    assert_eq!(a["sandbox"], "sb-a");
    assert_eq!(a["host"], "evil.test");
    assert_eq!(a["method"], "GET");
    assert!(
        !a.to_string().contains("secretvalue"),
        "no query values: {a}"
    );
    assert!(up.seen_for("evil.test").is_empty(), "held, not sent");
    assert_eq!(
        admin
            .decide(a["id"].as_str().unwrap(), "allow_once", "alice")
            .await,
        200
    );
    assert_eq!(req.await.unwrap(), 200);
    assert_eq!(up.seen_for("evil.test").len(), 1);
    // Answered: the id is gone.
    assert_eq!(
        admin.decide(a["id"].as_str().unwrap(), "deny", "bob").await,
        404
    );

    // deny: 403 egress_denied, nothing sent.
    let req = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(url).send().await.unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or_default();
            (s, v["error"]["code"].as_str().unwrap_or("").to_string())
        }
    });
    let list = admin.pending(1).await;
    assert_eq!(
        admin
            .decide(list[0]["id"].as_str().unwrap(), "deny", "bob")
            .await,
        200
    );
    assert_eq!(req.await.unwrap(), (403, "egress_denied".to_string()));
    assert_eq!(up.seen_for("evil.test").len(), 1);

    // allow_session: this sandbox goes on without asking; another sandbox still asks.
    let req = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    });
    let list = admin.pending(1).await;
    admin
        .decide(list[0]["id"].as_str().unwrap(), "allow_session", "carol")
        .await;
    assert_eq!(req.await.unwrap(), 200);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    let (_, v) = admin
        .send(reqwest::Method::GET, "/v1/grants/sb-a/egress", None)
        .await;
    assert_eq!(v["allow_hosts"], json!(["evil.test"]));

    let (token_b, _) = p.grant("sb-b", &[]);
    admin
        .send(
            reqwest::Method::PUT,
            "/v1/grants/sb-b/egress",
            Some(json!({"allow_hosts": [], "default": "ask"})),
        )
        .await;
    let cb = p.client("sb-b", &token_b);
    let req = tokio::spawn({
        let (cb, url) = (cb.clone(), url.clone());
        async move { cb.get(url).send().await.unwrap().status().as_u16() }
    });
    let list = admin.pending(1).await;
    assert_eq!(list[0]["sandbox"], "sb-b");
    // Revoking the grant denies what it has pending (the client sees the tunnel end).
    assert_eq!(
        admin
            .send(reqwest::Method::DELETE, "/v1/grants/sb-b", None)
            .await
            .0,
        204
    );
    admin.pending(0).await;
    let status = req.await.unwrap_or(0);
    assert_ne!(status, 200);

    let (_, recs) = p.audit().await;
    let approvals: Vec<_> = recs
        .iter()
        .filter(|r| r.event == EventKind::Approval)
        .map(|r| (r.sandbox.as_str(), r.decision, r.reason.as_str()))
        .collect();
    assert_eq!(
        approvals[..3],
        [
            ("sb-a", Decision::Allow, "allow_once by alice"),
            ("sb-a", Decision::Deny, "deny by bob"),
            ("sb-a", Decision::Allow, "allow_session by carol"),
        ]
    );
    assert!(
        recs.iter()
            .filter(|r| r.event == EventKind::Approval && r.sandbox == "sb-a")
            .all(|r| r.host == "evil.test" && r.path == "/held?token=")
    );
    // The revoked sandbox's held request is audited as denied by `revoked`.
    assert!(recs.iter().any(|r| r.event == EventKind::Approval
        && r.sandbox == "sb-b"
        && r.reason == "deny by revoked"));
    p.shutdown().await;
}

#[tokio::test]
async fn sandbox_egress_list_changes_at_run_time_and_admin_routes_fail_closed() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let admin = Admin::new(&p);
    let (token, _) = p.grant("sb-a", &[]);
    let c = p.client("sb-a", &token);
    let url = format!("https://evil.test:{}/", up.port);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 403);
    let put = |hosts: Value| {
        admin.send(
            reqwest::Method::PUT,
            "/v1/grants/sb-a/egress",
            Some(json!({ "allow_hosts": hosts })),
        )
    };
    assert_eq!(put(json!(["evil.test"])).await.0, 200);
    // A new tunnel (the old one was allowed nothing yet; the list is read per request).
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(put(json!([])).await.0, 200);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 403);
    // Bad input and unknown sandboxes are refused; nothing changes.
    assert_eq!(put(json!(["*.com"])).await.0, 400);
    assert_eq!(
        admin
            .send(
                reqwest::Method::PUT,
                "/v1/grants/sb-a/egress",
                Some(json!({"allow_hosts": [], "default": "allow"}))
            )
            .await
            .0,
        400
    );
    assert_eq!(
        admin
            .send(
                reqwest::Method::PUT,
                "/v1/grants/nobody/egress",
                Some(json!({"allow_hosts": ["evil.test"]}))
            )
            .await
            .0,
        404
    );
    assert_eq!(
        admin
            .send(
                reqwest::Method::POST,
                "/v1/approvals/ap_nothere",
                Some(json!({"decision": "allow_once"}))
            )
            .await
            .0,
        404
    );
    assert_eq!(
        admin
            .send(
                reqwest::Method::POST,
                "/v1/approvals/ap_nothere",
                Some(json!({"decision": "maybe"}))
            )
            .await
            .0,
        400
    );
    // Without the admin token: 401, on every approvals route.
    let anon = reqwest::Client::builder().no_proxy().build().unwrap();
    for (m, path) in [
        (reqwest::Method::GET, "/v1/approvals"),
        (reqwest::Method::PUT, "/v1/grants/sb-a/egress"),
    ] {
        let r = anon
            .request(m, format!("{}{path}", admin.url))
            .json(&json!({"allow_hosts": ["evil.test"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(c.get(&url).send().await.unwrap().status(), 403);
    p.shutdown().await;
}
