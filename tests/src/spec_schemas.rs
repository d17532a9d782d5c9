//! JSON Schemas of the provider bodies the brain sends and the fakes answer, derived from the
//! providers' pinned specs (OpenAPI component schemas converted to JSON Schema: `nullable` →
//! `["string", "null"]`, `$ref`s inlined), and a validator (`jsonschema`, no network
//! features) the fakes run on every request they get and every response they send. A
//! mismatch is recorded in the fake (`spec_violations()`), so a test fails when the brain or
//! a fake drifts from the published shapes.
//!
//! Sources (see tests/fixtures/specs/README.md for how to fetch them):
//! - e2b-dev/E2B@b8029973aa7da5f741f7bb1a9f833b38a0885438 `spec/openapi.yml` (components
//!   `NewSandbox`, `SandboxNetworkConfig`, `Sandbox`, `ListedSandbox`, `SandboxDetail`,
//!   `ConnectSandbox`, `Error`, `SnapshotInfo`), `spec/envd/process/process.proto` (`StartRequest`),
//!   `spec/envd/filesystem/filesystem.proto` (`ListDirRequest`, `EntryInfo`);
//! - daytona/clients@d94a128145f2dd0ca0d22ba6fd1a5205fc55bcd4 `api-client-go/api/openapi.yaml`
//!   (`CreateSandbox`, `Sandbox`, `SandboxState`, `ListSandboxesResponse`),
//!   `toolbox-api-client-go/api/openapi.yaml` (`ExecuteRequest`, `ExecuteResponse`,
//!   `FileInfo`).
//!
//! Request schemas are closed (`additionalProperties: false`) where the spec leaves them open:
//! a property the spec does not name is a client bug (and Daytona's NestJS validator refuses
//! it with `forbidNonWhitelisted`).

use std::sync::OnceLock;

use serde_json::{Value, json};

/// The bodies checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    E2bNewSandbox,
    E2bConnectSandbox,
    E2bSandbox,
    E2bListedSandbox,
    E2bSandboxDetail,
    E2bError,
    E2bSnapshotInfo,
    EnvdStartRequest,
    EnvdListDirRequest,
    EnvdListDirResponse,
    DaytonaCreateSandbox,
    DaytonaSandbox,
    DaytonaListSandboxesResponse,
    DaytonaExecuteRequest,
    DaytonaExecuteResponse,
    DaytonaFileInfoList,
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn int32_min0() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": 2147483647})
}

const DAYTONA_STATES: [&str; 22] = [
    "creating",
    "restoring",
    "destroyed",
    "destroying",
    "started",
    "stopped",
    "starting",
    "stopping",
    "error",
    "build_failed",
    "pending_build",
    "building_snapshot",
    "unknown",
    "pulling_snapshot",
    "archived",
    "archiving",
    "resizing",
    "snapshotting",
    "forking",
    "pausing",
    "paused",
    "resuming",
];

fn daytona_sandbox() -> Value {
    json!({
        "type": "object",
        "required": ["cpu", "disk", "env", "gpu", "id", "labels", "memory", "name",
            "networkBlockAll", "organizationId", "public", "target", "toolboxProxyUrl", "user"],
        "properties": {
            "id": {"type": "string"}, "organizationId": {"type": "string"},
            "name": {"type": "string"}, "snapshot": {"type": "string"},
            "user": {"type": "string"}, "env": string_map(), "labels": string_map(),
            "public": {"type": "boolean"}, "networkBlockAll": {"type": "boolean"},
            "networkAllowList": {"type": "string"}, "target": {"type": "string"},
            "cpu": {"type": "number"}, "gpu": {"type": "number"},
            "memory": {"type": "number"}, "disk": {"type": "number"},
            "state": {"enum": DAYTONA_STATES},
            "desiredState": {"enum": ["destroyed", "started", "stopped", "resized", "archived", "paused"]},
            "errorReason": {"type": "string"}, "recoverable": {"type": "boolean"},
            "autoStopInterval": {"type": "number"}, "autoArchiveInterval": {"type": "number"},
            "autoDeleteInterval": {"type": "number"},
            "createdAt": {"type": "string"}, "updatedAt": {"type": "string"},
            "sandboxClass": {"enum": ["linux-vm", "container", "android", "windows"]},
            "daemonVersion": {"type": "string"}, "toolboxProxyUrl": {"type": "string"}
        }
    })
}

