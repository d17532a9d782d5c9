//! Keys, limits and spend over a shared database: key limits and headers, budget
//! periods, exact pricing of cache tokens, two replicas on one PostgreSQL, a LiteLLM
//! proxy's own PostgreSQL used as is, and a stalled database that costs requests nothing.
//! PostgreSQL tests need AIRLOCK_TEST_POSTGRES_URL (they skip without it, and fail
//! with AIRLOCK_REQUIRE_POSTGRES=1).

mod common;
#[path = "common/prisma.rs"]
mod prisma;
use common::*;
use gateway::store::Store;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ fakes

/// An OpenAI chat endpoint whose usage reports cached prompt tokens
/// (`usage.prompt_tokens_details.cached_tokens`, as api.openai.com does since 2024-10),
/// optionally slow.
struct Upstream {
    base: String,
    calls: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicUsize>,
}

async fn upstream() -> Upstream {
    let calls = Arc::new(AtomicUsize::new(0));
    let delay_ms = Arc::new(AtomicUsize::new(0));
    let (c, d) = (calls.clone(), delay_ms.clone());
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |body: axum::Json<Value>| {
                let (c, d) = (c.clone(), d.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let ms = d.load(Ordering::SeqCst);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
                    }
                    axum::Json(json!({
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10000, "completion_tokens": 1000, "total_tokens": 11000,
                                  "prompt_tokens_details": {"cached_tokens": 8000}}
                    }))
                }
            }),
        )
        .route(
            "/v1/messages",
            // Anthropic Messages API usage with prompt caching (docs.anthropic.com,
            // "Prompt caching": input_tokens excludes cache reads and writes).
            axum::routing::post(move |body: axum::Json<Value>| async move {
                axum::Json(json!({
                    "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": null,
                    "usage": {"input_tokens": 500, "cache_read_input_tokens": 80000,
                              "cache_creation_input_tokens": 2000, "output_tokens": 1000}
                }))
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Upstream {
        base,
        calls,
        delay_ms,
    }
}

fn config(up: &Upstream) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {{model: openai/gpt-4o, api_base: '{b}/v1', api_key: sk-up}}
  - model_name: gpt-4o-mini
    litellm_params: {{model: openai/gpt-4o-mini, api_base: '{b}/v1', api_key: sk-up}}
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4-5-20250929, api_base: '{b}', api_key: sk-up}}
  - model_name: custom
    litellm_params: {{model: openai/in-house, api_base: '{b}/v1', api_key: sk-up, input_cost_per_token: 0.000002, output_cost_per_token: 0.000004}}
  - model_name: unpriced
    litellm_params: {{model: openai/in-house-unpriced, api_base: '{b}/v1', api_key: sk-up}}
general_settings: {{master_key: sk-master}}
"#,
        b = up.base
    )
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn generate(base: &str, body: Value) -> String {
    let (s, b) = post(&format!("{base}/key/generate"), "sk-master", &body).await;
    assert_eq!(s, 200, "{b}");
    json(&b)["key"].as_str().unwrap().to_owned()
}

async fn call(base: &str, key: &str, model: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat(model))
        .send()
        .await
        .unwrap()
}

