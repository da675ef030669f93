//! Resolving an image like a container runtime: the manifest (with every manifest media type
//! in `Accept`), the registry's token dance when it answers 401, the entries of an index or
//! manifest list that match the requested platforms, and finally the config and layers of
//! each manifest as blob URLs.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use super::spec::{Platforms, Secrets, TaskOptions};
use crate::SchedulerError;

/// One registry request (manifest or token) may take this long.
pub const REGISTRY_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Manifests larger than this are refused (a manifest is a few KiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// `scheme://registry/v2/repo/manifests/reference`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestUrl {
    pub scheme: String,
    pub registry: String,
    pub repo: String,
    pub reference: String,
}

impl ManifestUrl {
    /// Takes a manifest URL, or an image reference `[scheme://]registry/repo[:tag|@digest]`
    /// (https unless a scheme is given; `docker.io` means `index.docker.io`).
    pub fn parse(text: &str) -> Result<Self, SchedulerError> {
        let (scheme, rest) = text.split_once("://").unwrap_or(("https", text));
        if let Some((host_and_repo, reference)) = rest.split_once("/manifests/") {
            let (registry, repo) = host_and_repo
                .split_once("/v2/")
                .ok_or_else(|| bad(text, "no /v2/ in the manifest URL"))?;
            return Self::checked(text, scheme, registry, repo, reference);
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad(text, "no repository"))?;
        let (repo, reference) = match path.split_once('@') {
            Some((repo, digest)) => (repo, digest),
            None => match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, tag),
                _ => (path, "latest"),
            },
        };
        let registry = if registry == "docker.io" {
            "index.docker.io"
        } else {
            registry
        };
        Self::checked(text, scheme, registry, repo, reference)
    }

    fn checked(
        text: &str,
        scheme: &str,
        registry: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Self, SchedulerError> {
        if !matches!(scheme, "http" | "https") {
            return Err(bad(text, "the scheme is not http or https"));
        }
        if registry.is_empty() || repo.is_empty() || reference.is_empty() {
            return Err(bad(text, "registry, repository or reference is empty"));
        }
        Ok(Self {
            scheme: scheme.into(),
            registry: registry.into(),
            repo: repo.into(),
            reference: reference.into(),
        })
    }

    pub fn manifest(&self, reference: &str) -> String {
        format!(
            "{}://{}/v2/{}/manifests/{reference}",
            self.scheme, self.registry, self.repo
        )
    }

    pub fn blob(&self, digest: &str) -> String {
        format!(
            "{}://{}/v2/{}/blobs/{digest}",
            self.scheme, self.registry, self.repo
        )
    }
}

fn bad(text: &str, why: &str) -> SchedulerError {
    SchedulerError::InvalidPreheat(format!("image {text:?}: {why}"))
}

fn failed(why: String) -> SchedulerError {
    SchedulerError::ImageResolve(why)
}

/// What an image preheat fetches.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// (blob URL, `sha256:…` digest), config and layers of every selected manifest, once each.
    pub blobs: Vec<(String, String)>,
    /// The `Authorization` value the registry accepted, for the seeds' requests.
    pub authorization: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// `os/arch` matches every variant; `os/arch/variant` only that one.
    fn matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && arch == Some(self.architecture.as_str())
            && variant.is_none_or(|v| self.variant.as_deref() == Some(v))
    }
}

/// The platform a runtime on this machine pulls.
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("linux/{arch}")
}

fn wanted(platforms: &Platforms, platform: Option<&Platform>) -> bool {
    // Attestation manifests carry `unknown/unknown`: never a runtime's pick.
    let Some(platform) = platform.filter(|p| p.os != "unknown") else {
        return false;
    };
    match platforms {
        Platforms::All => true,
        Platforms::Host => platform.matches(&host_platform()),
        Platforms::List(list) => list.iter().any(|w| platform.matches(w)),
    }
}

