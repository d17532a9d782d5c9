//! The same store tests on SQLite and PostgreSQL. PostgreSQL runs when
//! `AIRLOCK_TEST_POSTGRES_URL` is set (each test in its own schema, so they run in parallel);
//! otherwise it prints a skip line, or fails when `AIRLOCK_REQUIRE_POSTGRES=1`.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{Duration, Utc};
use sqlx::SqlSafeStr;

use super::*;
use crate::sandbox::{BackendKind, SandboxHandle};

/// A fresh database of one engine, removed when dropped (SQLite file / PG schema).
struct TestDb {
    url: String,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("brain.db").display());
        Self {
            url,
            schema: None,
            _dir: Some(dir),
        }
    }

    fn postgres() -> Option<Self> {
        let url = match std::env::var("AIRLOCK_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                if std::env::var("AIRLOCK_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!("AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set");
                }
                eprintln!("skipping PostgreSQL store test: AIRLOCK_TEST_POSTGRES_URL is not set");
                return None;
            }
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        Some(Self {
            url,
            schema: Some(schema),
            _dir: None,
        })
    }

    async fn connect(&self) -> Store {
        Store::connect_in_schema(&self.url, self.schema.as_deref())
            .await
            .unwrap()
    }

    async fn drop_schema(&self) {
        if let Some(schema) = &self.schema {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            let sql = format!("DROP SCHEMA \"{schema}\" CASCADE");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
}

/// Runs `scenario` against SQLite and, when configured, PostgreSQL.
async fn check<F, Fut>(scenario: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = TestDb>,
{
    scenario(TestDb::sqlite()).await;
    if let Some(db) = TestDb::postgres() {
        let db = scenario(db).await;
        db.drop_schema().await;
    }
}

fn new_sandbox(id: &str, expires_in: Duration) -> NewSandbox {
    NewSandbox {
        id: id.into(),
        backend: BackendKind::Local,
        image: Some("img:1".into()),
        request: serde_json::json!({"ttl_s": 60, "credentials": ["A"]}),
        session_id: None,
        expires_at: Utc::now() + expires_in,
    }
}

fn handle(id: &str) -> SandboxHandle {
    SandboxHandle {
        id: id.into(),
        backend: BackendKind::Local,
        backend_ref: "123".into(),
        agent_url: Some("http://127.0.0.1:1".into()),
        agent_token: "tok".into(),
        extra: BTreeMap::from([("root".into(), "/tmp/x".into())]),
    }
}

#[tokio::test]
async fn owner_is_stable_and_migrations_rerun_cleanly() {
    check(|db| async move {
        let first = db.connect().await;
        let owner = first.owner().to_string();
        assert!(owner.starts_with("brain-"));
        first.close().await;
        let second = db.connect().await;
        assert_eq!(second.owner(), owner);
        second.ping().await.unwrap();
        db
    })
    .await;
}

#[tokio::test]
async fn foreign_migrations_in_the_same_table_are_ignored() {
    check(|db| async move {
        let store = db.connect().await;
        // What the gateway will do: its own migrator, versions 2000+, same database.
        let gateway = vec![Migration::new(
            2000,
            "gateway keys".into(),
            MigrationType::Simple,
            "CREATE TABLE gateway_keys (id TEXT PRIMARY KEY)".into_sql_str(),
            false,
        )];
        let mut migrator = Migrator::with_migrations(gateway);
        migrator.set_ignore_missing(true);
        match store.db() {
            Db::Sqlite(pool) => migrator.run(pool).await.unwrap(),
            Db::Postgres(pool) => migrator.run(pool).await.unwrap(),
        }
        store.close().await;
        let again = db.connect().await;
        assert_eq!(again.list_sandboxes(false, 10).await.unwrap(), vec![]);
        db
    })
    .await;
}

#[tokio::test]
async fn sandbox_status_moves_forward_only() {
    check(|db| async move {
        let store = db.connect().await;
        let row = store
            .insert_sandbox(&new_sandbox("sb-1", Duration::hours(1)))
            .await
            .unwrap();
        assert_eq!(row.status, SandboxStatus::Provisioning);
        assert_eq!(row.owner, store.owner());
        assert_eq!(row.handle, None);
        assert_eq!(row.request["credentials"][0], "A");

        assert!(store.set_running("sb-1", &handle("sb-1")).await.unwrap());
        assert!(
            !store.set_running("sb-1", &handle("sb-1")).await.unwrap(),
            "only from provisioning"
        );
        assert!(
            !store.set_failed("sb-1", "late").await.unwrap(),
            "running cannot fail"
        );
        let row = store.get_sandbox("sb-1").await.unwrap().unwrap();
        assert_eq!(row.status, SandboxStatus::Running);
        assert_eq!(row.handle, Some(handle("sb-1")));

        assert!(store.begin_destroy("sb-1").await.unwrap());
        assert!(!store.begin_destroy("sb-1").await.unwrap());
        assert!(
            store
                .set_destroy_error("sb-1", "engine down")
                .await
                .unwrap()
        );
        assert!(store.set_destroyed("sb-1", None).await.unwrap());
        assert!(!store.set_destroyed("sb-1", None).await.unwrap());
        let row = store.get_sandbox("sb-1").await.unwrap().unwrap();
        assert_eq!(row.status, SandboxStatus::Destroyed);
        assert_eq!(row.error.as_deref(), Some("engine down"));
        assert!(row.destroyed_at.is_some());

        store
            .insert_sandbox(&new_sandbox("sb-2", Duration::hours(1)))
            .await
            .unwrap();
        assert!(store.set_failed("sb-2", "no image").await.unwrap());
        let row = store.get_sandbox("sb-2").await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.error.as_deref()),
            (SandboxStatus::Failed, Some("no image"))
        );

        assert!(store.get_sandbox("sb-nope").await.unwrap().is_none());
        assert!(
            store
                .insert_sandbox(&new_sandbox("sb-1", Duration::hours(1)))
                .await
                .is_err(),
            "ids are unique"
        );
        db
    })
    .await;
}