async fn info(base: &str, key: &str) -> Value {
    let r = client()
        .get(format!("{base}/key/info"))
        .query(&[("key", key)])
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn cents(x: f64) -> i64 {
    (x * 100.0).round() as i64
}

// ------------------------------------------------------------------ single replica

#[tokio::test]
async fn cache_tokens_and_custom_prices_are_billed_to_the_cent() {
    let up = upstream().await;
    let gw = start_gateway(&config(&up), Store::Memory).await;
    assert!(
        gw.gw
            .warnings()
            .iter()
            .any(|w| w.contains("in-house-unpriced")),
        "unpriced model is a startup warning: {:?}",
        gw.gw.warnings()
    );
    let key = generate(&gw.base, json!({"max_budget": 100})).await;

    // OpenAI: 2000 fresh * 2.5e-6 + 8000 cached * 1.25e-6 + 1000 * 1e-5 = $0.025.
    let r = call(&gw.base, &key, "gpt-4o").await;
    assert_eq!(r.status(), 200);
    let cost: f64 = r.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((cost - 0.025).abs() < 1e-9, "{cost}");

    // Anthropic (dated model resolved exactly): 500 * 3e-6 + 80000 * 3e-7 + 2000 * 3.75e-6
    // + 1000 * 1.5e-5 = $0.048 (billing cache reads as input would say $0.2625).
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cost: f64 = r.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((cost - 0.048).abs() < 1e-9, "{cost}");

    // Custom price: 10000 * 2e-6 + 1000 * 4e-6 = $0.024 (cached tokens at the custom input price).
    let r = call(&gw.base, &key, "custom").await;
    let cost: f64 = r.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((cost - 0.024).abs() < 1e-9, "{cost}");

    gw.gw.flush().await;
    let i = info(&gw.base, &key).await;
    assert_eq!(cents(i["info"]["spend"].as_f64().unwrap()), 10, "{i}"); // 0.025+0.048+0.024 = 0.097

    // Unknown price + budgeted key: refused (fail closed), upstream untouched.
    let before = up.calls.load(Ordering::SeqCst);
    let r = call(&gw.base, &key, "unpriced").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("has no price"));
    assert_eq!(up.calls.load(Ordering::SeqCst), before);
    // A key without a budget may use it (its tokens are still counted).
    let free = generate(&gw.base, json!({})).await;
    assert_eq!(call(&gw.base, &free, "unpriced").await.status(), 200);
}

