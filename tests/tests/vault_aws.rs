//! End to end, `type: aws_sigv4`: a real brain (`--backend docker`, embedded vault proxy)
//! provisions real docker sandboxes from the test image `airlock-sandbox-aws:test`
//! (`bash images/sandbox-aws/build.sh`: the sandbox image + Debian's `awscli`). The AWS CLI
//! inside signs with the sandbox's stub key pair; the proxy verifies that and re-signs with
//! the real keys; a local fake S3 (`tests/fakes/fake_s3.py`, written separately from the
//! proxy's signer) accepts only SigV4 made with the REAL key pair.
//!
//! Exercised: S3 GET/HEAD (`aws s3 cp` down), a multipart PUT (`aws s3 cp` of a 9 MB file),
//! a presigned URL (`aws s3 presign` fetched with curl), and a streaming
//! `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (aws-chunked) PUT from a small signer in Python
//! (`tests/fakes/sigv4_stream_put.py`; botocore does not implement signed chunks). Attacks:
//! another sandbox's stub pair, a forged/absent signature, a body changed after signing
//! (whole and chunked), and a presigned URL replayed after the grant's revocation.
//!
//! Skips (printing why) when no engine answers or the test image is missing, unless
//! `AIRLOCK_REQUIRE_DOCKER=1`.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use airlock_tests::vault::DockerCleanup as Cleanup;
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use serde_json::{Value, json};

const IMAGE: &str = "airlock-sandbox-aws:test";
const HOST: &str = "s3.airlock.test";
const REAL_KEY_ID: &str = "AKIAREALKEY7EXAMPLE2";
const REAL_SECRET: &str = "RealSecretKey/0123456789abcdefghijKLMNOP";
const REAL_SECRET_ENV: &str = "REAL_AWS_SECRET_ACCESS_KEY";

fn ready() -> bool {
    airlock_tests::vault::docker_ready_with(
        "vault aws e2e",
        IMAGE,
        "bash images/sandbox-aws/build.sh",
    )
}