/// Talks to one registry for one repository, keeping the credentials that worked.
struct Session {
    client: reqwest::Client,
    image: ManifestUrl,
    secrets: Secrets,
    authorization: Option<String>,
}

pub async fn resolve(
    image: &ManifestUrl,
    platforms: &Platforms,
    options: &TaskOptions,
    secrets: &Secrets,
) -> Result<ResolvedImage, SchedulerError> {
    let authorization = secrets
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone());
    let mut session = Session {
        client: client(options)?,
        image: image.clone(),
        secrets: secrets.clone(),
        authorization,
    };
    let top = session.manifest(&image.reference).await?;
    let manifests = match top.manifests {
        Some(entries) if is_index(&top.media_type, true) => {
            session.children(entries, platforms).await?
        }
        entries => vec![Manifest {
            manifests: entries,
            ..top
        }],
    };
    let mut seen = BTreeSet::new();
    let mut blobs = Vec::new();
    for manifest in manifests {
        for descriptor in manifest.config.into_iter().chain(manifest.layers) {
            if seen.insert(descriptor.digest.clone()) {
                blobs.push((image.blob(&descriptor.digest), descriptor.digest));
            }
        }
    }
    Ok(ResolvedImage {
        blobs,
        authorization: session.authorization,
    })
}

fn is_index(media_type: &Option<String>, has_manifests: bool) -> bool {
    match media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        // An OCI index may leave mediaType out; `manifests` tells it apart.
        None => has_manifests,
        Some(_) => false,
    }
}