fn schema(body: Body) -> Value {
    match body {
        Body::E2bNewSandbox => json!({
            "type": "object",
            "required": ["templateID"],
            "additionalProperties": false,
            "properties": {
                "templateID": {"type": "string"},
                "timeout": int32_min0(),
                "autoPause": {"type": "boolean"},
                "autoPauseMemory": {"type": "boolean"},
                "autoResume": {"type": "object"},
                "secure": {"type": "boolean"},
                "allow_internet_access": {"type": "boolean"},
                "network": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "allowPublicTraffic": {"type": "boolean"},
                        "allowOut": {"type": "array", "items": {"type": "string"}},
                        "denyOut": {"type": "array", "items": {"type": "string"}},
                        "egressProxy": {"type": "object"},
                        "maskRequestHost": {"type": "string"},
                        "rules": {"type": "object"}
                    }
                },
                "metadata": string_map(),
                "envVars": string_map(),
                "mcp": {"type": ["object", "null"]},
                "iam": {"type": "object"},
                "volumeMounts": {"type": "array"}
            }
        }),
        Body::E2bConnectSandbox => json!({
            "type": "object", "required": ["timeout"], "additionalProperties": false,
            "properties": {"timeout": int32_min0()}
        }),
        Body::E2bSandbox => json!({
            "type": "object",
            "required": ["templateID", "sandboxID", "clientID", "envdVersion"],
            "properties": {
                "templateID": {"type": "string"}, "sandboxID": {"type": "string"},
                "alias": {"type": "string"}, "clientID": {"type": "string"},
                "envdVersion": {"type": "string"}, "envdAccessToken": {"type": "string"},
                "trafficAccessToken": {"type": ["string", "null"]},
                "domain": {"type": ["string", "null"]}
            }
        }),
        Body::E2bListedSandbox | Body::E2bSandboxDetail => json!({
            "type": "object",
            "required": ["templateID", "sandboxID", "clientID", "startedAt", "cpuCount",
                "memoryMB", "diskSizeMB", "endAt", "state", "envdVersion"],
            "properties": {
                "templateID": {"type": "string"}, "alias": {"type": "string"},
                "sandboxID": {"type": "string"}, "clientID": {"type": "string"},
                "startedAt": {"type": "string"}, "endAt": {"type": "string"},
                "cpuCount": {"type": "integer", "minimum": 1},
                "memoryMB": {"type": "integer", "minimum": 128},
                "diskSizeMB": {"type": "integer", "minimum": 0},
                "metadata": string_map(),
                "state": {"enum": ["running", "paused"]},
                "envdVersion": {"type": "string"},
                "envdAccessToken": {"type": "string"},
                "domain": {"type": ["string", "null"]}
            }
        }),
        Body::E2bError => json!({
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                "error_code": {"type": "string"}}
        }),
        Body::E2bSnapshotInfo => json!({
            "type": "object", "required": ["snapshotID", "names"],
            "properties": {"snapshotID": {"type": "string"},
                "names": {"type": "array", "items": {"type": "string"}}}
        }),
        Body::EnvdStartRequest => json!({
            "type": "object",
            "required": ["process"],
            "additionalProperties": false,
            "properties": {
                "process": {
                    "type": "object", "required": ["cmd"], "additionalProperties": false,
                    "properties": {
                        "cmd": {"type": "string"},
                        "args": {"type": "array", "items": {"type": "string"}},
                        "envs": string_map(),
                        "cwd": {"type": "string"}
                    }
                },
                "pty": {"type": "object"},
                "tag": {"type": "string"},
                "stdin": {"type": "boolean"}
            }
        }),
        Body::EnvdListDirRequest => json!({
            "type": "object", "additionalProperties": false,
            "properties": {"path": {"type": "string"},
                "depth": {"type": "integer", "minimum": 0, "maximum": 4294967295u64}}
        }),
        Body::EnvdListDirResponse => json!({
            "type": "object",
            "properties": {"entries": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "type": {"enum": ["FILE_TYPE_UNSPECIFIED", "FILE_TYPE_FILE", "FILE_TYPE_DIRECTORY", "FILE_TYPE_SYMLINK"]},
                    "path": {"type": "string"},
                    // int64 is a string in proto3-JSON.
                    "size": {"type": "string", "pattern": "^-?[0-9]+$"},
                    "mode": {"type": "integer"}, "permissions": {"type": "string"},
                    "owner": {"type": "string"}, "group": {"type": "string"}
                }
            }}}
        }),
        Body::DaytonaCreateSandbox => json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string"}, "snapshot": {"type": "string"},
                "user": {"type": "string"}, "env": string_map(), "labels": string_map(),
                "public": {"type": "boolean"}, "networkBlockAll": {"type": "boolean"},
                "networkAllowList": {"type": "string"}, "domainAllowList": {"type": "string"},
                "outboundProxyUrl": {"type": "string"}, "otelEndpointOverride": {"type": "string"},
                "target": {"type": "string"}, "cpu": {"type": "integer"},
                "gpu": {"type": "integer"}, "gpuType": {"type": "array"},
                "spot": {"type": "boolean"}, "memory": {"type": "integer"},
                "disk": {"type": "integer"}, "autoStopInterval": {"type": "integer"},
                "autoPauseInterval": {"type": "integer"},
                "autoArchiveInterval": {"type": "integer"},
                "autoDeleteInterval": {"type": "integer"},
                "ttlMinutes": {"type": "integer"}, "volumes": {"type": "array"},
                "buildInfo": {"type": "object"}, "linkedSandbox": {"type": "string"},
                "secrets": {"type": "array"}
            }
        }),
        Body::DaytonaSandbox => daytona_sandbox(),
        Body::DaytonaListSandboxesResponse => json!({
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": daytona_sandbox()},
                "nextCursor": {"type": ["string", "null"]}}
        }),
        Body::DaytonaExecuteRequest => json!({
            "type": "object", "required": ["command"], "additionalProperties": false,
            "properties": {"command": {"type": "string"}, "cwd": {"type": "string"},
                "envs": string_map(), "timeout": {"type": "integer"}}
        }),
        Body::DaytonaExecuteResponse => json!({
            "type": "object", "required": ["result"],
            "properties": {"exitCode": {"type": "integer"}, "result": {"type": "string"}}
        }),
        Body::DaytonaFileInfoList => json!({
            "type": "array",
            "items": {"type": "object", "properties": {
                "group": {"type": "string"}, "isDir": {"type": "boolean"},
                "modTime": {"type": "string"}, "mode": {"type": "string"},
                "modifiedAt": {"type": "string"}, "name": {"type": "string"},
                "owner": {"type": "string"}, "path": {"type": "string"},
                "permissions": {"type": "string"}, "size": {"type": "integer"}
            }}
        }),
    }
}

