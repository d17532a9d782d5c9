use std::path::{Path, PathBuf};

use super::verify::Head;
use super::*;

const SECRET: &str = "ghp_REALsecretVALUE0123456789abcdefXYZW";

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        sandbox: format!("sb-{}", i % 3),
        session: i.is_multiple_of(2).then(|| format!("sess-{i}")),
        event: if i.is_multiple_of(4) {
            EventKind::Block
        } else {
            EventKind::Swap
        },
        host: "api.github.com".into(),
        port: 443,
        method: "GET".into(),
        path: format!("/repos/x/y?page={i}&access_token={SECRET}"),
        credential: Some("GITHUB_TOKEN".into()),
        decision: if i.is_multiple_of(4) {
            Decision::Deny
        } else {
            Decision::Allow
        },
        reason: if i.is_multiple_of(4) {
            "credential_not_allowed_for_host".into()
        } else {
            "bound_host".into()
        },
        status: (i.is_multiple_of(4)).then_some(403),
        traceparent: None,
    }
}

/// Writes `n` records to a fresh log and returns (dir, path).
async fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    for i in 0..n {
        log.append(event(i)).await.unwrap();
    }
    log.close().await.unwrap();
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

#[test]
fn sanitize_path_keeps_keys_only() {
    for (input, want) in [
        ("/x", "/x"),
        ("/x?a=1&b=2", "/x?a=&b="),
        ("/x?a=1&b=2#frag", "/x?a=&b="),
        ("/x?flag&k=v=w", "/x?flag&k="),
        ("/x?", "/x?"),
        ("/x#a=1", "/x"),
        (&format!("/x?token={SECRET}"), "/x?token="),
    ] {
        assert_eq!(sanitize_path(input), want, "{input}");
    }
}

/// The writer's line (the trace id written by hand) is the line serde_json makes of the
/// same record, byte for byte, traced or not, with strings that need escaping, under both
/// hashers.
#[test]
fn the_writer_s_line_is_the_serialised_record() {
    let tp = airlock_telemetry::TraceParent::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let odd = AuditEvent {
        sandbox: "sb-\"quoted\"\\ \u{1} é".into(),
        reason: "line\nbreak".into(),
        status: Some(502),
        ..event(3)
    };
    for hasher in [ChainHasher::Sha256, ChainHasher::hmac(b"k")] {
        for (i, ev) in [event(0), event(1), odd.clone()].into_iter().enumerate() {
            for traceparent in [None, tp.map(std::sync::Arc::new)] {
                let ev = AuditEvent {
                    traceparent: traceparent.clone(),
                    ..ev.clone()
                };
                let (ts, prev) = ("2026-11-23T14:05:09.123Z", "ab".repeat(32));
                let mut want =
                    AuditRecord::unsealed(i as u64 + 1, ts.into(), prev.clone(), ev.clone());
                want.hash = want.compute_hash_with(&hasher);
                let mut out = b"before".to_vec();
                let hash = AuditRecord::write_new_line(
                    i as u64 + 1,
                    ts.into(),
                    prev,
                    ev,
                    &mut out,
                    &hasher,
                );
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    format!("before{}", want.to_line())
                );
                assert_eq!(hash, want.hash.as_bytes());
                assert_eq!(
                    want.trace_id.as_deref(),
                    traceparent.map(|_| "0af7651916cd43dd8448eb211c80319c")
                );
            }
        }
    }
}

