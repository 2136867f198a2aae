//! Sealed secrets: values encrypted with XChaCha20-Poly1305 under a key that only the person who
//! stores them (`sluice secrets set`) and the workers that run steps hold.
//!
//! The scheduler keeps and forwards sealed text only: it never needs the key, so neither its
//! store, its API nor Redis ever sees a value in clear. A sealed value is bound to its secret's
//! name (the name is the AEAD's associated data), so one secret's text cannot be passed off as
//! another's, and it names the key it was sealed with, so a worker with the wrong key says so
//! instead of failing with a bare "decryption failed".

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The variable holding the key (64 hex digits) for workers, `sluice run` and `secrets set`.
pub const KEY_ENV: &str = "SLUICE_SECRET_KEY";
/// The variable naming a file that holds the key, for where variables are visible to others.
pub const KEY_FILE_ENV: &str = "SLUICE_SECRET_KEY_FILE";
/// Largest value a secret may hold.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// What every sealed value starts with; a later format gets a new one.
const FORMAT: &str = "sluice-sealed-v1";
const NONCE_BYTES: usize = 24;

/// Why a key could not be loaded or a sealed value opened. No variant carries a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The key text is not 64 hex digits.
    #[error("a secret key is 64 hex digits (make one with `sluice secrets keygen`)")]
    BadKey,
    /// The key file could not be read.
    #[error("cannot read the secret key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The text is not something [`SecretKey::seal`] wrote.
    #[error("secret `{0}` is not a sealed value Sluice wrote")]
    Malformed(String),
    /// Sealed with another key than this one.
    #[error("secret `{name}` was sealed with key {sealed_with}, but this process has key {have}")]
    OtherKey {
        /// The secret.
        name: String,
        /// The id of the key it was sealed with.
        sealed_with: String,
        /// The id of the key this process holds.
        have: String,
    },
    /// The key is right but the text was changed, or it belongs to another secret.
    #[error("secret `{0}` does not open: its sealed text was altered or belongs to another name")]
    Tampered(String),
    /// The value is not UTF-8 without NUL bytes, so it cannot be an environment variable.
    #[error("secret `{0}` is not text an environment variable can hold (UTF-8, no NUL byte)")]
    NotText(String),
    /// The value is larger than [`MAX_SECRET_BYTES`].
    #[error("secret `{0}` is larger than 64 KiB")]
    TooLarge(String),
}

/// A 256-bit key. Its bytes are wiped when it is dropped and never printed.
#[derive(Clone)]
pub struct SecretKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id())
    }
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> SecretKey {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&key);
        SecretKey { bytes }
    }

    /// Parses 64 hex digits (surrounding whitespace, such as a file's newline, is ignored).
    pub fn parse(text: &str) -> Result<SecretKey, SecretError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey { bytes })
    }

    /// The key from `file` when given, else from [`KEY_ENV`]'s value; `None` when neither is set.
    pub fn load(
        file: Option<&Path>,
        env_value: Option<&str>,
    ) -> Result<Option<SecretKey>, SecretError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map(Zeroizing::new)
                .map_err(|e| SecretError::KeyFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            return SecretKey::parse(&text).map(Some);
        }
        env_value.map(SecretKey::parse).transpose()
    }

    /// The key as 64 hex digits, to hand to workers.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.bytes.as_ref()))
    }

    /// A short public name for the key (a hash of it): safe to print and to store beside sealed
    /// values, and enough to tell two keys apart.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"sluice secret key id\0")
            .chain_update(self.bytes.as_ref())
            .finalize();
        hex::encode(&digest[..6])
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.bytes.as_ref().into())
    }

    /// Seals `value` as secret `name`: `sluice-sealed-v1:KEYID:BASE64(nonce || ciphertext)`.
    pub fn seal(&self, name: &str, value: &str) -> Result<String, SecretError> {
        check_value(name, value.as_bytes())?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: value.as_bytes(),
            aad: &associated_data(name),
        };
        let ciphertext = self
            .cipher()
            .encrypt(&nonce, payload)
            .map_err(|_| SecretError::TooLarge(name.to_string()))?;
        let mut body = nonce.to_vec();
        body.extend_from_slice(&ciphertext);
        Ok(format!("{FORMAT}:{}:{}", self.id(), STANDARD.encode(body)))
    }

    /// Opens what [`SecretKey::seal`] wrote for `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Zeroizing<String>, SecretError> {
        let malformed = || SecretError::Malformed(name.to_string());
        let (key_id, body) = parse_sealed(sealed).ok_or_else(malformed)?;
        if key_id != self.id() {
            return Err(SecretError::OtherKey {
                name: name.to_string(),
                sealed_with: key_id.to_string(),
                have: self.id(),
            });
        }
        let body = STANDARD.decode(body).map_err(|_| malformed())?;
        if body.len() < NONCE_BYTES {
            return Err(malformed());
        }
        let (nonce, ciphertext) = body.split_at(NONCE_BYTES);
        let payload = Payload {
            msg: ciphertext,
            aad: &associated_data(name),
        };
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(XNonce::from_slice(nonce), payload)
                .map_err(|_| SecretError::Tampered(name.to_string()))?,
        );
        check_value(name, &plain)?;
        let text =
            std::str::from_utf8(&plain).map_err(|_| SecretError::NotText(name.to_string()))?;
        Ok(Zeroizing::new(text.to_string()))
    }
}

