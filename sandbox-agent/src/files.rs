//! `GET /files`, `PUT /files`, `GET /files/list`.
//!
//! Path policy (one function, [`resolve_path`]): relative paths resolve against the agent's
//! `--workdir`; absolute paths are used as given, and `..`/symlinks are not restricted. The
//! sandbox itself is the isolation boundary and the agent runs as the sandbox user, so a
//! caller that can run `cat /etc/passwd` through `/exec` gains nothing from a path jail here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use airlock_wire::FileEntry;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ApiError, ApiQuery, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
}

/// `PUT /files` response: where the bytes went and how many.
#[derive(Debug, Serialize)]
pub struct Written {
    path: String,
    size: u64,
}

/// The one place a caller-supplied path becomes a filesystem path (see module docs).
pub fn resolve_path(workdir: &Path, raw: &str) -> Result<PathBuf, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::BadRequest("path must not be empty".into()));
    }
    if raw.contains('\0') {
        return Err(ApiError::BadRequest("path must not contain NUL".into()));
    }
    let p = Path::new(raw);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        workdir.join(p)
    })
}

pub async fn read(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let path = resolve_path(&state.config.workdir, &q.path)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::from_io(&path, "open", e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::from_io(&path, "stat", e))?;
    if meta.is_dir() {
        return Err(ApiError::BadRequest(format!(
            "{} is a directory (use /files/list)",
            path.display()
        )));
    }
    // Stream in chunks so a large file never sits in memory whole. No Content-Length: the
    // file may change while we read it, and a wrong length would corrupt the response.
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            // Yield the error once (hyper aborts the body), then end.
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn write(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.setup.begin_use();
    let path = resolve_path(&state.config.workdir, &q.path)?;
    let limit = state.config.max_upload_bytes;
    let too_large =
        || ApiError::PayloadTooLarge(format!("upload exceeds the limit of {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir.to_path_buf(), name.to_string_lossy().into_owned()),
        _ => {
            return Err(ApiError::BadRequest(format!(
                "{} does not name a file",
                path.display()
            )));
        }
    };
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::from_io(&dir, "create directory", e))?;

    // Write to a sibling temp file and rename, so a failed or oversized upload never leaves
    // a half-written file at `path`.
    static UPLOADS: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.airlock-upload-{}-{}",
        std::process::id(),
        UPLOADS.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_body(&tmp, body, limit).await;
    let size = match result {
        Ok(size) => size,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(match e {
                WriteError::TooLarge => too_large(),
                WriteError::Io(e) => ApiError::from_io(&tmp, "write", e),
                WriteError::Body(msg) => {
                    ApiError::BadRequest(format!("could not read request body: {msg}"))
                }
            });
        }
    };
    // Keep the mode of a file we replace (an overwritten script stays executable).
    if let Ok(meta) = tokio::fs::metadata(&path).await {
        let _ = tokio::fs::set_permissions(&tmp, meta.permissions()).await;
    }
    if let Err(e) = tokio::fs::rename(&tmp, &path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ApiError::from_io(&path, "replace", e));
    }
    Ok((
        StatusCode::OK,
        Json(Written {
            path: path.display().to_string(),
            size,
        }),
    )
        .into_response())
}

enum WriteError {
    TooLarge,
    Io(std::io::Error),
    Body(String),
}

async fn write_body(tmp: &Path, body: Body, limit: u64) -> Result<u64, WriteError> {
    let mut file = tokio::fs::File::create(tmp).await.map_err(WriteError::Io)?;
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| WriteError::Body(e.to_string()))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(WriteError::TooLarge);
        }
        file.write_all(&chunk).await.map_err(WriteError::Io)?;
    }
    file.flush().await.map_err(WriteError::Io)?;
    Ok(size)
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<Vec<FileEntry>>, ApiError> {
    let path = resolve_path(&state.config.workdir, &q.path)?;
    let mut dir = tokio::fs::read_dir(&path)
        .await
        .map_err(|e| ApiError::from_io(&path, "list", e))?;
    let mut entries = Vec::new();
    while let Some(entry) = dir
        .next_entry()
        .await
        .map_err(|e| ApiError::from_io(&path, "list", e))?
    {
        // Follow symlinks for size/kind; a dangling link is listed as what it is.
        let meta = match tokio::fs::metadata(entry.path()).await {
            Ok(m) => m,
            Err(_) => match tokio::fs::symlink_metadata(entry.path()).await {
                Ok(m) => m,
                // Vanished between readdir and stat: skip it.
                Err(_) => continue,
            },
        };
        entries.push(FileEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            size: meta.len(),
            is_dir: meta.is_dir(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(entries))
}