const ALL: [Body; 16] = [
    Body::E2bNewSandbox,
    Body::E2bConnectSandbox,
    Body::E2bSandbox,
    Body::E2bListedSandbox,
    Body::E2bSandboxDetail,
    Body::E2bError,
    Body::E2bSnapshotInfo,
    Body::EnvdStartRequest,
    Body::EnvdListDirRequest,
    Body::EnvdListDirResponse,
    Body::DaytonaCreateSandbox,
    Body::DaytonaSandbox,
    Body::DaytonaListSandboxesResponse,
    Body::DaytonaExecuteRequest,
    Body::DaytonaExecuteResponse,
    Body::DaytonaFileInfoList,
];

fn validators() -> &'static Vec<(Body, jsonschema::Validator)> {
    static V: OnceLock<Vec<(Body, jsonschema::Validator)>> = OnceLock::new();
    V.get_or_init(|| {
        ALL.iter()
            .map(|b| {
                let v = jsonschema::validator_for(&schema(*b))
                    .unwrap_or_else(|e| panic!("schema {b:?}: {e}"));
                (*b, v)
            })
            .collect()
    })
}

/// The ways `value` breaks `body`'s schema (empty = valid).
pub fn check(body: Body, value: &Value) -> Vec<String> {
    let (_, v) = validators()
        .iter()
        .find(|(b, _)| *b == body)
        .expect("every body has a validator");
    v.iter_errors(value)
        .map(|e| format!("{body:?}: {e} at {}", e.instance_path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_and_rejects_what_the_spec_rejects() {
        assert!(
            check(
                Body::E2bNewSandbox,
                &json!({"templateID": "base", "timeout": 300})
            )
            .is_empty()
        );
        assert!(!check(Body::E2bNewSandbox, &json!({"timeout": 300})).is_empty());
        assert!(
            !check(
                Body::E2bNewSandbox,
                &json!({"templateID": "b", "timeout": -1})
            )
            .is_empty()
        );
        assert!(
            !check(
                Body::E2bNewSandbox,
                &json!({"templateID": "b", "network": {"allowOut": "x"}})
            )
            .is_empty()
        );
        assert!(!check(Body::E2bConnectSandbox, &json!({})).is_empty());
        assert!(check(Body::E2bError, &json!({"code": 502, "message": "m"})).is_empty());
        assert!(!check(Body::DaytonaCreateSandbox, &json!({"ttl": 1})).is_empty());
        assert!(!check(Body::DaytonaExecuteRequest, &json!({"cwd": "/"})).is_empty());
        assert!(!check(Body::DaytonaSandbox, &json!({"id": "x"})).is_empty());
        assert!(!check(Body::EnvdStartRequest, &json!({"process": {"args": []}})).is_empty());
    }
}
