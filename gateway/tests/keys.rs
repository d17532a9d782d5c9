//! Virtual keys, budgets, model restrictions, and spend persisted across a
//! restart (SQLite always; PostgreSQL when AIRLOCK_TEST_POSTGRES_URL is set).

mod common;
use common::*;
use gateway::store::Store;
use serde_json::{Value, json};

fn config(oa: &Fake) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}
  - model_name: cheap
    litellm_params: {{model: openai/my-model, api_base: '{}/v1', input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
general_settings: {{master_key: sk-master}}
"#,
        oa.base(),
        oa.base()
    )
}

async fn generate(base: &str, body: Value) -> Value {
    let (s, b) = post(&format!("{base}/key/generate"), "sk-master", &body).await;
    assert_eq!(s, 200, "{b}");
    json(&b)
}

async fn key_info(base: &str, key: &str) -> Value {
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

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// The whole key lifecycle against one store, restarting the gateway in between.
async fn lifecycle(store_a: Store, store_b: Store) {
    let oa = fake_openai().await;
    let gw = start_gateway(&config(&oa), store_a).await;
    let base = gw.base.clone();

    // Auth: no key / wrong key.
    let (s, b) = post(&format!("{base}/v1/chat/completions"), "", &chat("cheap")).await;
    assert_eq!(s, 401, "{b}");
    let (s, b) = post(
        &format!("{base}/v1/chat/completions"),
        "sk-nope",
        &chat("cheap"),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(json(&b)["error"]["type"], "authentication_error");

    // Only the master key generates keys.
    let k = generate(&base, json!({"max_budget": 0.05, "models": ["cheap"], "expires": "30d", "metadata": {"team": "a"}})).await;
    let key = k["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-"));
    assert_eq!(k["max_budget"], 0.05);
    assert!(k["expires"].is_string());
    let (s, _) = post(&format!("{base}/key/generate"), &key, &json!({})).await;
    assert_eq!(s, 401);

    // Model not allowed -> 401 as LiteLLM answers it, in the caller's format, upstream untouched.
    let (s, b) = post(
        &format!("{base}/v1/chat/completions"),
        &key,
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("key not allowed to access model"), "{b}");
    assert_eq!(oa.count(), 0);
    // /v1/models only lists allowed models.
    let models: Value = client()
        .get(format!("{base}/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);

    // Each call: 11 prompt + 7 completion tokens = 0.011 + 0.014 = $0.025.
    let (s, b) = post(&format!("{base}/v1/chat/completions"), &key, &chat("cheap")).await;
    assert_eq!(s, 200, "{b}");
    // x-api-key works too (Anthropic clients).
    let r = client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "cheap", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(oa.count(), 2);

    // Over budget (0.05 spent of 0.05) -> 400 before the upstream is called, in both formats.
    let (s, b) = post(&format!("{base}/v1/chat/completions"), &key, &chat("cheap")).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(json(&b)["error"]["type"], "budget_exceeded");
    let r = client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "cheap", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert!(v["error"]["message"].as_str().unwrap().contains("Budget"));
    assert_eq!(oa.count(), 2, "upstream not called when over budget");

    gw.gw.flush().await;
    let info = key_info(&base, &key).await;
    let spend = info["info"]["spend"].as_f64().unwrap();
    assert!((spend - 0.05).abs() < 1e-9, "{info}");
    let ms = &info["info"]["model_spend"][0];
    assert_eq!(ms["model"], "cheap");
    assert_eq!(ms["requests"], 2);
    assert_eq!(ms["input_tokens"], 22);
    assert_eq!(ms["output_tokens"], 14);

    // A second key to delete later.
    let k2 = generate(&base, json!({"expires": "1h"})).await;
    let key2 = k2["key"].as_str().unwrap().to_owned();
    let (s, _) = post(
        &format!("{base}/v1/chat/completions"),
        &key2,
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(s, 200);
    gw.gw.flush().await;
    drop(gw);

    // Restart on the same database: keys and spend survive.
    let gw = start_gateway(&config(&oa), store_b).await;
    let base = gw.base.clone();
    let info = key_info(&base, &key).await;
    assert!(
        (info["info"]["spend"].as_f64().unwrap() - 0.05).abs() < 1e-9,
        "{info}"
    );
    assert_eq!(info["info"]["metadata"]["team"], "a");
    let (s, _) = post(&format!("{base}/v1/chat/completions"), &key, &chat("cheap")).await;
    assert_eq!(s, 400, "still over budget after restart");
    let (s, _) = post(
        &format!("{base}/v1/chat/completions"),
        &key2,
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(s, 200);
    gw.gw.flush().await;
    let info2 = key_info(&base, &key2).await;
    assert_eq!(info2["info"]["model_spend"][0]["requests"], 2);
    // gpt-4o uses the built-in price table: 11 * 2.5e-6 + 7 * 1e-5 per call.
    let expect = 2.0 * (11.0 * 2.5e-6 + 7.0 * 1e-5);
    assert!(
        (info2["info"]["spend"].as_f64().unwrap() - expect).abs() < 1e-9,
        "{info2}"
    );

    // Delete.
    let (s, b) = post(
        &format!("{base}/key/delete"),
        "sk-master",
        &json!({"keys": [key2]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["deleted_keys"][0], key2);
    let (s, _) = post(
        &format!("{base}/v1/chat/completions"),
        &key2,
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn keys_budgets_and_spend_survive_restart_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gw.db").display());
    lifecycle(
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn keys_budgets_and_spend_survive_restart_postgres() {
    let Ok(url) = std::env::var("AIRLOCK_TEST_POSTGRES_URL") else {
        if std::env::var("AIRLOCK_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set");
        }
        eprintln!("skipping: AIRLOCK_TEST_POSTGRES_URL not set");
        return;
    };
    // A unique schema per test run.
    let schema = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = || async {
        use std::str::FromStr;
        let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
            .unwrap()
            .options([("search_path", schema.as_str())]);
        Store::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect_with(opts)
                .await
                .unwrap(),
        )
    };
    lifecycle(pool().await, pool().await).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn expired_key_is_refused() {
    let oa = fake_openai().await;
    let gw = start_gateway(&config(&oa), Store::Memory).await;
    let k = generate(&gw.base, json!({"expires": "2001-01-01T00:00:00Z"})).await;
    let (s, b) = post(
        &format!("{}/v1/chat/completions", gw.base),
        k["key"].as_str().unwrap(),
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("Expired Key"), "{b}");
    assert_eq!(oa.count(), 0);
    let (s, b) = post(
        &format!("{}/key/generate", gw.base),
        "sk-master",
        &json!({"expires": "soon"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
}

#[tokio::test]
async fn migrations_coexist_with_other_migrators() {
    // The brain's migrations (1..999) and ours (2000+) share _sqlx_migrations.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let store = Store::connect(&url).await.unwrap();
    let Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    let mut brain = sqlx::migrate::Migrator::with_migrations(vec![sqlx::migrate::Migration::new(
        1,
        "brain".into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str("CREATE TABLE sessions (id TEXT PRIMARY KEY)"),
        false,
    )]);
    brain.set_ignore_missing(true);
    brain.run(pool).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    brain.run(pool).await.unwrap();
}