#[test]
fn canonical_form_and_hash_are_as_documented() {
    let r = AuditRecord::seal(
        1,
        "2026-11-23T14:05:09.123Z".into(),
        GENESIS_PREV.into(),
        event(1),
    );
    let body = r.canonical_body();
    assert!(body.starts_with(r#"{"seq":1,"ts":"2026-11-23T14:05:09.123Z","sandbox":"sb-1","session":null,"event":"swap","host":"api.github.com","port":443,"method":"GET","path":"/repos/x/y?page=&access_token=","credential":"GITHUB_TOKEN","decision":"allow","reason":"bound_host","status":null,"prev":"000"#), "{body}");
    // hash = sha256(prev ‖ body), independently computed
    let mut input = GENESIS_PREV.as_bytes().to_vec();
    input.extend_from_slice(body.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    assert_eq!(r.hash, hex::encode(digest.as_ref()));
    // the line is the body with `,"hash":…` before the final brace
    let line = r.to_line();
    assert_eq!(
        line,
        format!("{},\"hash\":\"{}\"}}", &body[..body.len() - 1], r.hash)
    );
}

#[tokio::test]
async fn intact_chain_verifies_and_continues_across_reopen() {
    let (_dir, path) = log_with(5).await;
    let report = verify(&path).unwrap();
    assert_eq!(report.records, 5);
    assert!(report.is_ok());

    let log = AuditLog::open(&path).await.unwrap();
    log.append(event(5)).await.unwrap();
    log.append(event(6)).await.unwrap();
    log.flush().await.unwrap();
    assert_eq!(verify(&path).unwrap().records, 7);
    log.close().await.unwrap();
    assert!(
        log.append(event(7)).await.is_err(),
        "closed log refuses appends"
    );

    let recs = read_records(&path, &Filter::default()).unwrap();
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(recs[0].prev, GENESIS_PREV);
    assert!(
        recs[0].ts.ends_with('Z') && recs[0].ts.len() == 24,
        "{}",
        recs[0].ts
    );
}

#[tokio::test]
async fn empty_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "").unwrap();
    assert_eq!(verify(&path).unwrap().records, 0);
    let log = AuditLog::open(&path).await.unwrap();
    log.close().await.unwrap();
}

/// Applies `tamper` to the lines of a 6-record log; verify must report `seq`.
async fn check_tamper(name: &str, tamper: impl FnOnce(&mut Vec<String>), seq: u64) {
    let (_dir, path) = log_with(6).await;
    let mut l = lines(&path);
    tamper(&mut l);
    write_lines(&path, &l);
    let report = verify(&path).unwrap();
    let broken = report
        .broken
        .unwrap_or_else(|| panic!("{name}: tampering not detected"));
    assert_eq!(broken.seq, seq, "{name}: {}", broken.reason);
    // the proxy refuses to continue a broken log
    match AuditLog::open(&path).await {
        Err(AuditError::Broken { seq: s, .. }) => assert_eq!(s, seq, "{name}"),
        other => panic!("{name}: open should refuse, got {other:?}"),
    }
    // and the CLI says so
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = audit_cli_with(
        AuditCommand::Verify {
            file: path.clone(),
            head: None,
            key_env: None,
        },
        &mut out,
        &mut err,
    );
    assert_eq!(code, 1, "{name}");
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with(&format!("audit log broken at seq {seq}: ")),
        "{name}: {out}"
    );
}

#[tokio::test]
async fn tampering_is_detected_at_the_right_seq() {
    check_tamper(
        "edit a field",
        |l| l[2] = l[2].replace("api.github.com", "evil.test"),
        3,
    )
    .await;
    check_tamper(
        "edit the decision",
        |l| l[3] = l[3].replace("\"allow\"", "\"deny\""),
        4,
    )
    .await;
    check_tamper(
        "edit and recompute hash",
        |l| {
            let mut r: AuditRecord = serde_json::from_str(&l[1]).unwrap();
            r.host = "evil.test".into();
            r.hash = r.compute_hash();
            l[1] = r.to_line();
        },
        3,
    )
    .await;
    check_tamper(
        "delete a line",
        |l| {
            l.remove(3);
        },
        4,
    )
    .await;
    check_tamper(
        "delete the first line",
        |l| {
            l.remove(0);
        },
        1,
    )
    .await;
    check_tamper("swap two lines", |l| l.swap(1, 2), 2).await;
    check_tamper(
        "duplicate a line",
        |l| {
            let dup = l[2].clone();
            l.insert(3, dup);
        },
        4,
    )
    .await;
    check_tamper(
        "non-canonical whitespace",
        |l| l[4] = l[4].replacen(':', ": ", 1),
        5,
    )
    .await;
    check_tamper("blank line", |l| l.insert(2, String::new()), 3).await;
}