#[tokio::test]
async fn listings_select_by_status_expiry_and_staleness() {
    check(|db| async move {
        let store = db.connect().await;
        for (id, ttl) in [
            ("sb-a", Duration::seconds(-5)),
            ("sb-b", Duration::hours(1)),
            ("sb-c", Duration::seconds(-1)),
        ] {
            store.insert_sandbox(&new_sandbox(id, ttl)).await.unwrap();
        }
        store.set_running("sb-a", &handle("sb-a")).await.unwrap();
        store.set_running("sb-b", &handle("sb-b")).await.unwrap();
        // sb-c stays provisioning: not "expired" (only running sandboxes are reaped by TTL).
        let expired: Vec<_> = store
            .list_expired(Utc::now())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(expired, ["sb-a"]);

        store.begin_destroy("sb-b").await.unwrap();
        assert!(
            store
                .list_stale_destroying(Utc::now() - Duration::minutes(1))
                .await
                .unwrap()
                .is_empty()
        );
        let stale = store
            .list_stale_destroying(Utc::now() + Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].id, "sb-b");

        let mut unfinished: Vec<_> = store
            .list_unfinished()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        unfinished.sort();
        assert_eq!(unfinished, ["sb-a", "sb-b", "sb-c"]);
        assert_eq!(
            store.count_live_by_backend().await.unwrap(),
            vec![("local".to_string(), 2)]
        );

        store.set_destroyed("sb-b", None).await.unwrap();
        assert_eq!(store.list_sandboxes(true, 10).await.unwrap().len(), 2);
        assert_eq!(store.list_sandboxes(false, 10).await.unwrap().len(), 3);
        assert_eq!(store.list_sandboxes(false, 1).await.unwrap().len(), 1);
        db
    })
    .await;
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_across_queries() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store
        .insert_sandbox(&new_sandbox("sb-m", Duration::hours(1)))
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(store.get_sandbox("sb-m").await.unwrap().is_some());
    }
}