#[tokio::test]
async fn key_limits_are_enforced_with_litellm_errors_and_headers() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gw.db").display());
    let gw = start_gateway(&config(&up), Store::connect(&url).await.unwrap()).await;
    let base = gw.base.clone();

    // rpm_limit: the third call in the minute is a 429 with LiteLLM's error body.
    clear_of_minute_end(Duration::from_secs(10)).await;
    let key = generate(&base, json!({"rpm_limit": 2, "tpm_limit": 1000000, "models": ["gpt-*"], "key_alias": "ci", "team_id": "t1", "user_id": "u1", "metadata": {"env": "test"}})).await;
    let r = call(&base, &key, "gpt-4o").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "1000000");
    assert!(r.headers().contains_key("x-ratelimit-remaining-tokens"));
    // Wildcard model list: gpt-* admits gpt-4o-mini, not claude.
    assert_eq!(call(&base, &key, "gpt-4o-mini").await.status(), 200);
    let r = call(&base, &key, "gpt-4o").await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);
    let r = call(&base, &key, "claude").await;
    assert_eq!(r.status(), 401);

    // tpm_limit: 11000 tokens per call; a limit of 11000 admits one call.
    let tk = generate(&base, json!({"tpm_limit": 11000})).await;
    assert_eq!(call(&base, &tk, "gpt-4o").await.status(), 200);
    gw.gw.flush().await;
    assert_eq!(call(&base, &tk, "gpt-4o").await.status(), 429);

    // /key/update raises the limit; info shows every field.
    let (s, b) = post(
        &format!("{base}/key/update"),
        "sk-master",
        &json!({"key": key, "rpm_limit": 5, "max_budget": 1.5}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(call(&base, &key, "gpt-4o").await.status(), 200);
    let i = info(&base, &key).await["info"].clone();
    assert_eq!(i["rpm_limit"], 5);
    assert_eq!(i["max_budget"], 1.5);
    assert_eq!(i["key_alias"], "ci");
    assert_eq!(i["team_id"], "t1");
    assert_eq!(i["user_id"], "u1");
    assert_eq!(i["models"], json!(["gpt-*"]));
    assert_eq!(i["metadata"]["env"], "test");
    // Bad input: clear 400s naming the field.
    let (s, b) = post(
        &format!("{base}/key/update"),
        "sk-master",
        &json!({"key": key, "rpm_limit": -1}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = post(
        &format!("{base}/key/generate"),
        "sk-master",
        &json!({"budget_duration": "soon"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = post(
        &format!("{base}/key/generate"),
        "sk-master",
        &json!({"rpm_limt": 3}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b.contains("rpm_limt"));
    let (s, _) = post(
        &format!("{base}/key/update"),
        "sk-master",
        &json!({"key": "sk-nope", "rpm_limit": 1}),
    )
    .await;
    assert_eq!(s, 404);

    // max_parallel_requests: a second concurrent call is refused while the first runs.
    let pk = generate(&base, json!({"max_parallel_requests": 1})).await;
    up.delay_ms.store(400, Ordering::SeqCst);
    let first = tokio::spawn({
        let (b, k) = (base.clone(), pk.clone());
        async move { call(&b, &k, "gpt-4o").await.status() }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(call(&base, &pk, "gpt-4o").await.status(), 429);
    assert_eq!(first.await.unwrap(), 200);
    up.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(call(&base, &pk, "gpt-4o").await.status(), 200);

    // budget_duration: the budget trips, then a new period starts with spend 0.
    let bk = generate(&base, json!({"max_budget": 0.03, "budget_duration": "2s"})).await;
    assert_eq!(call(&base, &bk, "gpt-4o").await.status(), 200);
    assert_eq!(call(&base, &bk, "gpt-4o").await.status(), 200);
    let r = call(&base, &bk, "gpt-4o").await;
    assert_eq!(r.status(), 400, "0.05 spent of 0.03");
    gw.gw.flush().await;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if call(&base, &bk, "gpt-4o").await.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "budget never reset");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // /spend/logs: one row per answered call of the key, cache tokens included.
    gw.gw.flush().await;
    let logs: Value = client()
        .get(format!("{base}/spend/logs"))
        .query(&[("api_key", key.as_str())])
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert_eq!(logs[0]["prompt_tokens"], 10000);
    assert_eq!(logs[0]["metadata"]["cache_read_input_tokens"], 8000);
    assert_eq!(logs[0]["team_id"], "t1");
    assert_eq!(cents(logs[0]["spend"].as_f64().unwrap() * 1000.0), 2500);

    // /metrics, liveliness, readiness, /health.
    let m = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("airlock_gateway_requests_total{model=\"gpt-4o\"}"),
        "{m}"
    );
    assert!(m.contains("airlock_gateway_tokens_total{model=\"gpt-4o\",kind=\"cache_read\"}"));
    assert!(m.contains("airlock_gateway_request_errors_total{reason=\"rate_limit\"} "));
    assert!(!m.contains(&key), "no key in metrics");
    let l = client()
        .get(format!("{base}/health/liveliness"))
        .send()
        .await
        .unwrap();
    assert_eq!(l.status(), 200);
    let r: Value = client()
        .get(format!("{base}/health/readiness"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["db"], "connected");
    let h = client().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(h.status(), 401, "health checks need the master key");
    let h: Value = client()
        .get(format!("{base}/health"))
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["healthy_count"], 5, "{h}");
}

// ------------------------------------------------------------------ PostgreSQL

/// A fresh schema on the test PostgreSQL and a URL whose connections use it.
async fn pg_schema(prefix: &str) -> Option<(String, String, sqlx::PgPool)> {
    let Ok(url) = std::env::var("AIRLOCK_TEST_POSTGRES_URL") else {
        if std::env::var("AIRLOCK_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set");
        }
        eprintln!("skipping: AIRLOCK_TEST_POSTGRES_URL not set");
        return None;
    };
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    Some((scoped, schema, admin))
}

/// Wait until the replicas have pushed `requests` into the key's shared rate window, then
/// for a few more sync periods, so that every replica has pulled that total too.
async fn window_reaches(admin: &sqlx::PgPool, schema: &str, requests: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (seen,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(MAX(requests), 0) FROM {schema}.gateway_ratelimit"
        )))
        .fetch_one(admin)
        .await
        .unwrap();
        if seen >= requests {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas never pushed {requests} requests (saw {seen})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(gateway::limits::SYNC_EVERY * 4).await;
}

#[tokio::test]
async fn two_replicas_share_keys_limits_and_spend_postgres() {
    let Some((url, schema, admin)) = pg_schema("gw_replicas").await else {
        return;
    };
    let up = upstream().await;
    let a = start_gateway(&config(&up), Store::connect(&url).await.unwrap()).await;
    let b = start_gateway(&config(&up), Store::connect(&url).await.unwrap()).await;

    // The rpm calls below must fall in one minute window.
    clear_of_minute_end(Duration::from_secs(15)).await;
    // A key made on A works on B at once.
    let key = generate(&a.base, json!({"rpm_limit": 3, "max_budget": 0.06})).await;
    assert_eq!(call(&b.base, &key, "gpt-4o").await.status(), 200);
    // rpm is shared: 1 on B, 1 on A, (sync) 1 on B, then the 4th anywhere is refused.
    assert_eq!(call(&a.base, &key, "gpt-4o").await.status(), 200);
    window_reaches(&admin, &schema, 2).await;
    assert_eq!(call(&b.base, &key, "gpt-4o").await.status(), 200);
    window_reaches(&admin, &schema, 3).await;
    assert_eq!(call(&a.base, &key, "gpt-4o").await.status(), 429);
    assert_eq!(call(&b.base, &key, "gpt-4o").await.status(), 429);

    // Spend is shared: 3 * $0.025 = $0.075 > $0.06, counted in the database atomically.
    a.gw.flush().await;
    b.gw.flush().await;
    let (spend,): (f64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT spend FROM {schema}.gateway_keys"
    )))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(cents(spend * 1000.0), 7500, "{spend}");
    // A budget key used only on A is over budget on B once B re-reads it.
    let bk = generate(&a.base, json!({"max_budget": 0.03})).await;
    assert_eq!(call(&b.base, &bk, "gpt-4o").await.status(), 200); // B caches it at $0
    assert_eq!(call(&a.base, &bk, "gpt-4o").await.status(), 200);
    a.gw.flush().await;
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let s = call(&b.base, &bk, "gpt-4o").await.status();
        if s == 400 {
            break;
        }
        assert!(Instant::now() < deadline, "B never saw A's spend");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Deleted on A: refused on B within seconds.
    let dk = generate(&a.base, json!({})).await;
    assert_eq!(call(&b.base, &dk, "gpt-4o").await.status(), 200);
    let (s, _) = post(
        &format!("{}/key/delete", a.base),
        "sk-master",
        &json!({"keys": [dk]}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(call(&a.base, &dk, "gpt-4o").await.status(), 401);
    let t0 = Instant::now();
    loop {
        if call(&b.base, &dk, "gpt-4o").await.status() == 401 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "B still accepts a deleted key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn max_parallel_requests_hold_across_replicas_postgres() {
    let Some((url, schema, admin)) = pg_schema("gw_parallel").await else {
        return;
    };
    let up = upstream().await;
    up.delay_ms.store(1500, Ordering::SeqCst);
    let a = start_gateway(&config(&up), Store::connect(&url).await.unwrap()).await;
    let b = start_gateway(&config(&up), Store::connect(&url).await.unwrap()).await;
    let key = generate(&a.base, json!({"max_parallel_requests": 2})).await;
    // Two slow requests in flight on A use up the key's two slots…
    let (k1, k2) = (key.clone(), key.clone());
    let (a1, a2) = (a.base.clone(), a.base.clone());
    let r1 = tokio::spawn(async move { call(&a1, &k1, "gpt-4o").await.status() });
    let r2 = tokio::spawn(async move { call(&a2, &k2, "gpt-4o").await.status() });
    // …which B learns at its next sync (every 100 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = call(&b.base, &key, "gpt-4o").await;
    assert_eq!(r.status(), 429, "{}", r.text().await.unwrap());
    assert_eq!(r1.await.unwrap(), 200);
    assert_eq!(r2.await.unwrap(), 200);
    // Once A's requests end, B admits again.
    up.delay_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&b.base, &key, "gpt-4o").await.status(), 200);
    // The slots were leases in the database, one row per replica.
    let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {schema}.gateway_parallel"
    )))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(rows >= 1, "{rows}");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn litellm_database_works_as_is_postgres() {
    let Some((url, schema, admin)) = pg_schema("litellm_db").await else {
        return;
    };
    // LiteLLM's tables, from its own schema.prisma.
    let mut tx = admin.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path TO {schema}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    for stmt in prisma::create_tables_sql() {
        sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}: {stmt}"));
    }
    // Rows as LiteLLM's /key/generate writes them: token = sha256 hex of the key.
    let key = "sk-litellm-existing-0001";
    let hash = gateway::keys::sha256_hex(key);
    sqlx::query(
        r#"INSERT INTO "LiteLLM_TeamTable" (team_id, admins, members, max_budget, spend, models, blocked) VALUES ('team-1', ARRAY[]::text[], ARRAY[]::text[], 10.0, 1.0, ARRAY['gpt-4o','claude'], false)"#,
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(r#"INSERT INTO "LiteLLM_UserTable" (user_id, spend, models) VALUES ('user-1', 0.5, ARRAY[]::text[])"#)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        r#"INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, spend, max_budget, models, team_id, user_id, expires, metadata)
           VALUES ($1, 'sk-...0001', 'migrated', 0.01, 0.05, ARRAY['gpt-4o'], 'team-1', 'user-1', now() + interval '1 day', '{"owner":"ops"}')"#,
    )
    .bind(&hash)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let up = upstream().await;
    let gw = start_gateway(&config(&up), Store::connect(&url).await.unwrap()).await;
    let base = gw.base.clone();
    // The existing key authenticates; its model list applies.
    assert_eq!(call(&base, key, "gpt-4o").await.status(), 200);
    assert_eq!(call(&base, key, "gpt-4o-mini").await.status(), 401);
    let i = info(&base, key).await;
    assert_eq!(i["info"]["key_alias"], "migrated");
    assert_eq!(i["info"]["metadata"]["owner"], "ops");
    // Spend counts in LiteLLM's own columns (key, team, user) and LiteLLM_SpendLogs.
    gw.gw.flush().await;
    let q = |sql: &str| sqlx::query_as::<_, (f64,)>(sqlx::AssertSqlSafe(format!("SELECT {sql}")));
    let (k,) = q(&format!(
        r#"spend FROM {schema}."LiteLLM_VerificationToken" WHERE token = '{hash}'"#
    ))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(cents(k * 1000.0), 3500, "{k}"); // 0.01 + 0.025
    let (t,) = q(&format!(r#"spend FROM {schema}."LiteLLM_TeamTable""#))
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(cents(t * 1000.0), 102500);
    let (u,) = q(&format!(r#"spend FROM {schema}."LiteLLM_UserTable""#))
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(cents(u * 1000.0), 52500);
    let (n, model, tokens): (i64, String, i32) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"SELECT count(*) OVER (), model, total_tokens FROM {schema}."LiteLLM_SpendLogs" WHERE api_key = '{hash}'"#
    )))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!((n, model.as_str(), tokens), (1, "gpt-4o", 11000));
    // Its budget applies: 0.035 + 0.025 = 0.06 > 0.05 after one more call.
    assert_eq!(call(&base, key, "gpt-4o").await.status(), 200);
    assert_eq!(call(&base, key, "gpt-4o").await.status(), 400);
    // A key generated here is a LiteLLM key too (LiteLLM's proxy would accept it).
    let newkey = generate(&base, json!({"models": ["claude"], "team_id": "team-1"})).await;
    let (models,): (Vec<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"SELECT models FROM {schema}."LiteLLM_VerificationToken" WHERE token = $1"#
    )))
    .bind(gateway::keys::sha256_hex(&newkey))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(models, vec!["claude".to_owned()]);
    // Blocked in LiteLLM's table: refused here within seconds.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"UPDATE {schema}."LiteLLM_TeamTable" SET blocked = true"#
    )))
    .execute(&admin)
    .await
    .unwrap();
    let t0 = Instant::now();
    while call(&base, &newkey, "claude").await.status() != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "blocked team still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Airlock's own tables are in their own schema, not among LiteLLM's.
    let (ours,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}' AND table_name LIKE 'gateway_%'"
    )))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(ours, 0);
    let (theirs,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'airlock' AND table_name = 'gateway_ratelimit'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(theirs, 1);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn litellm_user_budget_applies_to_keys_outside_a_team_postgres() {
    let Some((url, schema, admin)) = pg_schema("litellm_user").await else {
        return;
    };
    let mut tx = admin.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path TO {schema}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    for stmt in prisma::create_tables_sql() {
        sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}: {stmt}"));
    }
    // A user with a personal budget of $0.05, $0.02 spent; their key has no budget
    // and no team, so only the user's budget stops it (LiteLLM's _check_user_budget).
    sqlx::query(r#"INSERT INTO "LiteLLM_UserTable" (user_id, max_budget, spend, models) VALUES ('user-b', 0.05, 0.02, ARRAY[]::text[])"#)
        .execute(&mut *tx)
        .await
        .unwrap();
    let key = "sk-litellm-user-budget-01";
    sqlx::query(
        r#"INSERT INTO "LiteLLM_VerificationToken" (token, key_name, spend, models, user_id)
           VALUES ($1, 'sk-...et-01', 0, ARRAY[]::text[], 'user-b')"#,
    )
    .bind(gateway::keys::sha256_hex(key))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let up = upstream().await;
    let gw = start_gateway(&config(&up), Store::connect(&url).await.unwrap()).await;
    // Each gpt-4o call costs $0.025: 0.02 -> 0.045 -> 0.07, then refused.
    assert_eq!(call(&gw.base, key, "gpt-4o").await.status(), 200);
    assert_eq!(call(&gw.base, key, "gpt-4o").await.status(), 200);
    let r = call(&gw.base, key, "gpt-4o").await;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["type"], "budget_exceeded");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("ExceededBudget: User=user-b over budget"),
        "{b}"
    );
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);
    // An unpriced model is refused for a key under a user budget (spend it could not count).
    assert_eq!(call(&gw.base, key, "unpriced").await.status(), 400);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

