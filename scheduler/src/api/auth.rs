//! Who may call the API: named bearer tokens with roles.
//!
//! Tokens come from `--api-token` (one token, role `admin`, named `api-token`) and from
//! `--tokens FILE`, a file of `NAME ROLE sha256:HEX` lines that holds only hashes, so no token
//! is on a command line (`ps` shows those) or in a file a reader could reuse. With no token at
//! all the API is open, as before; with any, every route but `/healthz`, `/readyz`, the OpenAPI
//! document and signed webhooks needs one. A caller's token name is recorded where it acts (the
//! run's trigger, the cancel mark).

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, ApiState};

/// What a token allows; each role allows what the ones before it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Pipelines, runs with their params, outputs, metrics, events, logs, workers.
    Read,
    /// Also start and cancel runs.
    Trigger,
    /// Also reload the pipelines folder.
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "trigger" => Some(Role::Trigger),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name, as tokens files and the OpenAPI document spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Trigger => "trigger",
            Role::Admin => "admin",
        }
    }
}

/// One accepted token, by the SHA-256 of its text.
#[derive(Debug, Clone)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

/// The tokens a daemon accepts; empty means the API is open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

/// The caller a request was authenticated as, for handlers that record who acted.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<String>);

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `NAME ROLE sha256:HEX`.
    #[error("{file}:{line}: {message}")]
    Line {
        /// The file.
        file: String,
        /// Its line, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl Tokens {
    /// The tokens of `--api-token` and `--tokens`.
    pub fn new(api_token: Option<&str>, file: Option<&Path>) -> Result<Tokens, TokensFileError> {
        let mut tokens = Tokens::default();
        if let Some(token) = api_token.filter(|t| !t.is_empty()) {
            tokens.entries.push(TokenEntry {
                name: "api-token".into(),
                role: Role::Admin,
                sha256: Sha256::digest(token.as_bytes()).into(),
            });
        }
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|source| TokensFileError::Read {
                file: file.display().to_string(),
                source,
            })?;
            tokens
                .entries
                .extend(parse_tokens_file(&text, &file.display().to_string())?);
        }
        Ok(tokens)
    }

    /// Whether any token is configured (then every API route needs one).
    pub fn required(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The name and role of the token `given`, if it is one of these (the web UI's sign-in).
    pub fn identify(&self, given: &str) -> Option<(String, Role)> {
        self.find(given).map(|e| (e.name.clone(), e.role))
    }

    /// The entry whose token is `given`. Every entry is compared, each in constant time, so
    /// the answer's timing says nothing about which token is close.
    fn find(&self, given: &str) -> Option<&TokenEntry> {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.sha256.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found
    }
}

fn parse_tokens_file(text: &str, file: &str) -> Result<Vec<TokenEntry>, TokensFileError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |message: String| TokensFileError::Line {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = parts[..] else {
            return Err(fail(
                "expected `NAME ROLE sha256:HEX` (make one with `sluice token new NAME --role ROLE`)"
                    .into(),
            ));
        };
        let role = Role::parse(role).ok_or_else(|| {
            fail(format!(
                "role `{role}` is not one of `read`, `trigger`, `admin`"
            ))
        })?;
        let sha256 = hash
            .strip_prefix("sha256:")
            .and_then(|hex| hex::decode(hex).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| fail("the hash must be `sha256:` and 64 hex digits".into()))?;
        entries.push(TokenEntry {
            name: name.to_string(),
            role,
            sha256,
        });
    }
    Ok(entries)
}

/// A new random token and its tokens-file line.
pub fn new_token(name: &str, role: &str) -> Result<(String, String), String> {
    use std::io::Read;
    if Role::parse(role).is_none() {
        return Err(format!(
            "role `{role}` is not one of `read`, `trigger`, `admin`"
        ));
    }
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err("a token's name is one word".into());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let token = format!("slc_{}", hex::encode(bytes));
    let line = format!(
        "{name} {role} sha256:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    Ok((token, line))
}

/// Middleware: lets a request through when its bearer token allows `role` (or no token is
/// configured), with the caller's name in the request's extensions.
pub async fn require(
    State((state, role)): State<(ApiState, Role)>,
    mut request: Request,
    next: Next,
) -> Response {
    if !state.tokens.required() {
        request.extensions_mut().insert(Caller(None));
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match state.tokens.find(given) {
        Some(entry) if entry.role >= role => {
            request
                .extensions_mut()
                .insert(Caller(Some(entry.name.clone())));
            next.run(request).await
        }
        Some(entry) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` has role `{}`; this needs `{}`",
                entry.name,
                entry.role.as_str(),
                role.as_str()
            ),
        )
        .into_response(),
        None => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs `Authorization: Bearer <token>` with one of the scheduler's API tokens",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        let tokens = Tokens::new(Some("s3cret"), None).unwrap();
        assert_eq!(tokens.find("s3cret").unwrap().role, Role::Admin);
        for wrong in ["s3cre", "", "s3cret ", "S3CRET"] {
            assert!(tokens.find(wrong).is_none(), "{wrong:?}");
        }
        assert!(!Tokens::new(Some(""), None).unwrap().required());
    }

    #[test]
    fn a_tokens_file_holds_names_roles_and_hashes() {
        let (token, line) = new_token("ci", "trigger").unwrap();
        let text = format!(
            "# comment\n\n{line}\nviewer read sha256:{}\n",
            "0".repeat(64)
        );
        let entries = parse_tokens_file(&text, "tokens").unwrap();
        let tokens = Tokens { entries };
        let found = tokens.find(&token).unwrap();
        assert_eq!((found.name.as_str(), found.role), ("ci", Role::Trigger));
        assert!(
            !line.contains(&token),
            "the file holds the hash, not the token"
        );
    }

    #[test]
    fn a_bad_tokens_line_names_its_line() {
        for (text, says) in [
            ("ci writer sha256:00", "role `writer`"),
            ("ci read md5:00", "sha256:"),
            ("ci read", "expected"),
        ] {
            let err = parse_tokens_file(&format!("# x\n{text}\n"), "t").unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("t:2: "), "{message}");
            assert!(message.contains(says), "{message}");
        }
    }

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin > Role::Trigger && Role::Trigger > Role::Read);
        assert!(new_token("x", "root").is_err());
    }
}