/// The fake S3 (python) with a fresh CA and a leaf for [`HOST`].
struct FakeS3 {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeS3 {
    fn start(dir: &Path) -> FakeS3 {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![HOST.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        std::fs::write(dir.join("s3-ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("s3.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("s3-key.pem"), leaf_key.serialize_pem()).unwrap();
        let log = dir.join("s3.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fakes/fake_s3.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--cert", &dir.join("s3.pem").display().to_string()])
            .args(["--key", &dir.join("s3-key.pem").display().to_string()])
            .args([
                "--access-key-id",
                REAL_KEY_ID,
                "--secret-env",
                REAL_SECRET_ENV,
            ])
            .args(["--log", &log.display().to_string()])
            .env(REAL_SECRET_ENV, REAL_SECRET)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 fake_s3.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("fake S3 port");
        FakeS3 { child, port, log }
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn vault_yaml(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("vault.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\n\
             ca: {{ cert: ca.pem, key: ca-key.pem }}\n\
             upstream_roots: [s3-ca.pem]\n\
             audit_log: audit.jsonl\n\
             egress: {{ default: deny }}\n\
             network:\n  allow_private: true\n  resolve: {{ \"{HOST}\": \"127.0.0.1\" }}\n\
             credentials:\n  AWS:\n    type: aws_sigv4\n    access_key_id: {REAL_KEY_ID}\n    \
             secret_access_key_env: {REAL_SECRET_ENV}\n    region: us-east-1\n    \
             allowed_hosts: [\"{HOST}:{port}\"]\n"
        ),
    )
    .unwrap();
    path
}

async fn provision(brain: &BrainProcess) -> (String, Cleanup) {
    let (status, v) = brain
        .post_json("/v1/sandboxes", &json!({"credentials": ["AWS"]}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "provision: {v}\n{}",
        brain.log()
    );
    let id = v["id"].as_str().unwrap().to_string();
    (id.clone(), Cleanup(id))
}

async fn sh(brain: &BrainProcess, id: &str, command: &str) -> (i64, String, String) {
    let (status, v) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": command, "timeout_s": 120}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "exec {command:?}: {v}");
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        v["stdout"].as_str().unwrap_or("").to_string(),
        v["stderr"].as_str().unwrap_or("").to_string(),
    )
}

async fn ok(brain: &BrainProcess, id: &str, command: &str) -> String {
    let (code, out, err) = sh(brain, id, command).await;
    assert_eq!(
        code,
        0,
        "{command}\nstdout: {out}\nstderr: {err}\n{}",
        brain.log()
    );
    out
}

/// Writes the streaming signer into the sandbox and returns the command prefix to run it.
async fn install_stream_client(brain: &BrainProcess, id: &str) {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fakes/sigv4_stream_put.py"
    ))
    .unwrap();
    ok(
        brain,
        id,
        &format!("cat > /tmp/put.py <<'PYEOF'\n{script}\nPYEOF"),
    )
    .await;
}

#[tokio::test]
async fn aws_cli_in_a_sandbox_signs_with_stubs_and_the_proxy_resigns() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s3 = FakeS3::start(dir.path());
    let yaml = vault_yaml(dir.path(), s3.port);
    let brain = BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: format!(
            "vault:\n  config: {}\nsandbox:\n  docker:\n    image: {IMAGE}\n",
            yaml.display()
        ),
        env: vec![(REAL_SECRET_ENV.into(), REAL_SECRET.into())],
        ..Default::default()
    })
    .await;
    let ep = format!("--endpoint-url https://{HOST}:{}", s3.port);
    let cfg =
        "export AWS_CONFIG_FILE=/tmp/aws.cfg; aws configure set default.s3.addressing_style path;";

    let (a, _ca) = provision(&brain).await;
    let env = ok(&brain, &a, "env | grep ^AWS_ | sort").await;
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not set: {env}"))
            .to_string()
    };
    let (a_id, a_secret) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"));
    assert!(
        a_id.starts_with("AKIA") && a_id.len() == 20 && a_id != REAL_KEY_ID,
        "{a_id}"
    );
    assert_eq!(a_secret.len(), 40);
    assert_ne!(a_secret, REAL_SECRET);
    assert_eq!(var("AWS_REGION"), "us-east-1");
    assert!(!env.contains(REAL_SECRET) && !env.contains(REAL_KEY_ID));

    // Multipart PUT (9 MB > the CLI's 8 MB threshold), GET back, small PUT, list.
    ok(
        &brain,
        &a,
        &format!(
            "{cfg} head -c 9437184 /dev/urandom > /tmp/big && aws {ep} s3 cp /tmp/big s3://bkt/big \
         && aws {ep} s3 cp s3://bkt/big /tmp/big2 && cmp /tmp/big /tmp/big2 \
         && echo hello-from-sandbox > /tmp/small && aws {ep} s3 cp /tmp/small s3://bkt/small \
         && aws {ep} s3 ls s3://bkt/"
        ),
    )
    .await;
    // A presigned URL, fetched with curl through the proxy.
    let url = ok(
        &brain,
        &a,
        &format!("{cfg} aws {ep} s3 presign s3://bkt/small --expires-in 300"),
    )
    .await
    .trim()
    .to_string();
    assert!(
        url.contains("X-Amz-Signature=") && url.contains(&a_id),
        "{url}"
    );
    let got = ok(&brain, &a, &format!("curl -sSf '{url}'")).await;
    assert_eq!(got, "hello-from-sandbox\n");
    // Signed aws-chunked upload, then read back with the CLI.
    install_stream_client(&brain, &a).await;
    ok(&brain, &a, &format!(
        "python3 /tmp/put.py https://{HOST}:{}/bkt/streamed 200000 8192 && \
         {cfg} aws {ep} s3 cp s3://bkt/streamed /tmp/streamed && test $(wc -c < /tmp/streamed) = 200000",
        s3.port
    ))
    .await;

    let recs = s3.records();
    let count = |f: &dyn Fn(&Value) -> bool| recs.iter().filter(|r| f(r)).count();
    assert!(
        recs.iter()
            .all(|r| r["status"].as_u64().is_some_and(|s| s < 300)),
        "{recs:?}"
    );
    assert!(
        count(&|r| r["method"] == "POST" && r["path"] == "/bkt/big") >= 2,
        "multipart: {recs:?}"
    );
    assert!(
        count(&|r| r["method"] == "PUT" && r["path"] == "/bkt/big") >= 2,
        "parts: {recs:?}"
    );
    assert_eq!(count(&|r| r["form"] == "presigned"), 1, "{recs:?}");
    assert_eq!(
        count(&|r| r["payload"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" && r["status"] == 200),
        1,
        "{recs:?}"
    );
    let accepted = recs.len();

    // The audit log names the type and the real key id, never a secret or a stub secret.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains(&format!(
            "credential_type: aws_sigv4, access_key_id: {REAL_KEY_ID}"
        )),
        "{audit}"
    );
    for s in [REAL_SECRET, a_secret.as_str(), a_id.as_str()] {
        assert!(!audit.contains(s), "audit holds a secret or stub");
    }

    // --- attacks ---
    let (b, _cb) = provision(&brain).await;
    install_stream_client(&brain, &b).await;
    let blocked = |out: &str| {
        out.contains("403") || out.contains("Forbidden") || out.contains("AccessDenied")
    };
    // 1. Another sandbox's stub pair.
    let (code, out, err) = sh(&brain, &b, &format!(
        "{cfg} AWS_ACCESS_KEY_ID={a_id} AWS_SECRET_ACCESS_KEY='{a_secret}' aws {ep} s3 cp s3://bkt/small -"
    ))
    .await;
    assert!(code != 0 && blocked(&format!("{out}{err}")), "{out}{err}");
    // 2. Its own key id with a forged signature, and with no signature.
    let (code, out, _) = sh(&brain, &b, &format!(
        "curl -s -o /dev/null -w '%{{http_code}}' https://{HOST}:{port}/bkt/small \
         -H 'x-amz-date: '$(date -u +%Y%m%dT%H%M%SZ) -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
         -H \"Authorization: AWS4-HMAC-SHA256 Credential=$AWS_ACCESS_KEY_ID/$(date -u +%Y%m%d)/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=$(printf '0%.0s' $(seq 64))\"",
        port = s3.port
    ))
    .await;
    assert_eq!((code, out.as_str()), (0, "403"));
    let (_, out, _) = sh(&brain, &b, &format!(
        "curl -s -o /dev/null -w '%{{http_code}}' https://{HOST}:{}/bkt/small -H \"x-amz-meta-k: $AWS_ACCESS_KEY_ID\"",
        s3.port
    ))
    .await;
    assert_eq!(out, "403");
    // 3. A body changed after signing: whole (payload hash) and aws-chunked.
    let (code, out, err) = sh(
        &brain,
        &b,
        &format!(
            "python3 /tmp/put.py https://{HOST}:{}/bkt/tampered 5000 0 tamper",
            s3.port
        ),
    )
    .await;
    assert!(code != 0 && out.contains("403"), "{out}{err}");
    let (code, out, err) = sh(
        &brain,
        &b,
        &format!(
            "python3 /tmp/put.py https://{HOST}:{}/bkt/tampered 100000 8192 tamper",
            s3.port
        ),
    )
    .await;
    assert!(code != 0, "tampered chunk accepted: {out}{err}");
    // 4. A's presigned URL replayed from B after A's grant is revoked.
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{a}")).await;
    assert!(status.is_success(), "{status}");
    let (_, out, _) = sh(
        &brain,
        &b,
        &format!("curl -s -o /dev/null -w '%{{http_code}}' '{url}'"),
    )
    .await;
    assert_eq!(out, "403", "replayed presigned URL");

    // No attack got anything accepted by S3. Only the tampered aws-chunked upload reached it
    // at all: its head and first chunks had left when a chunk failed the stub chain, and the
    // proxy then cut the upload off, so S3 saw an incomplete body.
    let recs = s3.records();
    for r in &recs[accepted..] {
        assert!(
            r["path"] == "/bkt/tampered" && r["status"].as_u64().is_some_and(|s| s >= 400),
            "an attack reached S3: {:?}",
            &recs[accepted..]
        );
    }
    // A block's record is queued for the audit writer, not awaited (it lets nothing out), so
    // the last one may reach the file just after the refused request's answer.
    let reasons = [
        "foreign_stub",
        "aws_signature_mismatch",
        "aws_unsigned",
        "aws_payload_hash_mismatch",
        "aws_body_not_as_signed",
        "aws_key_not_granted",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let missing: Vec<_> = reasons.iter().filter(|r| !audit.contains(*r)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {missing:?} block in the audit log:\n{audit}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
