//! Two replicas on one database, each with its own backend (docker on another host) and
//! broker: a starting or surviving replica must never reap, destroy, fail or revoke a live
//! replica's sandboxes, and survivors take over a dead replica's rows exactly once.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::config::{Config, MasterKey};
use crate::credentials::{BrokerError, CredentialBroker, CredentialGrant, GrantRequest};
use crate::lifecycle::{self, ProvisionParams};
use crate::sandbox::fake::FakeBackend;
use crate::sandbox::{BackendKind, Backends, Resources};
use crate::state::AppState;
use crate::store::{NewSandbox, SandboxStatus, Store};

/// Records revocations (also in the backend's call log, when given one, to check order).
#[derive(Default)]
struct RecordingBroker {
    revoked: Mutex<Vec<String>>,
    backend: Option<Arc<FakeBackend>>,
}

#[async_trait]
impl CredentialBroker for RecordingBroker {
    async fn grant(&self, _req: GrantRequest<'_>) -> Result<CredentialGrant, BrokerError> {
        Ok(CredentialGrant::default())
    }
    async fn revoke(&self, sandbox_id: &str) -> Result<(), BrokerError> {
        self.revoked.lock().unwrap().push(sandbox_id.to_string());
        if let Some(fake) = &self.backend {
            fake.lock().calls.push(format!("revoke {sandbox_id}"));
        }
        Ok(())
    }
}

struct Replica {
    state: AppState,
    fake: Arc<FakeBackend>,
    broker: Arc<RecordingBroker>,
}

/// Where the replicas meet: a SQLite file, or (when `AIRLOCK_TEST_POSTGRES_URL` is set) a
/// fresh PostgreSQL schema shared by every replica of the test.
struct Db {
    url: String,
    schema: Option<String>,
    _dir: tempfile::TempDir,
}

fn databases() -> Vec<Db> {
    let dir = || tempfile::tempdir().unwrap();
    let sqlite = {
        let d = dir();
        Db {
            url: format!("sqlite://{}", d.path().join("b.db").display()),
            schema: None,
            _dir: d,
        }
    };
    let mut all = vec![sqlite];
    match std::env::var("AIRLOCK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => all.push(Db {
            url,
            schema: Some(format!("rep_{}", uuid::Uuid::new_v4().simple())),
            _dir: dir(),
        }),
        _ => assert!(
            std::env::var("AIRLOCK_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set"
        ),
    }
    all
}

async fn replica(db: &Db) -> Replica {
    let url = db.url.as_str();
    let config = Config {
        database_url: url.to_string(),
        ..Config::default()
    };
    let store = Store::connect_in_schema(url, db.schema.as_deref())
        .await
        .unwrap();
    let fake = Arc::new(FakeBackend::default());
    let backends = Backends::with_backend(BackendKind::Local, fake.clone(), config.sandbox.clone());
    let broker = Arc::new(RecordingBroker {
        backend: Some(fake.clone()),
        ..RecordingBroker::default()
    });
    let state =
        AppState::new(config, store, backends, MasterKey::new("k")).with_broker(broker.clone());
    state.store.renew_replica(60_000).await.unwrap();
    Replica {
        state,
        fake,
        broker,
    }
}

fn params() -> ProvisionParams {
    ProvisionParams {
        backend: BackendKind::Local,
        image: None,
        task_description: None,
        credentials: Vec::new(),
        ttl_s: 3600,
        resources: Resources::default(),
        session_id: None,
        from_snapshot: None,
        workspace: None,
    }
}