/// A LiteLLM database with user `user-t` (personal budget $0.05, $0.02 spent) whose key
/// `key` belongs to team `team-t` (no team budget): the personal budget applies to it
/// only with `general_settings.apply_user_budget_to_team_keys: true` (LiteLLM ≥ 1.97,
/// `_user_max_budget_check` in litellm/proxy/auth/auth_checks.py).
async fn team_key_of_budgeted_user(apply: Option<bool>) {
    let Some((url, schema, admin)) = pg_schema("litellm_team_user").await else {
        return;
    };
    let mut tx = admin.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path TO {schema}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    for stmt in prisma::create_tables_sql() {
        sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}: {stmt}"));
    }
    sqlx::query(r#"INSERT INTO "LiteLLM_UserTable" (user_id, max_budget, spend, models) VALUES ('user-t', 0.05, 0.02, ARRAY[]::text[])"#)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        r#"INSERT INTO "LiteLLM_TeamTable" (team_id, admins, members, spend, models, blocked) VALUES ('team-t', ARRAY[]::text[], ARRAY[]::text[], 0, ARRAY[]::text[], false)"#,
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let key = "sk-litellm-team-user-budget";
    sqlx::query(
        r#"INSERT INTO "LiteLLM_VerificationToken" (token, key_name, spend, models, user_id, team_id)
           VALUES ($1, 'sk-...dget', 0, ARRAY[]::text[], 'user-t', 'team-t')"#,
    )
    .bind(gateway::keys::sha256_hex(key))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let up = upstream().await;
    let mut cfg = config(&up);
    if let Some(b) = apply {
        cfg = cfg.replace(
            "general_settings: {master_key: sk-master}",
            &format!(
                "general_settings: {{master_key: sk-master, apply_user_budget_to_team_keys: {b}}}"
            ),
        );
        assert!(cfg.contains("apply_user_budget_to_team_keys"));
    }
    let gw = start_gateway(&cfg, Store::connect(&url).await.unwrap()).await;
    assert!(
        !gw.gw
            .warnings()
            .iter()
            .any(|w| w.contains("apply_user_budget")),
        "{:?}",
        gw.gw.warnings()
    );
    // Each gpt-4o call costs $0.025: the user's spend goes 0.02 -> 0.045 -> 0.07.
    assert_eq!(call(&gw.base, key, "gpt-4o").await.status(), 200);
    assert_eq!(call(&gw.base, key, "gpt-4o").await.status(), 200);
    let r = call(&gw.base, key, "gpt-4o").await;
    if apply == Some(true) {
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["type"], "budget_exceeded");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("ExceededBudget: User=user-t over budget"),
            "{b}"
        );
        assert_eq!(up.calls.load(Ordering::SeqCst), 2);
    } else {
        // Default (and `false`): a team key answers to the team's budget only.
        assert_eq!(r.status(), 200);
        assert_eq!(up.calls.load(Ordering::SeqCst), 3);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn litellm_user_budget_skips_team_keys_by_default_postgres() {
    team_key_of_budgeted_user(None).await;
    team_key_of_budgeted_user(Some(false)).await;
}

#[tokio::test]
async fn apply_user_budget_to_team_keys_holds_team_keys_to_the_user_budget_postgres() {
    team_key_of_budgeted_user(Some(true)).await;
}

/// A TCP relay to PostgreSQL that can hold all traffic (a database that stops answering
/// without closing connections, the failure LiteLLM users hit).
struct Relay {
    addr: std::net::SocketAddr,
    stalled: Arc<AtomicBool>,
}

async fn relay(target: String) -> Relay {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let st = stalled.clone();
    tokio::spawn(async move {
        loop {
            let Ok((c, _)) = l.accept().await else { return };
            let st = st.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(s) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (cr, cw) = c.into_split();
                let (sr, sw) = s.into_split();
                tokio::spawn(pump(cr, sw, st.clone()));
                tokio::spawn(pump(sr, cw, st));
            });
        }
    });
    Relay { addr, stalled }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bounded: a stalled test database never lasts beyond a minute.
        for _ in 0..600 {
            if !stalled.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn stalled_database_costs_requests_nothing_postgres() {
    let Some((url, schema, admin)) = pg_schema("gw_stall").await else {
        return;
    };
    let parsed = reqwest::Url::parse(&url).unwrap();
    let target = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let r = relay(target).await;
    let mut via = parsed.clone();
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(r.addr.port())).unwrap();
    let up = upstream().await;
    let gw = start_gateway(&config(&up), Store::connect(via.as_str()).await.unwrap()).await;
    let base = gw.base.clone();
    let key = generate(&base, json!({"rpm_limit": 100000, "max_budget": 100000})).await;
    assert_eq!(call(&base, &key, "gpt-4o").await.status(), 200);
    let warm = {
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(call(&base, &key, "gpt-4o").await.status(), 200);
        }
        t.elapsed() / 5
    };

    // The database stops answering (connections stay open).
    r.stalled.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    // Long enough to cross the key cache period, the spend writer and the limit sync.
    while t.elapsed() < Duration::from_secs(4) {
        let t1 = Instant::now();
        let resp = call(&base, &key, "gpt-4o").await;
        let limited = resp
            .headers()
            .contains_key("x-ratelimit-remaining-requests");
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        assert!(limited);
        worst = worst.max(t1.elapsed());
    }
    assert!(
        worst < Duration::from_millis(250),
        "a stalled database slowed a request to {worst:?} (warm average {warm:?})"
    );
    let m = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("airlock_gateway_ratelimit_degraded 1"), "{m}");

    // It answers again: the spend made meanwhile lands in the database.
    r.stalled.store(false, Ordering::SeqCst);
    let served = up.calls.load(Ordering::SeqCst) as f64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Option<(f64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT spend FROM {schema}.gateway_keys"
        )))
        .fetch_optional(&admin)
        .await
        .unwrap();
        if got.is_some_and(|(s,)| cents(s * 1000.0) == cents(served * 0.025 * 1000.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spend never caught up: {got:?}, expected {}",
            served * 0.025
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}
