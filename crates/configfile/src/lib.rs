//! Reading the YAML config files that Dragonfly operators already have.
//!
//! Three rules make an operator's existing `dfdaemon.yaml` or `scheduler.yaml` work unchanged
//! without hiding anything from them:
//! - a key with no value (`seedPeer:` with nothing under it, as Dragonfly's chart renders it)
//!   means "unset", never a type error;
//! - a key we do not implement is reported by its full dotted path, so the binary can name it
//!   in a warning at startup instead of dropping it silently;
//! - a key whose absence would weaken security (a certificate, a key, TLS verification) must
//!   not be ignored: [`parse`] fails while such a key is set and not implemented.

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use thiserror::Error;

/// Errors from reading a config file.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Yaml {
        path: String,
        source: serde_yaml::Error,
    },
    #[error(
        "{path}: {keys} set, but Damselfly does not implement {them} yet; refusing to start \
         without the protection asked for (remove the key to run without it)",
        keys = keys.join(", "),
        them = if keys.len() == 1 { "it" } else { "them" }
    )]
    UnsupportedSecurityKeys { path: String, keys: Vec<String> },
}

/// A parsed file and the keys in it that the program ignores.
#[derive(Debug)]
pub struct Parsed<T> {
    pub config: T,
    /// Dotted paths (`manager.addr`, `proxy.rules.0.foo`) of every key that was not used.
    pub ignored: Vec<String>,
}

/// Leaf names that carry TLS material or switch verification on. Ignoring one of these when
/// it is set would run the link in plain text or unauthenticated while the operator believes
/// otherwise. Keys a program implements (the mTLS triples of the scheduler's `server.tls` and
/// `seedPeer.tls`, dfdaemon's `scheduler.*`, `upload.server.*`, `upload.client.*`) are read by
/// its config structs, so they are never ignored and never reach this check. `insecureSkipVerify`-style keys are absent on purpose: ignoring them is stricter.
const SECURITY_LEAVES: &[&str] = &[
    "caCert",
    "caKey",
    "cert",
    "key",
    "certs",
    "autoIssueCert",
    "tlsVerify",
];

/// Reads and parses a file; `path` names it in errors.
pub fn load<T: DeserializeOwned + Default>(
    path: &std::path::Path,
) -> Result<Parsed<T>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses YAML text; an empty document gives `T::default()`. `origin` names the text in
/// errors (usually its file name).
pub fn parse<T: DeserializeOwned + Default>(
    text: &str,
    origin: &str,
) -> Result<Parsed<T>, ConfigFileError> {
    let yaml_error = |source| ConfigFileError::Yaml {
        path: origin.to_string(),
        source,
    };
    let mut document: Value = serde_yaml::from_str(text).map_err(yaml_error)?;
    drop_nulls(&mut document);
    if matches!(&document, Value::Null) {
        return Ok(Parsed {
            config: T::default(),
            ignored: Vec::new(),
        });
    }
    let mut ignored = Vec::new();
    let config = serde_ignored::deserialize(document.clone(), |path| {
        ignored.push(path.to_string());
    })
    .map_err(yaml_error)?;
    let unsafe_keys = security_keys_set(&document, &ignored);
    if !unsafe_keys.is_empty() {
        return Err(ConfigFileError::UnsupportedSecurityKeys {
            path: origin.to_string(),
            keys: unsafe_keys,
        });
    }
    Ok(Parsed { config, ignored })
}

/// Removes every mapping entry whose value is null, at any depth, so that `key:` with nothing
/// after it means the same as a missing key. A document that is all nulls becomes null.
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Sequence(items) => items.iter_mut().for_each(drop_nulls),
        Value::Tagged(tagged) => drop_nulls(&mut tagged.value),
        _ => {}
    }
}

/// The dotted paths, under the ignored keys, of security leaves that hold a real value.
fn security_keys_set(document: &Value, ignored: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for path in ignored {
        if let Some(value) = lookup(document, path) {
            collect_security_leaves(value, path, &mut found);
        }
    }
    found
}