/// A row `a` is in the middle of provisioning (committed, backend not answered yet).
async fn provisioning_row(a: &Replica, id: &str) {
    a.state
        .store
        .insert_sandbox(&NewSandbox {
            id: id.into(),
            backend: BackendKind::Local,
            image: None,
            request: serde_json::json!({}),
            session_id: None,
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();
}

async fn status(store: &Store, id: &str) -> SandboxStatus {
    store.get_sandbox(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn a_starting_replica_leaves_a_live_replicas_sandboxes_alone() {
    for db in databases() {
        a_starting_replica_leaves_a_live_replicas_sandboxes_alone_on(&db).await;
    }
}

async fn a_starting_replica_leaves_a_live_replicas_sandboxes_alone_on(db: &Db) {
    let a = replica(db).await;
    let running = lifecycle::provision(&a.state, params()).await.unwrap().id;
    provisioning_row(&a, "sb-halfway").await;

    // B starts on another host: it cannot see A's sandboxes alive, but its engine lists them
    // (shared labels), as after A created them while B was listing.
    let b = replica(db).await;
    {
        let owner = b.state.store.owner().to_string();
        let mut fake = b.fake.lock();
        fake.labelled.insert(running.clone(), owner.clone());
        fake.labelled.insert("sb-halfway".into(), owner);
    }
    lifecycle::reconcile(&b.state).await.unwrap();

    assert_eq!(
        status(&b.state.store, &running).await,
        SandboxStatus::Running
    );
    assert_eq!(
        status(&b.state.store, "sb-halfway").await,
        SandboxStatus::Provisioning
    );
    assert!(b.fake.lock().destroyed.is_empty(), "B swept A's sandboxes");
    assert!(
        b.broker.revoked.lock().unwrap().is_empty(),
        "B revoked A's grants"
    );
    // And B's periodic pass does not take them over while A lives,
    assert_eq!(lifecycle::adopt_orphans(&b.state).await.unwrap(), 0);
    // nor just after A's lease lapsed (a database outage lapses every lease at once): A gets
    // a lease's grace to renew.
    a.state.store.renew_replica(1).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(lifecycle::adopt_orphans(&b.state).await.unwrap(), 0);
}

#[tokio::test]
async fn the_reaper_reaps_only_its_own_replicas_sandboxes() {
    for db in databases() {
        the_reaper_reaps_only_its_own_replicas_sandboxes_on(&db).await;
    }
}

async fn the_reaper_reaps_only_its_own_replicas_sandboxes_on(db: &Db) {
    let a = replica(db).await;
    let id = lifecycle::provision(&a.state, params()).await.unwrap().id;
    let b = replica(db).await;
    let later = chrono::Utc::now() + chrono::Duration::hours(2);

    assert_eq!(lifecycle::reap_once(&b.state, later).await.unwrap(), 0);
    assert_eq!(status(&a.state.store, &id).await, SandboxStatus::Running);
    assert_eq!(lifecycle::reap_once(&a.state, later).await.unwrap(), 1);
    assert_eq!(status(&a.state.store, &id).await, SandboxStatus::Destroyed);
}

#[tokio::test]
async fn survivors_take_over_a_dead_replicas_sandboxes_once() {
    for db in databases() {
        survivors_take_over_a_dead_replicas_sandboxes_once_on(&db).await;
    }
}

async fn survivors_take_over_a_dead_replicas_sandboxes_once_on(db: &Db) {
    let a = replica(db).await;
    let running = lifecycle::provision(&a.state, params()).await.unwrap().id;
    let gone = lifecycle::provision(&a.state, params()).await.unwrap().id;
    provisioning_row(&a, "sb-halfway").await;
    let b = replica(db).await;
    let c = replica(db).await;
    {
        // B shares A's host: it sees `running` alive and the half-made leftover.
        let owner = b.state.store.owner().to_string();
        let mut fake = b.fake.lock();
        fake.alive.insert(running.clone());
        fake.labelled.insert(running.clone(), owner.clone());
        fake.labelled.insert("sb-halfway".into(), owner);
    }

    // A dies: its lease lapses (here: ends at once).
    a.state.store.retire_replicas(false).await.unwrap();
    assert!(
        !b.state
            .store
            .replica_alive(a.state.store.replica())
            .await
            .unwrap()
    );
    assert_eq!(lifecycle::adopt_orphans(&b.state).await.unwrap(), 3);
    assert_eq!(
        lifecycle::adopt_orphans(&c.state).await.unwrap(),
        0,
        "taken once"
    );

    let row = b.state.store.get_sandbox(&running).await.unwrap().unwrap();
    assert_eq!(
        row.status,
        SandboxStatus::Running,
        "the live one is adopted"
    );
    assert_eq!(row.replica.as_deref(), Some(b.state.store.replica()));
    assert_eq!(
        status(&b.state.store, &gone).await,
        SandboxStatus::Destroyed
    );
    assert_eq!(
        status(&b.state.store, "sb-halfway").await,
        SandboxStatus::Failed
    );
    assert_eq!(
        b.fake.lock().destroyed,
        vec![gone.clone(), "sb-halfway".to_string()]
    );
    let mut revoked = b.broker.revoked.lock().unwrap().clone();
    revoked.sort();
    revoked.dedup();
    let mut expected = vec![gone, "sb-halfway".to_string()];
    expected.sort();
    assert_eq!(revoked, expected);
    // The adopted sandbox is now reaped by B, not by C.
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    assert_eq!(lifecycle::reap_once(&c.state, later).await.unwrap(), 0);
    assert_eq!(lifecycle::reap_once(&b.state, later).await.unwrap(), 1);
}

#[tokio::test]
async fn a_skewed_replica_reaps_an_adopted_sandbox_neither_early_nor_late() {
    for db in databases() {
        a_skewed_replica_reaps_an_adopted_sandbox_neither_early_nor_late_on(&db).await;
    }
}

/// TTLs are set and compared on the database clock: a survivor whose own clock runs two hours
/// ahead (an injected offset) takes over a dead replica's sandbox and keeps it until its TTL
/// really passes; one whose clock lags two hours still reaps a sandbox whose TTL passed.
async fn a_skewed_replica_reaps_an_adopted_sandbox_neither_early_nor_late_on(db: &Db) {
    use crate::store::test_skew;
    test_skew::set(0);
    let a = replica(db).await;
    let id = lifecycle::provision(&a.state, params()).await.unwrap().id;
    let b = replica(db).await;
    b.fake.lock().alive.insert(id.clone());
    a.state.store.retire_replicas(false).await.unwrap();
    assert_eq!(lifecycle::adopt_orphans(&b.state).await.unwrap(), 1);

    test_skew::set(2 * 3_600_000);
    let reaped = lifecycle::reap_due(&b.state).await.unwrap();
    // The API / MCP / code-interpreter expiry check compares on the same clock.
    let row = b.state.store.get_sandbox(&id).await.unwrap().unwrap();
    let usable = crate::api::sandboxes::usable_handle(&row, b.state.store.clock().await.unwrap());
    test_skew::set(0);
    assert_eq!(
        reaped, 0,
        "a brain clock 2 h ahead reaped a sandbox 1 h early"
    );
    assert!(
        usable.is_ok(),
        "a brain clock 2 h ahead refused commands to a live sandbox: {:?}",
        usable.err()
    );
    assert_eq!(status(&b.state.store, &id).await, SandboxStatus::Running);

    let short = ProvisionParams {
        ttl_s: 1,
        ..params()
    };
    let short = lifecycle::provision(&b.state, short).await.unwrap().id;
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    test_skew::set(-2 * 3_600_000);
    let reaped = lifecycle::reap_due(&b.state).await.unwrap();
    test_skew::set(0);
    assert_eq!(
        reaped, 1,
        "a brain clock 2 h behind kept an expired sandbox"
    );
    assert_eq!(
        status(&b.state.store, &short).await,
        SandboxStatus::Destroyed
    );
    assert_eq!(status(&b.state.store, &id).await, SandboxStatus::Running);
}

// --- Lifecycle under backend faults (issue 12, item 9) -----------------------------------

#[tokio::test]
async fn a_delete_during_provisioning_revokes_before_destroying_and_a_failed_destroy_leaks_no_grant()
 {
    let dir = tempfile::tempdir().unwrap();
    let db = Db {
        url: format!("sqlite://{}", dir.path().join("b.db").display()),
        schema: None,
        _dir: dir,
    };
    let a = replica(&db).await;
    {
        let mut fake = a.fake.lock();
        fake.provision_delay_ms = 300;
        fake.fail_destroy = true;
    }
    let state = a.state.clone();
    let pending = tokio::spawn(async move { lifecycle::provision(&state, params()).await });
    let id = loop {
        let rows = a.state.store.list_sandboxes(true, 10).await.unwrap();
        if let Some(row) = rows.first() {
            assert_eq!(row.status, SandboxStatus::Provisioning);
            break row.id.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    // The delete: the provisioning task owns the handle and finishes it.
    let row = lifecycle::destroy(&a.state, &id).await.unwrap();
    assert_eq!(row.status, SandboxStatus::Destroying);
    let outcome = pending.await.unwrap();
    assert!(
        outcome.is_err(),
        "the failed destroy is reported: {outcome:?}"
    );

    let calls = a.fake.lock().calls.clone();
    assert_eq!(
        calls,
        vec![format!("revoke {id}"), format!("destroy {id}")],
        "the grant is revoked before the destroy is tried, so its failure leaks no grant"
    );
    assert_eq!(
        status(&a.state.store, &id).await,
        SandboxStatus::Destroying,
        "left for the reaper"
    );
    // The reaper retries the destroy once the backend is back.
    a.fake.lock().fail_destroy = false;
    let later = chrono::Utc::now() + chrono::Duration::minutes(5);
    assert_eq!(lifecycle::reap_once(&a.state, later).await.unwrap(), 1);
    assert_eq!(status(&a.state.store, &id).await, SandboxStatus::Destroyed);
    assert!(!a.fake.lock().alive.contains(&id));
}

#[tokio::test]
async fn a_health_check_is_retried_before_a_sandbox_is_concluded_lost() {
    for failures in [1, 2] {
        let (kept, checks) = survivor_sees_sandbox_after_failed_checks(failures).await;
        assert_eq!(
            kept,
            SandboxStatus::Running,
            "{failures} failed health check(s) destroyed a working sandbox"
        );
        assert_eq!(checks, failures + 1);
    }
    let (kept, checks) = survivor_sees_sandbox_after_failed_checks(u32::MAX).await;
    assert_eq!(
        kept,
        SandboxStatus::Destroyed,
        "a sandbox that never answers is lost"
    );
    assert_eq!(checks, 3, "three attempts before concluding it is lost");
}

/// A dead replica's running sandbox is taken over by a survivor on the same host whose first
/// `failures` health checks of it fail. Returns the row's status and how many checks were made.
async fn survivor_sees_sandbox_after_failed_checks(failures: u32) -> (SandboxStatus, u32) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db {
        url: format!("sqlite://{}", dir.path().join("b.db").display()),
        schema: None,
        _dir: dir,
    };
    let a = replica(&db).await;
    let id = lifecycle::provision(&a.state, params()).await.unwrap().id;
    let b = replica(&db).await;
    {
        let mut fake = b.fake.lock();
        fake.alive.insert(id.clone());
        fake.alive_failures = failures;
    }
    a.state.store.retire_replicas(false).await.unwrap();
    assert_eq!(lifecycle::adopt_orphans(&b.state).await.unwrap(), 1);
    let checks = b.fake.lock().alive_checks;
    (status(&b.state.store, &id).await, checks)
}