fn client(options: &TaskOptions) -> Result<reqwest::Client, SchedulerError> {
    let mut builder = reqwest::Client::builder()
        .timeout(REGISTRY_REQUEST_TIMEOUT)
        .danger_accept_invalid_certs(options.insecure_skip_verify);
    for der in &options.certificate_chain {
        let cert = reqwest::Certificate::from_der(der)
            .map_err(|e| failed(format!("certificate_chain: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| failed(format!("HTTP client: {e}")))
}

impl Session {
    /// The index entries for the wanted platforms, each fetched by digest.
    async fn children(
        &mut self,
        entries: Vec<Descriptor>,
        platforms: &Platforms,
    ) -> Result<Vec<Manifest>, SchedulerError> {
        let available: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref().map(Platform::name))
            .collect();
        let chosen: Vec<&Descriptor> = entries
            .iter()
            .filter(|d| wanted(platforms, d.platform.as_ref()))
            .collect();
        if chosen.is_empty() {
            return Err(failed(format!(
                "no manifest for platform {platforms:?} in the index (it has {available:?})"
            )));
        }
        let mut manifests = Vec::new();
        for descriptor in chosen {
            let manifest = self.manifest(&descriptor.digest).await?;
            if manifest.manifests.is_some() {
                return Err(failed(format!("{} is a nested index", descriptor.digest)));
            }
            manifests.push(manifest);
        }
        Ok(manifests)
    }

    async fn manifest(&mut self, reference: &str) -> Result<Manifest, SchedulerError> {
        let url = self.image.manifest(reference);
        let mut response = self.get(&url).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            self.authorization = Some(self.authenticate(&challenge).await?);
            response = self.get(&url).await?;
        }
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!("GET {url}: {status}")));
        }
        let body = limited_body(response, &url).await?;
        serde_json::from_slice(&body).map_err(|e| failed(format!("manifest {url}: {e}")))
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, SchedulerError> {
        let mut request = self.client.get(url).header(ACCEPT, MANIFEST_TYPES);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth);
        }
        request
            .send()
            .await
            .map_err(|e| failed(format!("GET {url}: {e}")))
    }

    /// Answers a `WWW-Authenticate` challenge: Bearer asks the realm for a token (Basic
    /// credentials when the request carries a username), Basic sends the credentials.
    async fn authenticate(&self, challenge: &str) -> Result<String, SchedulerError> {
        let basic = self.basic();
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return match (challenge.starts_with("Basic"), basic) {
                (true, Some(basic)) => Ok(basic),
                _ => Err(failed(format!(
                    "the registry refused the request (challenge {challenge:?})"
                ))),
            };
        };
        let params = challenge_params(params);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let realm =
            param("realm").ok_or_else(|| failed("Bearer challenge without realm".into()))?;
        let scope =
            param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.image.repo));
        let mut query = vec![("scope", scope)];
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        let mut request = self.client.get(&realm).query(&query);
        if let Some(basic) = basic {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request
            .send()
            .await
            .map_err(|e| failed(format!("token request to {realm}: {e}")))?;
        if !response.status().is_success() {
            return Err(failed(format!(
                "token request to {realm}: {}",
                response.status()
            )));
        }
        let body = limited_body(response, &realm).await?;
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("token from {realm}: {e}")))?;
        let token = token
            .token
            .or(token.access_token)
            .ok_or_else(|| failed(format!("no token in the answer of {realm}")))?;
        Ok(format!("Bearer {token}"))
    }

    fn basic(&self) -> Option<String> {
        let user = self.secrets.username.as_deref()?;
        let password = self.secrets.password.as_deref().unwrap_or_default();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Some(format!("Basic {encoded}"))
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

async fn limited_body(response: reqwest::Response, url: &str) -> Result<Vec<u8>, SchedulerError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
    {
        return Err(failed(format!(
            "{url}: answer larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| failed(format!("reading {url}: {e}")))?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(failed(format!(
            "{url}: answer larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    Ok(body.to_vec())
}

/// `realm="…",service="…",scope="…"` into pairs; quoted values may hold commas.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, next)) => (value, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        pairs.push((key, value.to_string()));
        rest = next.trim_start_matches(',').trim();
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_manifest_urls_parse() {
        let url = ManifestUrl::parse("http://127.0.0.1:5000/v2/test/img/manifests/v1").unwrap();
        assert_eq!(url.registry, "127.0.0.1:5000");
        assert_eq!(url.repo, "test/img");
        assert_eq!(
            url.blob("sha256:ab"),
            "http://127.0.0.1:5000/v2/test/img/blobs/sha256:ab"
        );
        let tag = ManifestUrl::parse("docker.io/library/alpine:3.20").unwrap();
        assert_eq!(
            tag.manifest(&tag.reference),
            "https://index.docker.io/v2/library/alpine/manifests/3.20"
        );
        let digest = ManifestUrl::parse("r:5000/a/b@sha256:00").unwrap();
        assert_eq!(
            (digest.repo.as_str(), digest.reference.as_str()),
            ("a/b", "sha256:00")
        );
        let latest = ManifestUrl::parse("r:5000/a").unwrap();
        assert_eq!(latest.reference, "latest");
        assert!(ManifestUrl::parse("ftp://r/a:b").is_err());
        assert!(ManifestUrl::parse("registry-only").is_err());
    }

    #[test]
    fn bearer_challenges_parse() {
        let pairs = challenge_params(
            r#"realm="http://a/token",service="reg",scope="repository:x/y:pull,push""#,
        );
        assert_eq!(pairs[0], ("realm".into(), "http://a/token".into()));
        assert_eq!(
            pairs[2],
            ("scope".into(), "repository:x/y:pull,push".into())
        );
    }

    #[test]
    fn platforms_match_like_a_runtime() {
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert!(wanted(
            &Platforms::List(vec!["linux/arm64".into()]),
            Some(&arm)
        ));
        assert!(wanted(
            &Platforms::List(vec!["linux/arm64/v8".into()]),
            Some(&arm)
        ));
        assert!(!wanted(
            &Platforms::List(vec!["linux/arm64/v7".into()]),
            Some(&arm)
        ));
        assert!(wanted(&Platforms::All, Some(&arm)));
        let unknown = Platform {
            os: "unknown".into(),
            architecture: "unknown".into(),
            variant: None,
        };
        assert!(!wanted(&Platforms::All, Some(&unknown)));
    }
}