fn collect_security_leaves(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let name = key_name(key);
                collect_security_leaves(child, &format!("{path}.{name}"), found);
            }
        }
        leaf => {
            let last = path.rsplit('.').next().unwrap_or(path);
            let in_security_section =
                path == "security.enable" || path.ends_with(".security.enable");
            if (SECURITY_LEAVES.contains(&last) || in_security_section) && is_set(leaf) {
                found.push(path.to_string());
            }
        }
    }
}

/// A value that asks for something: a non-empty string or list, `true`, a number.
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(on) => *on,
        Value::String(text) => !text.trim().is_empty(),
        Value::Sequence(items) => !items.is_empty(),
        Value::Mapping(map) => !map.is_empty(),
        Value::Number(_) => true,
        Value::Tagged(tagged) => is_set(&tagged.value),
    }
}

/// Follows a dotted path (as `serde_ignored` prints it) through mappings and sequences.
fn lookup<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = document;
    for segment in path.split('.') {
        current = match current {
            Value::Mapping(map) => find_key(map, segment)?,
            Value::Sequence(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn find_key<'a>(map: &'a Mapping, name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(key, _)| key_name(key) == name)
        .map(|(_, value)| value)
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(text) => text.clone(),
        other => serde_yaml::to_string(other)
            .map(|text| text.trim().to_string())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Sample {
        server: Server,
        seed_peer: SeedPeer,
        rules: Vec<Rule>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Server {
        port: u16,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct SeedPeer {
        enable: bool,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Rule {
        regex: String,
    }

    #[test]
    fn empty_and_null_documents_are_defaults() {
        for text in ["", "   \n", "~", "seedPeer:\n"] {
            let parsed: Parsed<Sample> = parse(text, "t.yaml").unwrap();
            assert_eq!(parsed.config, Sample::default(), "{text:?}");
            assert!(parsed.ignored.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn a_key_without_value_is_unset_not_a_type_error() {
        let parsed: Parsed<Sample> = parse("server:\n  port: 9\nseedPeer:\n", "t.yaml").unwrap();
        assert_eq!(parsed.config.server.port, 9);
        assert!(!parsed.config.seed_peer.enable);
    }

    #[test]
    fn unknown_keys_are_reported_by_path() {
        let text = "server:\n  port: 9\n  workHome: ''\nmanager:\n  addr: m:65003\nrules:\n  - regex: a\n    useTLS: true\n";
        let parsed: Parsed<Sample> = parse(text, "t.yaml").unwrap();
        assert_eq!(
            parsed.ignored,
            ["server.workHome", "manager", "rules.0.useTLS"]
        );
    }

    #[test]
    fn set_security_keys_refuse_to_start() {
        let text =
            "upload:\n  server:\n    caCert: /etc/ca.pem\n    cert: /etc/c.pem\n    key: ''\n";
        let error = parse::<Sample>(text, "dfdaemon.yaml").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("upload.server.caCert"), "{message}");
        assert!(message.contains("upload.server.cert"), "{message}");
        assert!(
            !message.contains("upload.server.key"),
            "empty is unset: {message}"
        );
        assert!(message.starts_with("dfdaemon.yaml:"), "{message}");
    }

    #[test]
    fn security_keys_left_empty_or_off_only_warn() {
        let text = "security:\n  enable: false\n  autoIssueCert: false\n  caCert: ''\n  tlsPolicy: prefer\nscheduler:\n  caCert:\n";
        let parsed: Parsed<Sample> = parse(text, "scheduler.yaml").unwrap();
        assert_eq!(parsed.ignored, ["security", "scheduler"]);
        let on = "security:\n  enable: true\n";
        assert!(parse::<Sample>(on, "s.yaml").is_err());
    }

    #[test]
    fn bad_values_name_the_file() {
        let error = parse::<Sample>("server:\n  port: many\n", "x.yaml").unwrap_err();
        assert!(error.to_string().starts_with("x.yaml: "), "{error}");
        let error = load::<Sample>(std::path::Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/x.yaml"), "{error}");
    }
}
