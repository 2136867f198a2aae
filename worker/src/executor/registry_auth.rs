//! Private registry credentials, read from Docker's own `config.json` so a worker uses the logins
//! its operator already made with `docker login`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

/// Docker Hub's key in `config.json`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// Logins per registry host.
#[derive(Debug, Default, Clone)]
pub struct RegistryAuth {
    logins: HashMap<String, (String, String)>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl RegistryAuth {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; none or unreadable means no
    /// logins (pulls of public images still work).
    pub fn load_default() -> RegistryAuth {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")));
        dir.map(|d| Self::load(&d.join("config.json")))
            .unwrap_or_default()
    }

    /// Reads one `config.json`.
    pub fn load(path: &Path) -> RegistryAuth {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %path.display(), error = %err, "Docker config.json ignored.");
                RegistryAuth::default()
            }),
            Err(_) => RegistryAuth::default(),
        }
    }

    /// Parses `config.json` text: `auths.<registry>.auth` is base64 of `user:password`.
    pub fn parse(bytes: &[u8]) -> Result<RegistryAuth, String> {
        let config: ConfigFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut logins = HashMap::new();
        for (registry, entry) in config.auths {
            // One broken entry costs that registry its login, not every other one.
            match login_of(&registry, entry) {
                Ok(Some(pair)) => {
                    logins.insert(normalize(&registry), pair);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%registry, error = %err, "Docker config.json login ignored.")
                }
            }
        }
        Ok(RegistryAuth { logins })
    }

    /// The login for the registry an image lives in, if there is one.
    pub fn credentials_for(&self, image: &str) -> Option<DockerCredentials> {
        let registry = registry_of(image);
        let (username, password) = self.logins.get(&registry)?;
        Some(DockerCredentials {
            username: Some(username.clone()),
            password: Some(password.clone()),
            serveraddress: Some(registry),
            ..Default::default()
        })
    }
}

/// `user:password` from one `auths` entry; `None` when it holds no password (a credential
/// helper's registry: helpers are not supported).
fn login_of(registry: &str, entry: AuthEntry) -> Result<Option<(String, String)>, String> {
    Ok(match (entry.auth, entry.username, entry.password) {
        (Some(auth), _, _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("auth of {registry}: {e}"))?;
            let text =
                String::from_utf8(decoded).map_err(|e| format!("auth of {registry}: {e}"))?;
            text.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        }
        (None, Some(user), Some(password)) => Some((user, password)),
        _ => None,
    })
}

/// The registry host of an image reference, Docker's way: the first path part when it has a
/// dot, a port or is `localhost`; Docker Hub otherwise.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalize(first)
        }
        _ => normalize(DOCKER_HUB),
    }
}

fn normalize(registry: &str) -> String {
    let host = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(registry);
    match host {
        "index.docker.io" | "docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_come_from_docker_config_json() {
        // base64("alice:s3cret")
        let json = br#"{"auths": {"registry.example.com": {"auth": "YWxpY2U6czNjcmV0"},
                        "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}"#;
        let auth = RegistryAuth::parse(json).unwrap();
        let c = auth
            .credentials_for("registry.example.com/team/trainer:1.4")
            .unwrap();
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.serveraddress.as_deref(), Some("registry.example.com"));
        let hub = auth.credentials_for("python:3.11-slim").unwrap();
        assert_eq!(hub.username.as_deref(), Some("bob"));
        assert!(auth.credentials_for("localhost:5000/x").is_none());
        assert_eq!(registry_of("index.docker.io/library/x"), "docker.io");
        let partly_broken = br#"{"auths": {"bad.example": {"auth": "%%%"}, "good.example": {"auth": "YWxpY2U6czNjcmV0"}}}"#;
        let auth = RegistryAuth::parse(partly_broken).unwrap();
        assert!(
            auth.credentials_for("good.example/x").is_some(),
            "one bad entry spoils nothing else"
        );
    }

    #[test]
    fn registries_are_found_the_way_docker_finds_them() {
        assert_eq!(registry_of("ubuntu"), "docker.io");
        assert_eq!(registry_of("library/ubuntu:22.04"), "docker.io");
        assert_eq!(registry_of("ghcr.io/org/img"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/img"), "localhost:5000");
    }
}
