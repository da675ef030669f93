//! Image resolution for preheat against a registry in the test process: the Bearer token
//! dance with Basic credentials, an OCI index resolved by platform (one, several, all; the
//! attestation entry never), and layers shared by two platforms fetched once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use damselfly_scheduler::preheat::registry::{resolve, ManifestUrl};
use damselfly_scheduler::preheat::spec::{Platforms, Secrets, TaskOptions};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

const TOKEN: &str = "registry-token";
/// base64("ci:pw")
const BASIC: &str = "Basic Y2k6cHc=";

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn manifest(config: char, layers: &[char]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":1}}"#, digest(*l)))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1}},"layers":[{}]}}"#,
        digest(config),
        layers.join(",")
    )
}

fn index() -> String {
    let entry = |d: char, os: &str, arch: &str, variant: Option<&str>| {
        let variant = variant.map_or(String::new(), |v| format!(r#","variant":"{v}""#));
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"{variant}}}}}"#,
            digest(d)
        )
    };
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{},{},{}]}}"#,
        entry('1', "linux", "amd64", None),
        entry('2', "linux", "arm64", Some("v8")),
        entry('3', "unknown", "unknown", None)
    )
}

fn documents() -> HashMap<String, String> {
    let mut docs = HashMap::new();
    docs.insert("/v2/team/app/manifests/v1".to_string(), index());
    // amd64 and arm64 share layer `a`.
    docs.insert(
        format!("/v2/team/app/manifests/{}", digest('1')),
        manifest('c', &['a', 'b']),
    );
    docs.insert(
        format!("/v2/team/app/manifests/{}", digest('2')),
        manifest('d', &['a', 'e']),
    );
    docs.insert(
        format!("/v2/team/app/manifests/{}", digest('3')),
        manifest('f', &['9']),
    );
    docs
}

async fn serve(addr: SocketAddr, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let path = request.uri().path().to_string();
    let answer = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if path == "/token" {
        return match auth == BASIC {
            true => answer(StatusCode::OK, format!(r#"{{"token":"{TOKEN}"}}"#)),
            false => answer(StatusCode::UNAUTHORIZED, String::new()),
        };
    }
    if auth != format!("Bearer {TOKEN}") {
        let mut response = answer(StatusCode::UNAUTHORIZED, String::new());
        let challenge = format!(
            r#"Bearer realm="http://{addr}/token",service="test",scope="repository:team/app:pull""#
        );
        response
            .headers_mut()
            .insert("www-authenticate", challenge.parse().unwrap());
        return response;
    }
    match documents().remove(&path) {
        Some(doc) => answer(StatusCode::OK, doc),
        None => answer(StatusCode::NOT_FOUND, String::new()),
    }
}

async fn registry() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |r| async move {
                Ok::<_, Infallible>(serve(addr, r).await)
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
        }
    });
    addr
}

async fn blobs(
    addr: SocketAddr,
    platforms: &str,
    secrets: &Secrets,
) -> Result<Vec<String>, String> {
    let image = ManifestUrl::parse(&format!("http://{addr}/team/app:v1")).unwrap();
    let resolved = resolve(
        &image,
        &Platforms::parse(platforms),
        &TaskOptions::default(),
        secrets,
    )
    .await
    .map_err(|e| e.to_string())?;
    assert_eq!(
        resolved.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    let prefix = format!("http://{addr}/v2/team/app/blobs/");
    Ok(resolved
        .blobs
        .into_iter()
        .map(|(url, digest)| {
            assert_eq!(url, format!("{prefix}{digest}"));
            digest
        })
        .collect())
}

#[tokio::test]
async fn an_index_resolves_by_platform_with_the_token_dance() {
    let addr = registry().await;
    let creds = Secrets {
        username: Some("ci".into()),
        password: Some("pw".into()),
        ..Default::default()
    };
    let arm = blobs(addr, "linux/arm64", &creds).await.unwrap();
    assert_eq!(arm, vec![digest('d'), digest('a'), digest('e')]);
    let amd = blobs(addr, "linux/amd64/v9", &creds).await;
    assert!(amd.unwrap_err().contains("no manifest for platform"));
    let both = blobs(addr, "linux/amd64,linux/arm64/v8", &creds)
        .await
        .unwrap();
    assert_eq!(
        both,
        vec![
            digest('c'),
            digest('a'),
            digest('b'),
            digest('d'),
            digest('e')
        ],
        "the shared layer once; both configs"
    );
    let all = blobs(addr, "all", &creds).await.unwrap();
    assert_eq!(all, both, "the attestation entry is not a platform");

    let anonymous = blobs(addr, "all", &Secrets::default()).await.unwrap_err();
    assert!(
        anonymous.contains("token request") && anonymous.contains("401"),
        "{anonymous}"
    );
    let mut headers = HashMap::new();
    headers.insert("Authorization".to_string(), format!("Bearer {TOKEN}"));
    let given = Secrets {
        headers,
        ..Default::default()
    };
    assert_eq!(blobs(addr, "linux/arm64", &given).await.unwrap(), arm);
}