#[tokio::test]
async fn truncated_last_line_is_detected() {
    let (_dir, path) = log_with(4).await;
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 20]).unwrap();
    let b = verify(&path).unwrap().broken.unwrap();
    assert_eq!(b.seq, 4, "{}", b.reason);
    // a complete last line without its newline is also refused
    std::fs::write(&path, &text[..text.len() - 1]).unwrap();
    assert_eq!(verify(&path).unwrap().broken.unwrap().seq, 4);
    // read_records skips a partial trailing line (it may be being written)
    assert_eq!(read_records(&path, &Filter::default()).unwrap().len(), 3);
}

#[tokio::test]
async fn cli_ok() {
    let (_dir, path) = log_with(3).await;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        audit_cli_with(
            AuditCommand::Verify {
                file: path,
                head: None,
                key_env: None,
            },
            &mut out,
            &mut err
        ),
        0
    );
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("ok: 3 records, head 3:")
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let missing = AuditCommand::Verify {
        file: "/nonexistent/a.jsonl".into(),
        head: None,
        key_env: None,
    };
    assert_eq!(audit_cli_with(missing, &mut out, &mut err), 1);
    assert!(String::from_utf8(err).unwrap().contains("cannot verify"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_contiguous_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                log.append(event(t * 1000 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    log.flush().await.unwrap();
    let report = verify(&path).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 32 * 200);
    drop(log); // last handle: the writer syncs and stops
}

#[tokio::test]
async fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    assert!(matches!(
        AuditLog::open(&path).await,
        Err(AuditError::Locked { .. })
    ));
    log.close().await.unwrap();
}

#[tokio::test]
async fn no_record_ever_contains_a_secret_value() {
    // By construction: AuditEvent has no field for a value; the only
    // free-form field that could carry one, the query, loses its values.
    let (_dir, path) = log_with(20).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(SECRET), "secret leaked into the audit log");
    assert!(!text.contains("REALsecret"));
    assert!(text.contains("access_token="));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn read_records_filters() {
    let (_dir, path) = log_with(12).await;
    let all = read_records(&path, &Filter::default()).unwrap();
    assert_eq!(all.len(), 12);
    let check = |f: Filter, want: usize| {
        let got = read_records(&path, &f).unwrap();
        assert_eq!(got.len(), want, "{f:?}");
        got
    };
    for r in check(
        Filter {
            sandbox: Some("sb-1".into()),
            ..Default::default()
        },
        4,
    ) {
        assert_eq!(r.sandbox, "sb-1");
    }
    check(
        Filter {
            session: Some("sess-4".into()),
            ..Default::default()
        },
        1,
    );
    check(
        Filter {
            decision: Some(Decision::Deny),
            ..Default::default()
        },
        3,
    );
    check(
        Filter {
            credential: Some("GITHUB_TOKEN".into()),
            ..Default::default()
        },
        12,
    );
    check(
        Filter {
            credential: Some("OTHER".into()),
            ..Default::default()
        },
        0,
    );
    let last = check(
        Filter {
            limit: Some(2),
            ..Default::default()
        },
        2,
    );
    assert_eq!(last[1].seq, 12);
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    check(
        Filter {
            since: Some(future),
            ..Default::default()
        },
        0,
    );
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    check(
        Filter {
            since: Some(past),
            ..Default::default()
        },
        12,
    );
    assert!(
        read_records(Path::new("/nonexistent/x.jsonl"), &Filter::default())
            .unwrap()
            .is_empty()
    );
    assert_eq!("deny".parse::<Decision>().unwrap(), Decision::Deny);
    assert_eq!("scrub".parse::<EventKind>().unwrap(), EventKind::Scrub);
}

fn last_hash(path: &Path) -> String {
    let l = lines(path);
    let rec: AuditRecord = serde_json::from_str(l.last().unwrap()).unwrap();
    rec.hash
}

/// A commit returns once its line is in the file; the head (memory,
/// sidecar) names it.
#[tokio::test]
async fn commit_is_in_the_file_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    log.append(event(1)).await.unwrap();
    let head = log.commit(vec![event(2), event(3)]).await.unwrap();
    // No flush: the commit itself guarantees the write.
    assert_eq!(lines(&path).len(), 3);
    assert_eq!(head.seq, 3);
    assert_eq!(head.hash, last_hash(&path));
    assert_eq!(log.head(), head);
    let side = std::fs::read_to_string(head_path(&path)).unwrap();
    assert_eq!(side.parse::<Head>().unwrap(), head);
    log.close().await.unwrap();
}