#[test]
fn a_second_brain_cannot_lock_the_same_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("brain.db").display()
    );
    let first = lock_sqlite_file(&url).unwrap().expect("a file lock");
    let err = lock_sqlite_file(&url).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another brain"), "{err}");
    drop(first);
    assert!(
        lock_sqlite_file(&url).unwrap().is_some(),
        "free again once the first exits"
    );
    assert!(lock_sqlite_file("sqlite::memory:").unwrap().is_none());
    assert!(lock_sqlite_file("postgres://x/y").unwrap().is_none());
}

#[tokio::test]
async fn audit_heads_keep_the_first_hash_per_seq_and_list_by_seq() {
    check(|db| async move {
        let store = db.connect().await;
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert_eq!(
            store.record_audit_head("log1", 7, &a).await.unwrap(),
            HeadRecord::Added
        );
        assert_eq!(
            store.record_audit_head("log1", 3, &b).await.unwrap(),
            HeadRecord::Added
        );
        assert_eq!(
            store.record_audit_head("log1", 7, &a).await.unwrap(),
            HeadRecord::Known
        );
        assert_eq!(
            store.record_audit_head("log1", 7, &b).await.unwrap(),
            HeadRecord::Conflicts {
                recorded: a.clone()
            }
        );
        store.record_audit_head("log2", 1, &b).await.unwrap();
        let heads = store.audit_heads("log1").await.unwrap();
        let seqs: Vec<(u64, &str)> = heads.iter().map(|h| (h.seq, h.hash.as_str())).collect();
        assert_eq!(seqs, vec![(3, b.as_str()), (7, a.as_str())]);
        assert!(store.audit_heads("nope").await.unwrap().is_empty());
        store.close().await;
        db
    })
    .await;
}

