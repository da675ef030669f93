//! How the origin answers one request, following its [`OriginOptions`](crate::OriginOptions).

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::body::ChunkBody;
use crate::origin::{BodyLength, OriginRequest, OriginState, Ranges};

pub(crate) type OriginBody = Either<Empty<Bytes>, ChunkBody>;

/// What one request asked for.
struct Asked {
    method: Method,
    path: String,
    range: Option<String>,
}

/// Answers `req` and logs it in the origin's request list.
pub(crate) async fn respond(
    state: Arc<OriginState>,
    req: Request<Incoming>,
) -> Response<OriginBody> {
    let asked = Asked {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        range: req
            .headers()
            .get(hyper::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let response = answer(&state, &asked).await;
    state.requests.lock().unwrap().push(OriginRequest {
        method: asked.method.to_string(),
        path: asked.path,
        range: asked.range,
        status: response.status().as_u16(),
    });
    response
}

async fn answer(state: &Arc<OriginState>, asked: &Asked) -> Response<OriginBody> {
    if asked.method != Method::GET && asked.method != Method::HEAD {
        return status(405);
    }
    if let Some(code) = state.options.status {
        return status(code);
    }
    let owed = state
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if owed.is_ok() {
        return status(503);
    }
    // `/status/NNN` answers NNN, for the error-mapping tests.
    if let Some(code) = asked
        .path
        .strip_prefix("/status/")
        .and_then(|c| c.parse().ok())
    {
        return status(code);
    }
    let file = state.files.lock().unwrap().get(&asked.path).cloned();
    let Some(data) = file else {
        return status(404);
    };
    if asked.method == Method::HEAD {
        if let Some(code) = state.options.head_status {
            return status(code);
        }
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 && asked.method == Method::GET {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    serve_file(state, asked, data)
}

fn serve_file(state: &Arc<OriginState>, asked: &Asked, data: Bytes) -> Response<OriginBody> {
    let len = data.len() as u64;
    let options = &state.options;
    let range = match (options.ranges, asked.range.as_deref()) {
        (Ranges::Honoured, Some(header)) => parse_range(header, len),
        _ => Ok(None),
    };
    let (code, start, end) = match range {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last + 1),
        Err(()) => {
            return Response::builder()
                .status(416)
                .header("content-range", format!("bytes */{len}"))
                .body(Either::Left(Empty::new()))
                .unwrap();
        }
    };
    let mut builder = Response::builder()
        .status(code)
        .header("content-type", "application/octet-stream");
    if options.ranges == Ranges::Honoured {
        builder = builder.header("accept-ranges", "bytes");
    }
    if options.length == BodyLength::Declared {
        builder = builder.header("content-length", end - start);
    }
    if code == StatusCode::PARTIAL_CONTENT {
        builder = builder.header("content-range", format!("bytes {start}-{}/{len}", end - 1));
    }
    if asked.method == Method::HEAD {
        return builder.body(Either::Left(Empty::new())).unwrap();
    }
    let body = ChunkBody::new(data.slice(start as usize..end as usize), state.clone());
    builder.body(Either::Right(body)).unwrap()
}

fn status(code: u16) -> Response<OriginBody> {
    let mut response = Response::new(Either::Left(Empty::new()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// Parses a single `bytes=` range against `len`: `Ok(None)` serves the whole body (no range,
/// or several, which HTTP allows), `Err(())` is unsatisfiable.
fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let last = len.checked_sub(1).ok_or(())?;
    let (start, end) = if a.is_empty() {
        let suffix: u64 = b.parse().map_err(|_| ())?;
        if suffix == 0 {
            return Err(());
        }
        (len.saturating_sub(suffix), last)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            last
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(last)
        };
        (start, end)
    };
    if start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_are_read_as_http_says() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-200", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=95-", 100), Ok(Some((95, 99))));
        assert_eq!(parse_range("bytes=-5", 100), Ok(Some((95, 99))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=-0", 100), Err(()));
        assert_eq!(parse_range("bytes=0-0", 0), Err(()));
    }
}