/// `--head` detects a cut-off tail; the proxy refuses to continue such a
/// log, or a vanished one, unless told to start a new chain.
#[tokio::test]
async fn cut_tail_and_vanished_log_are_detected() {
    let (_dir, path) = log_with(5).await;
    let head: Head = std::fs::read_to_string(head_path(&path))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(head.seq, 5);
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    // Without a head the shorter chain verifies; with it, it does not.
    assert!(verify(&path).unwrap().is_ok());
    let r = verify_with(&path, &ChainHasher::Sha256, Some(&head)).unwrap();
    let b = r.broken.unwrap();
    assert_eq!(b.seq, 4, "{}", b.reason);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = audit_cli_with(
        AuditCommand::Verify {
            file: path.clone(),
            head: Some(head.clone()),
            key_env: None,
        },
        &mut out,
        &mut err,
    );
    assert_eq!(code, 1);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("audit log broken at seq 4: ")
    );
    match AuditLog::open(&path).await {
        Err(AuditError::Broken { seq: 4, reason, .. }) => {
            assert!(reason.contains("--new-audit-chain"), "{reason}")
        }
        other => panic!("cut log must be refused, got {other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
    match AuditLog::open(&path).await {
        Err(AuditError::Broken { seq: 1, .. }) => {}
        other => panic!("vanished log must be refused, got {other:?}"),
    }
    let opts = AuditOpenOptions {
        new_chain: true,
        ..Default::default()
    };
    let log = AuditLog::open_with(&path, opts).await.unwrap();
    assert_eq!(log.head().seq, 0);
    log.commit(vec![event(1)]).await.unwrap();
    log.close().await.unwrap();
    // The new chain is now the known one: a plain restart continues it.
    let log = AuditLog::open(&path).await.unwrap();
    assert_eq!(log.head().seq, 1);
    log.close().await.unwrap();
}

/// With a key the chain is an HMAC chain: a log rewritten and re-hashed
/// without the key does not verify.
#[tokio::test]
async fn hmac_chain_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = ChainHasher::hmac(b"k3y-for-the-audit-chain");
    let log = AuditLog::open_with(
        &path,
        AuditOpenOptions {
            hasher: key.clone(),
            new_chain: false,
        },
    )
    .await
    .unwrap();
    for i in 0..4 {
        log.append(event(i)).await.unwrap();
    }
    log.close().await.unwrap();
    assert!(verify_with(&path, &key, None).unwrap().is_ok());
    assert_eq!(verify(&path).unwrap().broken.unwrap().seq, 1);
    // Rewrite record 2 and re-hash the whole chain as an attacker without the key can.
    let mut prev = GENESIS_PREV.to_string();
    let mut out = Vec::new();
    for line in lines(&path) {
        let mut r: AuditRecord = serde_json::from_str(&line).unwrap();
        if r.seq == 2 {
            r.decision = Decision::Allow;
            r.reason = "nothing to see".into();
        }
        r.prev = prev.clone();
        r.hash = r.compute_hash_with(&ChainHasher::hmac(b"guessed key"));
        prev = r.hash.clone();
        out.push(r.to_line());
    }
    write_lines(&path, &out);
    assert_eq!(
        verify_with(&path, &key, None).unwrap().broken.unwrap().seq,
        1
    );
    // And the proxy (with its key) refuses to continue it.
    let refused = AuditLog::open_with(
        &path,
        AuditOpenOptions {
            hasher: key,
            new_chain: true,
        },
    )
    .await;
    assert!(matches!(refused, Err(AuditError::Broken { seq: 1, .. })));
}