/// Two provisions racing for one persistent workspace: exactly one wins, on SQLite (one
/// brain, concurrent connections) and on PostgreSQL (two replicas on one database). The
/// lease ends with the holder's row, and names are per backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workspace_is_claimed_by_one_live_sandbox_at_a_time() {
    check(|db| async move {
        let first = db.connect().await;
        // PostgreSQL: a second replica on the same database; SQLite: one brain per file.
        let second = if db.schema.is_some() {
            db.connect().await
        } else {
            first.clone()
        };
        let ids: Vec<String> = (0..12).map(|i| format!("sb-ws-{i}")).collect();
        for id in &ids {
            first
                .insert_sandbox(&new_sandbox(id, Duration::seconds(60)))
                .await
                .unwrap();
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(ids.len()));
        let mut tasks = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let store = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let (id, barrier) = (id.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let won = store
                    .claim_workspace(&id, BackendKind::Local, "repo")
                    .await
                    .unwrap()
                    == WorkspaceClaim::Won;
                (id, won)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (id, won) = t.await.unwrap();
            if won {
                winners.push(id);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
        let holder = winners[0].clone();
        assert_eq!(
            first
                .workspace_holder(BackendKind::Local, "repo")
                .await
                .unwrap(),
            Some(holder.clone())
        );
        let loser = ids.iter().find(|id| **id != holder).unwrap().clone();
        // Still held while the holder is running or being destroyed.
        first.set_running(&holder, &handle(&holder)).await.unwrap();
        first.begin_destroy(&holder).await.unwrap();
        assert!(
            second
                .claim_workspace(&loser, BackendKind::Local, "repo")
                .await
                .unwrap()
                != WorkspaceClaim::Won
        );
        // Another name, or the same name on another backend, is a separate workspace.
        assert!(
            second
                .claim_workspace(&loser, BackendKind::Local, "other")
                .await
                .unwrap()
                == WorkspaceClaim::Won
        );
        let docker = format!("{loser}-d");
        let mut d = new_sandbox(&docker, Duration::seconds(60));
        d.backend = BackendKind::Docker;
        first.insert_sandbox(&d).await.unwrap();
        assert!(
            first
                .claim_workspace(&docker, BackendKind::Docker, "repo")
                .await
                .unwrap()
                == WorkspaceClaim::Won
        );
        // The holder's row ends: the workspace is free for the next sandbox.
        first.set_destroyed(&holder, None).await.unwrap();
        assert_eq!(
            first
                .workspace_holder(BackendKind::Local, "repo")
                .await
                .unwrap(),
            None
        );
        let next = ids
            .iter()
            .rev()
            .find(|id| **id != holder && **id != loser)
            .unwrap();
        assert!(
            second
                .claim_workspace(next, BackendKind::Local, "repo")
                .await
                .unwrap()
                == WorkspaceClaim::Won
        );
        // A failed provision frees it too; a row that is no longer provisioning cannot claim.
        first.set_failed(next, "boom").await.unwrap();
        assert!(
            first
                .claim_workspace(next, BackendKind::Local, "repo")
                .await
                .unwrap()
                != WorkspaceClaim::Won
        );
        let last = ids
            .iter()
            .find(|id| ![&holder, &loser, next].contains(id))
            .unwrap();
        assert!(
            first
                .claim_workspace(last, BackendKind::Local, "repo")
                .await
                .unwrap()
                == WorkspaceClaim::Won
        );
        db
    })
    .await;
}

/// The console's sessions list (issue 15) with more sessions than one page may look at:
/// filters and the search run in the query, pages follow the `(created_at, id)` keyset (many
/// sessions share a millisecond), every page looks at no more than [`LIST_WINDOW`] rows, and
/// walking the pages yields exactly the matching sessions, newest first.
#[tokio::test]
async fn sessions_are_filtered_searched_and_paged_in_the_database() {
    use crate::sessions::store::{LIST_WINDOW, NewSessionRow};
    use crate::sessions::{ListFilter, SessionStatus};
    use std::collections::BTreeSet;
    const N: usize = 2500;
    check(|db| async move {
        let store = db.connect().await;
        let kinds = ["api", "slack", "github", "mcp"];
        for i in 0..N {
            let mut origin = serde_json::json!({"kind": kinds[i % 4]});
            if i % 10 == 0 {
                origin["owner"] = "vk:x".into();
            }
            let task = match i {
                42 => "100% done".to_string(),
                i if i % 500 == 7 => format!("deploy the NEEDLE_zz widget {i}"),
                i => format!("task number {i}"),
            };
            store
                .insert_session(&NewSessionRow {
                    id: format!("s{i:05}"),
                    task,
                    model: "m".into(),
                    agent: None,
                    backend: None,
                    credentials: vec![],
                    max_steps: 5,
                    max_cost_usd: None,
                    origin,
                    deadline_at: 0,
                })
                .await
                .unwrap();
        }
        on_pool!(store.db(), |pool| {
            let sql = "UPDATE sessions SET status = 'failed' \
                       WHERE CAST(substr(id, 2) AS BIGINT) % 3 = 0";
            sqlx::query(sql).execute(pool).await.unwrap();
        });
        // SQLite's plan for each leading filter: a walk along an index in its order, never a
        // table scan or a sort of the matches.
        if let Db::Sqlite(pool) = store.db() {
            let filters = [
                ListFilter::default(),
                ListFilter {
                    owner: Some("vk:x".into()),
                    search: Some("x".into()),
                    ..ListFilter::default()
                },
                ListFilter {
                    origin_kind: Some("slack".into()),
                    status: Some(SessionStatus::Failed),
                    ..ListFilter::default()
                },
                ListFilter {
                    status: Some(SessionStatus::Failed),
                    before_ms: Some(i64::MAX),
                    before_id: Some("s".into()),
                    ..ListFilter::default()
                },
            ];
            for f in filters {
                let (sql, args) = store.list_window_sql(&f);
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
                for a in &args {
                    q = match a {
                        crate::sessions::store::Arg::S(s) => q.bind(s.clone()),
                        crate::sessions::store::Arg::I(i) => q.bind(*i),
                    };
                }
                let plan: Vec<String> = q
                    .fetch_all(pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
                    .collect();
                assert!(
                    plan.iter().all(|d| d.contains("USING INDEX sessions_")
                        || d.contains("USING COVERING INDEX sessions_"))
                        && !plan.iter().any(|d| d.contains("TEMP B-TREE")),
                    "{f:?}: {plan:?}"
                );
            }
        }
        let num = |id: &str| id[1..].parse::<usize>().unwrap();
        // Walks every page of `filter`; returns the ids in page order and the pages' sizes.
        let walk = |filter: ListFilter| {
            let store = store.clone();
            async move {
                let mut f = filter;
                let (mut ids, mut sizes) = (Vec::new(), Vec::new());
                loop {
                    let page = store.list_sessions_page(&f).await.unwrap();
                    assert!(page.scanned <= LIST_WINDOW as usize, "{}", page.scanned);
                    sizes.push(page.rows.len());
                    ids.extend(page.rows.into_iter().map(|r| (r.created_at, r.id)));
                    let Some((ms, id)) = page.next else { break };
                    f.before_ms = Some(ms);
                    f.before_id = Some(id);
                    assert!(sizes.len() < 200, "paging does not end");
                }
                // Newest first, each row once (the tie-breaker keeps equal times apart).
                let mut sorted = ids.clone();
                sorted.sort_by(|a, b| b.cmp(a));
                sorted.dedup();
                assert_eq!(sorted, ids, "pages out of order or repeated");
                (ids.into_iter().map(|(_, id)| id).collect::<Vec<_>>(), sizes)
            }
        };
        let base = ListFilter {
            limit: 50,
            ..ListFilter::default()
        };
        let set = |ids: &[String]| ids.iter().map(|id| num(id)).collect::<BTreeSet<_>>();
        let want =
            |pred: &dyn Fn(usize) -> bool| (0..N).filter(|i| pred(*i)).collect::<BTreeSet<_>>();

        // Everything: 50 full pages.
        let (all, sizes) = walk(base.clone()).await;
        assert_eq!(all.len(), N);
        assert!(
            sizes[..sizes.len() - 1].iter().all(|s| *s == 50),
            "{sizes:?}"
        );
        // One origin (its index leads): full pages, exactly that origin's sessions.
        let (slack, sizes) = walk(ListFilter {
            origin_kind: Some("slack".into()),
            ..base.clone()
        })
        .await;
        assert_eq!(set(&slack), want(&|i| i % 4 == 1));
        assert!(
            sizes[..sizes.len() - 1].iter().all(|s| *s == 50),
            "{sizes:?}"
        );
        // Status and origin together.
        let (both, _) = walk(ListFilter {
            origin_kind: Some("github".into()),
            status: Some(SessionStatus::Failed),
            ..base.clone()
        })
        .await;
        assert_eq!(set(&both), want(&|i| i % 4 == 2 && i % 3 == 0));
        // A virtual key's sessions, searched.
        let (mine, _) = walk(ListFilter {
            owner: Some("vk:x".into()),
            search: Some("number 1".into()),
            ..base.clone()
        })
        .await;
        assert_eq!(
            set(&mine),
            want(&|i| i % 10 == 0 && i != 42 && i % 500 != 7 && i.to_string().starts_with('1'))
        );
        // A rare needle, any case: the first page looks at one window only and says where
        // to go on; the walk finds all five.
        let rare = ListFilter {
            search: Some("needle_ZZ".into()),
            ..base.clone()
        };
        let first = store.list_sessions_page(&rare).await.unwrap();
        assert_eq!(first.scanned, LIST_WINDOW as usize);
        assert!(first.next.is_some());
        let (found, _) = walk(rare.clone()).await;
        assert_eq!(set(&found), want(&|i| i % 500 == 7));
        assert_eq!(store.list_sessions(&rare).await.unwrap().len(), 5);
        // LIKE wildcards in the search are literal characters.
        let (pct, _) = walk(ListFilter {
            search: Some("100%".into()),
            ..base.clone()
        })
        .await;
        assert_eq!(pct, ["s00042"]);
        let (under, _) = walk(ListFilter {
            search: Some("_".into()),
            ..base.clone()
        })
        .await;
        assert_eq!(set(&under), want(&|i| i % 500 == 7));
        // By id.
        let (by_id, _) = walk(ListFilter {
            search: Some("S0123".into()),
            ..base.clone()
        })
        .await;
        assert_eq!(set(&by_id), want(&|i| (1230..1240).contains(&i)));
        db
    })
    .await;
}

/// A workspace delete racing claims of it, round after round, on SQLite (concurrent
/// connections) and PostgreSQL (two replicas): in every round exactly one side wins. A
/// winning claim makes the delete report the holder; a delete under way makes every claim
/// fail with `Deleting`, until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workspace_delete_and_a_claim_exclude_each_other() {
    check(|db| async move {
        let first = db.connect().await;
        let second = if db.schema.is_some() {
            db.connect().await
        } else {
            first.clone()
        };
        let (mut deletes_won, mut claims_won) = (0, 0);
        for round in 0..30 {
            let id = format!("sb-wsdel-{round}");
            first
                .insert_sandbox(&new_sandbox(&id, Duration::seconds(60)))
                .await
                .unwrap();
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
            let (claimer, deleter) = if round % 2 == 0 {
                (first.clone(), second.clone())
            } else {
                (second.clone(), first.clone())
            };
            let b = barrier.clone();
            let claim_id = id.clone();
            let claim = tokio::spawn(async move {
                b.wait().await;
                claimer
                    .claim_workspace(&claim_id, BackendKind::Local, "repo")
                    .await
                    .unwrap()
            });
            let delete = tokio::spawn(async move {
                barrier.wait().await;
                deleter
                    .begin_workspace_delete(BackendKind::Local, "repo")
                    .await
                    .unwrap()
            });
            let (claim, delete) = (claim.await.unwrap(), delete.await.unwrap());
            let holder = first
                .workspace_holder(BackendKind::Local, "repo")
                .await
                .unwrap();
            let deleting = first
                .workspace_deleting(BackendKind::Local, "repo")
                .await
                .unwrap();
            match (claim, delete) {
                (WorkspaceClaim::Won, Some(h)) => {
                    assert_eq!(h, id, "round {round}: the delete names the holder");
                    assert_eq!(holder, Some(id.clone()));
                    assert!(!deleting, "round {round}: a refused delete leaves no mark");
                    claims_won += 1;
                    // The holder ends; the next round's workspace is free again.
                    first.set_failed(&id, "done").await.unwrap();
                }
                (WorkspaceClaim::Deleting, None) => {
                    assert_eq!(
                        holder, None,
                        "round {round}: no live sandbox on a deleted workspace"
                    );
                    assert!(deleting);
                    // Still refused while the delete is under way, from either replica.
                    let again = format!("{id}-again");
                    first
                        .insert_sandbox(&new_sandbox(&again, Duration::seconds(60)))
                        .await
                        .unwrap();
                    assert_eq!(
                        second
                            .claim_workspace(&again, BackendKind::Local, "repo")
                            .await
                            .unwrap(),
                        WorkspaceClaim::Deleting
                    );
                    first
                        .end_workspace_delete(BackendKind::Local, "repo")
                        .await
                        .unwrap();
                    deletes_won += 1;
                }
                other => panic!("round {round}: exactly one side wins, got {other:?}"),
            }
        }
        assert!(deletes_won + claims_won == 30);
        // Once the delete ended, the name can be claimed again (a fresh workspace).
        let last = "sb-wsdel-last";
        first
            .insert_sandbox(&new_sandbox(last, Duration::seconds(60)))
            .await
            .unwrap();
        assert_eq!(
            second
                .claim_workspace(last, BackendKind::Local, "repo")
                .await
                .unwrap(),
            WorkspaceClaim::Won
        );
        // And a delete while it is held is refused, changing nothing.
        assert_eq!(
            first
                .begin_workspace_delete(BackendKind::Local, "repo")
                .await
                .unwrap(),
            Some(last.to_string())
        );
        assert!(
            !first
                .workspace_deleting(BackendKind::Local, "repo")
                .await
                .unwrap()
        );
        db
    })
    .await;
}

/// Crash-safe snapshots (migration 191): a snapshot's row is `pending` until completed and
/// is not a snapshot until then; a gone replica's pending rows are taken over once, by
/// compare-and-set, and a taken-over row can no longer be completed by its first replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_snapshots_are_taken_over_once_their_replica_is_gone() {
    check(|db| async move {
        let first = db.connect().await;
        let second = db.connect().await;
        first.renew_replica(60_000).await.unwrap();
        second.renew_replica(60_000).await.unwrap();
        let row = |id: &str| SnapshotRow {
            id: id.into(),
            backend: BackendKind::Local,
            image: Some("img:1".into()),
            source_sandbox: "sb-1".into(),
            backend_ref: String::new(),
            size_bytes: 0,
            created_at: Utc::now(),
        };
        for id in ["snap-a", "snap-b"] {
            first.begin_snapshot(&row(id)).await.unwrap();
        }
        assert_eq!(
            first.snapshot_state("snap-a").await.unwrap(),
            Some(SnapshotState::Pending)
        );
        assert_eq!(
            first.get_snapshot("snap-a").await.unwrap(),
            None,
            "not usable yet"
        );
        let mut done = row("snap-a");
        done.backend_ref = "ref-a".into();
        done.size_bytes = 42;
        assert!(first.complete_snapshot(&done).await.unwrap());
        let got = first.get_snapshot("snap-a").await.unwrap().unwrap();
        assert_eq!((got.backend_ref.as_str(), got.size_bytes), ("ref-a", 42));
        // A live replica's pending snapshot is nobody else's.
        assert!(!second.has_orphan_snapshots(0).await.unwrap());
        assert!(second.claim_orphan_snapshots(0).await.unwrap().is_empty());
        // Its replica stops: the pending one (only) is taken over, once.
        first.retire_replicas(false).await.unwrap();
        assert!(second.has_orphan_snapshots(0).await.unwrap());
        let claimed = second.claim_orphan_snapshots(0).await.unwrap();
        assert_eq!(
            claimed,
            vec![OrphanSnapshot {
                id: "snap-b".into(),
                backend: BackendKind::Local
            }]
        );
        assert!(second.claim_orphan_snapshots(0).await.unwrap().is_empty());
        let mut late = row("snap-b");
        late.backend_ref = "ref-b".into();
        assert!(
            !first.complete_snapshot(&late).await.unwrap(),
            "a taken-over snapshot cannot be completed"
        );
        second.discard_snapshot("snap-b").await.unwrap();
        assert_eq!(
            second.snapshot_state("snap-b").await.unwrap(),
            Some(SnapshotState::Discarded)
        );
        assert_eq!(second.get_snapshot("snap-b").await.unwrap(), None);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(second.forget_discarded_snapshots(0).await.unwrap(), 1);
        assert_eq!(second.snapshot_state("snap-b").await.unwrap(), None);
        assert_eq!(
            second.snapshot_state("snap-a").await.unwrap(),
            Some(SnapshotState::Ready),
            "a completed snapshot is kept"
        );
        db
    })
    .await;
}
