//! Origins behind a private certificate authority: refused without its CA, with a clear
//! certificate error; served byte for byte with the CA from the system bundle or the download;
//! served with verification off when asked.

mod common;

use common::*;
use damselfly_transfer::{
    Backend, BackendConfig, OriginPiece, OriginTrust, RateLimiter, TransferError,
};
use std::path::PathBuf;
use std::time::Duration;

/// A backend whose "system store" is `bundle` (an empty file: no private CA in it).
fn backend(bundle: PathBuf) -> Backend {
    Backend::new(BackendConfig {
        use_env_proxy: false,
        retry_backoff: Duration::from_millis(10),
        system_ca_file: Some(bundle),
        ..BackendConfig::default()
    })
    .unwrap()
}

/// Stats and fetches every piece; returns the stored bytes.
async fn fetch(
    backend: &Backend,
    url: &str,
    dir: &std::path::Path,
) -> Result<Vec<u8>, TransferError> {
    let storage = storage(dir);
    let id = task_id(1);
    let stat = backend.stat(url, &[]).await?;
    let len = stat.content_length.expect("length");
    let task = storage.prepare_task(&id, len, PIECE, stat.headers).await?;
    let limiters = [RateLimiter::unlimited()];
    for span in task.layout().spans() {
        let piece = OriginPiece {
            url,
            headers: &[],
            storage: &storage,
            task_id: &id,
            span,
            limiters: &limiters,
            trusted: None,
        };
        backend.fetch_piece(&piece).await?;
    }
    storage.finish_task(&id)?;
    Ok(std::fs::read(storage.content_path(&id)).unwrap())
}

#[tokio::test]
async fn private_ca_origin_is_refused_without_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let ca = TestCa::new();
    let origin = start_tls_origin(content(700_000, 3), &ca).await;
    let error = backend(empty)
        .stat(&origin.url(BLOB), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransferError::OriginCertificate { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("not trusted") && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(
        !error.is_transient(),
        "a refused certificate is not retried"
    );
    assert_eq!(origin.request_count(), 0);
}

#[tokio::test]
async fn private_ca_from_the_system_bundle_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let bundle = dir.path().join("ca-certificates.crt");
    std::fs::write(&bundle, &ca.pem).unwrap();
    let data = content(1_000_003, 4);
    let origin = start_tls_origin(data.clone(), &ca).await;
    let got = fetch(&backend(bundle), &origin.url(BLOB), dir.path())
        .await
        .unwrap();
    assert_eq!(sha256(&got), sha256(&data));
}

#[tokio::test]
async fn private_ca_from_the_download_is_trusted_and_clients_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let ca = TestCa::new();
    let data = content(900_001, 5);
    let origin = start_tls_origin(data.clone(), &ca).await;
    let base = backend(empty);
    let trusted = base
        .with_trust(&OriginTrust::with_cas(vec![ca.der.to_vec()]))
        .unwrap();
    let got = fetch(&trusted, &origin.url(BLOB), dir.path())
        .await
        .unwrap();
    assert_eq!(sha256(&got), sha256(&data));
    // The base backend still refuses: the CA belongs to the downloads that sent it.
    assert!(matches!(
        base.stat(&origin.url(BLOB), &[]).await,
        Err(TransferError::OriginCertificate { .. })
    ));
}

#[tokio::test]
async fn insecure_accepts_any_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let ca = TestCa::new();
    let data = content(300_000, 6);
    let origin = start_tls_origin(data.clone(), &ca).await;
    let insecure = backend(empty).with_trust(&OriginTrust::Insecure).unwrap();
    let got = fetch(&insecure, &origin.url(BLOB), dir.path())
        .await
        .unwrap();
    assert_eq!(sha256(&got), sha256(&data));
}