/// The id of the key a sealed value names, without opening it (for listings).
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    parse_sealed(sealed).map(|(id, _)| id)
}

fn parse_sealed(sealed: &str) -> Option<(&str, &str)> {
    let rest = sealed.trim().strip_prefix(FORMAT)?.strip_prefix(':')?;
    rest.split_once(':')
}

fn associated_data(name: &str) -> Vec<u8> {
    [b"sluice secret\0".as_slice(), name.as_bytes()].concat()
}

fn check_value(name: &str, value: &[u8]) -> Result<(), SecretError> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge(name.to_string()));
    }
    if value.contains(&0) || std::str::from_utf8(value).is_err() {
        return Err(SecretError::NotText(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_name_only() {
        let key = SecretKey::generate();
        let sealed = key.seal("API_TOKEN", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open("API_TOKEN", &sealed).unwrap().as_str(), "hunter2");
        assert_eq!(
            key.open("OTHER", &sealed),
            Err(SecretError::Tampered("OTHER".into())),
            "the name is bound to the text"
        );
        let other = SecretKey::generate();
        assert!(matches!(
            other.open("API_TOKEN", &sealed),
            Err(SecretError::OtherKey { sealed_with, have, .. }) if sealed_with == key.id() && have == other.id()
        ));
    }

    #[test]
    fn sealing_twice_gives_different_text() {
        let key = SecretKey::generate();
        assert_ne!(key.seal("A", "v").unwrap(), key.seal("A", "v").unwrap());
    }

    #[test]
    fn altered_text_is_refused() {
        let key = SecretKey::generate();
        let sealed = key.seal("A", "value").unwrap();
        let (head, body) = sealed.rsplit_once(':').unwrap();
        let mut bytes = STANDARD.decode(body).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = format!("{head}:{}", STANDARD.encode(bytes));
        assert_eq!(
            key.open("A", &altered),
            Err(SecretError::Tampered("A".into()))
        );
        for junk in [
            "",
            "hunter2",
            "sluice-sealed-v1:",
            &format!("sluice-sealed-v1:{}:!!", key.id()),
        ] {
            assert_eq!(
                key.open("A", junk),
                Err(SecretError::Malformed("A".into())),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn values_an_environment_cannot_hold_are_refused() {
        let key = SecretKey::generate();
        assert_eq!(key.seal("A", "a\0b"), Err(SecretError::NotText("A".into())));
        let big = "x".repeat(MAX_SECRET_BYTES + 1);
        assert_eq!(key.seal("A", &big), Err(SecretError::TooLarge("A".into())));
    }

    #[test]
    fn keys_parse_from_hex_and_print_as_their_id_only() {
        let key = SecretKey::generate();
        let again = SecretKey::parse(&format!("  {}\n", key.to_hex().as_str())).unwrap();
        assert_eq!(again.id(), key.id());
        assert!(!format!("{key:?}").contains(key.to_hex().as_str()));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            assert_eq!(
                SecretKey::parse(bad).unwrap_err(),
                SecretError::BadKey,
                "{bad:?}"
            );
        }
    }
}
