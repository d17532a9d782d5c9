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

/// Records revocations.
#[derive(Default)]
struct RecordingBroker {
    revoked: Mutex<Vec<String>>,
}

#[async_trait]
impl CredentialBroker for RecordingBroker {
    async fn grant(&self, _req: GrantRequest<'_>) -> Result<CredentialGrant, BrokerError> {
        Ok(CredentialGrant::default())
    }
    async fn revoke(&self, sandbox_id: &str) -> Result<(), BrokerError> {
        self.revoked.lock().unwrap().push(sandbox_id.to_string());
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
    let broker = Arc::new(RecordingBroker::default());
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