/// A log that cannot be written fails closed: the commit errs, the log is
/// unhealthy for good, and the file is cut back to complete lines that
/// verify. A tiny tmpfs gives a real ENOSPC (the suite runs as root).
#[tokio::test]
async fn full_disk_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs (needs root)");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let path = mnt.join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    let mut failed = None;
    for i in 0..1000 {
        if let Err(e) = log.commit(vec![event(i)]).await {
            failed = Some((i, e));
            break;
        }
    }
    let (n, e) = failed.expect("a 16k filesystem fills up");
    assert!(n > 5, "some records fit first");
    assert!(e.to_string().contains("write failed"), "{e}");
    assert!(!log.is_healthy());
    assert!(log.commit(vec![event(1)]).await.is_err());
    assert!(log.append(event(1)).await.is_err());
    let r = verify(&path).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.records as usize, n);
    assert_eq!(log.head().seq as usize, n);
}

/// `verify_live` (the brain's `brain audit verify`) checks every recorded
/// head, skips a last line still being written, and reports a cut tail or a
/// replaced record at the first bad seq.
#[tokio::test]
async fn verify_live_checks_every_recorded_head() {
    let (_dir, path) = log_with(6).await;
    let all = lines(&path);
    let head_at = |n: usize| Head {
        seq: n as u64,
        hash: serde_json::from_str::<AuditRecord>(&all[n - 1])
            .unwrap()
            .hash,
    };
    let heads = vec![head_at(4), head_at(2), head_at(6)];
    let h = ChainHasher::Sha256;
    let ok = verify_live(&path, &h, &heads).unwrap();
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(ok.records, 6);

    // A record being written (no newline yet) is not read.
    let mut partial = std::fs::read(&path).unwrap();
    partial.extend_from_slice(br#"{"seq":7,"ts":"#);
    std::fs::write(&path, &partial).unwrap();
    let ok = verify_live(&path, &h, &heads).unwrap();
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(ok.records, 6);

    // The last two records cut off: the chain still verifies on its own,
    // but the head recorded at seq 6 is not reached.
    write_lines(&path, &all[..4]);
    assert!(verify(&path).unwrap().is_ok());
    let cut = verify_live(&path, &h, &heads).unwrap();
    let b = cut.broken.expect("a cut tail must fail");
    assert_eq!(b.seq, 5);
    assert!(b.reason.contains("cut off"), "{}", b.reason);

    // A head whose hash the log does not reproduce (the log was replaced
    // by another chain) fails at that head's seq.
    write_lines(&path, &all);
    let mut other_heads = heads.clone();
    other_heads[1].hash = "a".repeat(64);
    let replaced = verify_live(&path, &h, &other_heads).unwrap();
    let b = replaced.broken.expect("replaced");
    assert_eq!(b.seq, 2);
    assert!(b.reason.contains("replaced"), "{}", b.reason);

    // No heads at all: a plain chain check; an empty file is zero records.
    std::fs::write(&path, b"").unwrap();
    assert_eq!(verify_live(&path, &h, &[]).unwrap().records, 0);
    assert_eq!(
        verify_live(&path, &h, &heads).unwrap().broken.unwrap().seq,
        1
    );
}

#[tokio::test]
async fn a_traced_grant_s_records_carry_the_trace_id_and_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).await.unwrap();
    let traced = |tp: &str| AuditEvent {
        traceparent: airlock_telemetry::TraceParent::parse(tp).map(std::sync::Arc::new),
        ..event(1)
    };
    log.append(event(0)).await.unwrap();
    log.append(traced(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ))
    .await
    .unwrap();
    // A malformed value is not a trace: no key, as in an untraced record.
    log.append(traced("00-nothex-b7ad6b7169203331-01"))
        .await
        .unwrap();
    log.close().await.unwrap();
    let lines = lines(&path);
    assert!(!lines[0].contains("trace_id"), "{}", lines[0]);
    assert!(
        lines[1].contains(r#""status":null,"trace_id":"0af7651916cd43dd8448eb211c80319c","prev":"#),
        "{}",
        lines[1]
    );
    assert!(
        !lines[1].contains("b7ad6b7169203331"),
        "only the trace id: {}",
        lines[1]
    );
    assert!(!lines[2].contains("trace_id"), "{}", lines[2]);
    let report = verify(&path).unwrap();
    assert!(report.is_ok() && report.records == 3, "{report:?}");
    let recs = read_records(&path, &Filter::default()).unwrap();
    assert_eq!(
        recs[1].trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    // Editing the trace id breaks the chain like any other field.
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("0af7651916cd43dd", "1af7651916cd43dd");
    write_lines(&path, &edited);
    assert!(!verify(&path).unwrap().is_ok());
}

/// A limited read goes backwards from the end (or from `before_seq`, found by bisection)
/// and returns exactly what a full forward scan keeps: the last `limit` matches, oldest
/// first, over a log several read chunks long, with a partial line being written at its end.
#[tokio::test]
async fn limited_reads_from_the_tail_equal_a_full_scan() {
    let (_dir, path) = log_with(2500).await;
    // A record being written (no newline yet) is not read.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":2501,\"ts\":").unwrap();
    let all = read_records(&path, &Filter::default()).unwrap();
    assert_eq!(all.len(), 2500);
    assert!(std::fs::metadata(&path).unwrap().len() > 4 * 64 * 1024);
    let filters = [
        Filter::default(),
        Filter {
            sandbox: Some("sb-1".into()),
            ..Default::default()
        },
        Filter {
            decision: Some(Decision::Deny),
            ..Default::default()
        },
        Filter {
            session: Some("sess-8".into()),
            ..Default::default()
        },
        Filter {
            host: Some("API.GITHUB.COM".into()),
            ..Default::default()
        },
        Filter {
            host: Some("other.test".into()),
            ..Default::default()
        },
    ];
    for base in filters {
        for before in [
            None,
            Some(1),
            Some(2),
            Some(700),
            Some(1999),
            Some(2500),
            Some(9999),
        ] {
            for limit in [1usize, 7, 200, 5000] {
                let f = Filter {
                    before_seq: before,
                    limit: Some(limit),
                    ..base.clone()
                };
                let want: Vec<u64> = {
                    let m: Vec<u64> = all.iter().filter(|r| f.matches(r)).map(|r| r.seq).collect();
                    m[m.len().saturating_sub(limit)..].to_vec()
                };
                let got: Vec<u64> = read_records(&path, &f)
                    .unwrap()
                    .iter()
                    .map(|r| r.seq)
                    .collect();
                assert_eq!(got, want, "{f:?}");
            }
        }
    }
    // `since` stops the backwards read at the first older record.
    let since = chrono::DateTime::parse_from_rfc3339(&all[2000].ts)
        .unwrap()
        .with_timezone(&chrono::Utc);
    let got = read_records(
        &path,
        &Filter {
            since: Some(since),
            limit: Some(10_000),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(got.iter().all(|r| r.ts >= all[2000].ts));
    assert_eq!(got.last().unwrap().seq, 2500);
}
