//! Headers that carry credentials. They go to the origin, and to the one peer that must fetch
//! from the origin for a task (a seed, through the scheduler's seeding request); they never
//! appear in Stat/List answers, stored task metadata, logs or metrics labels.

/// Request and response headers holding credentials or session state, lower case.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-registry-auth",
    "x-registry-token",
    "x-auth-token",
    "x-api-key",
    "x-amz-security-token",
    "x-goog-iam-authorization-token",
    "private-token",
    "x-jfrog-art-api",
];

/// True for a header in [`SECRET_HEADERS`], whatever its case.
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS
        .iter()
        .any(|secret| secret.eq_ignore_ascii_case(name.trim()))
}

/// The headers without the secret ones, for answers, stored metadata and logs.
pub fn without_secrets<'a, I, K, V>(headers: I) -> impl Iterator<Item = (K, V)> + 'a
where
    I: IntoIterator<Item = (K, V)> + 'a,
    K: AsRef<str>,
{
    headers
        .into_iter()
        .filter(|(name, _)| !is_secret_header(name.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_in_any_case() {
        for name in [
            "Authorization",
            "COOKIE",
            "Proxy-Authorization",
            "X-Registry-Auth",
        ] {
            assert!(is_secret_header(name), "{name}");
        }
        assert!(!is_secret_header("accept"));
        let kept: Vec<(&str, &str)> = without_secrets([
            ("Accept", "x"),
            ("Authorization", "Bearer t"),
            ("cookie", "c"),
        ])
        .collect();
        assert_eq!(kept, vec![("Accept", "x")]);
    }
}
