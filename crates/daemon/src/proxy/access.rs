//! Private layers: a blob this host holds (or is fetching) for one client is served to another
//! client only after the registry confirms that client may read it. The proof is a `HEAD` of
//! the blob with that client's own credentials (or none); a success is remembered for
//! [`ACCESS_GRANT_TTL`] per (credentials, repository), so a pull costs one `HEAD` per
//! repository, not one per layer. Anything but a success leaves the request to the registry
//! itself (passed through), so the client sees the registry's own 401 and its challenge.

use damselfly_transfer::Backend;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::debug;
use url::Url;

/// How long a registry's "yes" for (credentials, repository) is reused. Short: a revoked
/// token keeps reading cached layers at most this long.
pub const ACCESS_GRANT_TTL: Duration = Duration::from_secs(60);
/// Grants remembered; past this many the expired ones are dropped, then all if still full.
const ACCESS_GRANT_LIMIT: usize = 4096;

/// The registry's answer for one client and blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// The registry said no (its status), or could not be asked.
    Refused(String),
}

/// Asks registries and remembers their grants.
pub struct AccessCheck {
    backend: Backend,
    grants: Mutex<HashMap<GrantKey, Instant>>,
}

/// sha256 of the client's credential headers, and `host:port/repository`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GrantKey {
    credentials: [u8; 32],
    repository: String,
}

impl AccessCheck {
    /// `backend` carries the proxy's trust (system store plus `registryMirror.cert`).
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            grants: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the client sending `headers` may read the blob at `url`.
    pub async fn check(&self, url: &Url, headers: &[(String, String)]) -> Access {
        let Some(key) = grant_key(url, headers) else {
            return Access::Granted;
        };
        if self.granted(&key) {
            return Access::Granted;
        }
        match self.backend.head_status(url.as_str(), headers).await {
            Ok(status) if (200..300).contains(&status) => {
                self.remember(key);
                Access::Granted
            }
            Ok(status) => Access::Refused(format!(
                "the registry answered {status} to a HEAD with this client's credentials"
            )),
            Err(error) => Access::Refused(format!("cannot ask the registry: {error}")),
        }
    }

    fn granted(&self, key: &GrantKey) -> bool {
        let grants = match self.grants.lock() {
            Ok(grants) => grants,
            Err(poisoned) => poisoned.into_inner(),
        };
        grants
            .get(key)
            .is_some_and(|at| at.elapsed() < ACCESS_GRANT_TTL)
    }

    fn remember(&self, key: GrantKey) {
        let mut grants = match self.grants.lock() {
            Ok(grants) => grants,
            Err(poisoned) => poisoned.into_inner(),
        };
        if grants.len() >= ACCESS_GRANT_LIMIT {
            grants.retain(|_, at| at.elapsed() < ACCESS_GRANT_TTL);
            if grants.len() >= ACCESS_GRANT_LIMIT {
                grants.clear();
            }
        }
        debug!(repository = %key.repository, "registry granted read access");
        grants.insert(key, Instant::now());
    }
}

/// None for URLs that are not registry blobs (nothing to ask about).
fn grant_key(url: &Url, headers: &[(String, String)]) -> Option<GrantKey> {
    let (repository, _) = url.path().strip_prefix("/v2/")?.split_once("/blobs/")?;
    let host = url.host_str()?;
    let port = url.port_or_known_default().unwrap_or(0);
    Some(GrantKey {
        credentials: credential_hash(headers),
        repository: format!("{host}:{port}/{repository}"),
    })
}

/// The credential headers, names lower-cased and sorted, hashed; no credentials hash alike.
fn credential_hash(headers: &[(String, String)]) -> [u8; 32] {
    let mut secrets: Vec<(String, &str)> = headers
        .iter()
        .filter(|(name, _)| damselfly_core::is_secret_header(name))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.as_str()))
        .collect();
    secrets.sort();
    let mut hasher = Sha256::new();
    for (name, value) in secrets {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn grants_are_per_credentials_and_repository() {
        let blob = |repo: &str| {
            Url::parse(&format!(
                "http://r:5000/v2/{repo}/blobs/sha256:{}",
                "a".repeat(64)
            ))
            .unwrap()
        };
        let token = pairs(&[("Authorization", "Bearer t"), ("Accept", "x")]);
        let same = pairs(&[("accept", "y"), ("authorization", "Bearer t")]);
        let other = pairs(&[("Authorization", "Bearer u")]);
        let a = grant_key(&blob("lib/a"), &token).unwrap();
        assert_eq!(a, grant_key(&blob("lib/a"), &same).unwrap());
        assert_ne!(a, grant_key(&blob("lib/a"), &other).unwrap());
        assert_ne!(a, grant_key(&blob("lib/a"), &[]).unwrap());
        assert_ne!(a, grant_key(&blob("lib/b"), &token).unwrap());
        assert_eq!(a.repository, "r:5000/lib/a");
        let plain = Url::parse("http://h/file.bin").unwrap();
        assert!(grant_key(&plain, &token).is_none());
    }
}
