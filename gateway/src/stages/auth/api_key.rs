//! API keys: consumers and their key hashes from a key file (TOML, apart
//! from the main configuration so it can be rotated on its own), verified
//! by hashing the presented key and comparing hashes in constant time.
//!
//! Keys are 256 random bits from the OS, written `gwk_` + base64url, and
//! stored only as SHA-256 hashes: a leaked key file grants nothing. A fast
//! hash is enough for keys of that entropy (unlike passwords, nothing can
//! be guessed). Each key may carry `not_before` and `expires`, so rotation
//! is: add the new key, move clients, remove the old one.

use std::{collections::HashMap, path::Path};

use base64::Engine as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use toml::Spanned;

/// The prefix of keys the gateway makes (`gateway keys new`).
pub const KEY_PREFIX: &str = "gwk_";
/// Characters of a key shown in files and logs to recognise it (never the key).
const SHOWN: usize = 12;

/// A key file that cannot be used: the same located errors as the
/// configuration (`file:line: key: message`).
pub type KeyFileError = crate::config::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    consumers: Vec<ConsumerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerFile {
    id: Spanned<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    keys: Vec<KeyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    hash: Spanned<String>,
    /// For people: which key this is in a ticket. The gateway needs only the hash.
    #[serde(default, rename = "prefix")]
    _prefix: Option<String>,
    #[serde(default)]
    not_before: Option<Spanned<toml::value::Datetime>>,
    #[serde(default)]
    expires: Option<Spanned<toml::value::Datetime>>,
}

/// A caller known to the key file.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Its id (goes to the upstream in `auth.consumer_header`).
    pub id: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// The roles comma-joined, as the upstream header carries them.
    pub roles_line: String,
}

#[derive(Debug, Clone)]
struct Key {
    hash: [u8; 32],
    consumer: usize,
    not_before: Option<i64>,
    expires: Option<i64>,
}

/// Why a presented key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No consumer holds it.
    Unknown,
    /// Its `not_before` is still ahead.
    NotYetValid,
    /// Its `expires` has passed.
    Expired,
}

/// Every consumer and key of one version of the key file.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    consumers: Vec<Consumer>,
    /// By the first 8 bytes of the hash; the whole hash is compared in
    /// constant time.
    keys: HashMap<u64, Vec<Key>>,
    key_count: usize,
    /// Each key's consumer and `expires`, in file order (for `gateway audit`).
    expiries: Vec<(usize, Option<i64>)>,
}

impl KeyRing {
    /// Reads and validates a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The key file `auth.key_file` names, or no keys without one.
    /// `allow_empty`: `auth.allow_empty_key_file`.
    pub fn load_configured(path: Option<&Path>, allow_empty: bool) -> Result<Self, KeyFileError> {
        path.map_or_else(
            || Ok(Self::default()),
            |p| Self::load_in_use(p, allow_empty),
        )
    }

    /// Reads a key file the gateway serves by: one with no key at all is
    /// refused like a broken one (the last good set stays), unless
    /// `allow_empty`, since a rewrite caught half-way (truncated, not yet
    /// written) reads as empty and would revoke every key at once.
    pub fn load_in_use(path: &Path, allow_empty: bool) -> Result<Self, KeyFileError> {
        let ring = Self::load(path)?;
        if ring.key_count == 0 && !allow_empty {
            return Err(KeyFileError::Invalid {
                file: path.display().to_string(),
                line: 1,
                key: "consumers".into(),
                message: "the file holds no key (an empty or half-written file?): replace key files whole (write a new file, then rename it over the old), or set auth.allow_empty_key_file = true to revoke every key this way".into(),
            });
        }
        Ok(ring)
    }

    /// Parses and validates `text`, naming it `file` in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, KeyFileError> {
        let invalid = crate::config::located(text, file);
        let raw: File = crate::config::parse_toml(text, file)?;
        let mut ring = Self::default();
        let mut seen = HashMap::new();
        for (ci, c) in raw.consumers.iter().enumerate() {
            let id = c.id.get_ref();
            if !valid_id(id) {
                return Err(invalid(
                    Some(c.id.span()),
                    format!("consumers[{ci}].id"),
                    format!("`{id}` is not an id (letters, digits and . _ @ - only)"),
                ));
            }
            if ring.consumers.iter().any(|x| &x.id == id) {
                return Err(invalid(
                    Some(c.id.span()),
                    format!("consumers[{ci}].id"),
                    format!("consumer `{id}` is listed twice"),
                ));
            }
            for (ki, k) in c.keys.iter().enumerate() {
                let at = |field: &str| format!("consumers[{ci}].keys[{ki}].{field}");
                let hash = parse_hash(k.hash.get_ref())
                    .map_err(|m| invalid(Some(k.hash.span()), at("hash"), m))?;
                if let Some(other) = seen.insert(hash, ci) {
                    return Err(invalid(
                        Some(k.hash.span()),
                        at("hash"),
                        format!(
                            "the same key is listed for `{}` already",
                            raw.consumers[other].id.get_ref()
                        ),
                    ));
                }
                let time = |d: &Option<Spanned<toml::value::Datetime>>, field: &str| {
                    d.as_ref()
                        .map(|d| {
                            unix_seconds(d.get_ref())
                                .map_err(|m| invalid(Some(d.span()), at(field), m))
                        })
                        .transpose()
                };
                let not_before = time(&k.not_before, "not_before")?;
                let expires = time(&k.expires, "expires")?;
                if let (Some(nb), Some(ex)) = (not_before, expires)
                    && nb >= ex
                {
                    return Err(invalid(
                        k.expires.as_ref().map(|e| e.span()),
                        at("expires"),
                        "must be after not_before".into(),
                    ));
                }
                ring.keys.entry(bucket(&hash)).or_default().push(Key {
                    hash,
                    consumer: ci,
                    not_before,
                    expires,
                });
                ring.key_count += 1;
                ring.expiries.push((ci, expires));
            }
            // Roles go into a comma-separated header.
            if let Some(bad) = c.roles.iter().find(|r| !valid_id(r)) {
                return Err(invalid(
                    Some(c.id.span()),
                    format!("consumers[{ci}].roles"),
                    format!("`{bad}` is not a role (letters, digits and . _ @ - only)"),
                ));
            }
            ring.consumers.push(Consumer {
                id: id.clone(),
                roles: c.roles.clone(),
                roles_line: c.roles.join(","),
            });
        }
        Ok(ring)
    }

    /// Each key's consumer id and `expires` (Unix seconds), in file order.
    pub fn expiries(&self) -> Vec<(String, Option<i64>)> {
        self.expiries
            .iter()
            .map(|(c, e)| (self.consumers[*c].id.clone(), *e))
            .collect()
    }

    /// The consumer holding `key`, if the key is valid at `now` (Unix seconds).
    pub fn verify(&self, key: &[u8], now: i64) -> Result<usize, KeyError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let hash = digest.as_ref();
        let candidates = self
            .keys
            .get(&bucket(hash))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let found = candidates.iter().find(|k| bool::from(k.hash.ct_eq(hash)));
        let Some(k) = found else {
            return Err(KeyError::Unknown);
        };
        if k.not_before.is_some_and(|t| now < t) {
            return Err(KeyError::NotYetValid);
        }
        if k.expires.is_some_and(|t| now >= t) {
            return Err(KeyError::Expired);
        }
        Ok(k.consumer)
    }

    /// Consumer `i`.
    pub fn consumer(&self, i: usize) -> &Consumer {
        &self.consumers[i]
    }

    /// All consumers, by index.
    pub fn consumers(&self) -> &[Consumer] {
        &self.consumers
    }

    /// How many keys it holds.
    pub fn key_count(&self) -> usize {
        self.key_count
    }
}

fn bucket(hash: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(b)
}

/// An id or role as the key file takes it, with the reason when not.
pub fn check_id(id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not an id (letters, digits and . _ @ - only)"
        ))
    }
}

/// A date-time as `not_before`/`expires` take it (with an offset).
pub fn check_datetime(text: &str) -> Result<(), String> {
    let d: toml::value::Datetime = text
        .parse()
        .map_err(|_| format!("`{text}` is not a date-time, e.g. 2027-01-01T00:00:00Z"))?;
    unix_seconds(&d).map(|_| ())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// `sha256:<64 hex digits>`.
fn parse_hash(v: &str) -> Result<[u8; 32], String> {
    let hex = v.strip_prefix("sha256:").ok_or_else(|| {
        "must be `sha256:` and 64 hex digits (see `gateway keys hash`)".to_owned()
    })?;
    if hex.len() != 64 {
        return Err(format!("{} hex digits, want 64", hex.len()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
            _ => return Err("not a hex digit".into()),
        }
    }
    Ok(out)
}

/// The line a key file stores for `key`: `sha256:<hex>`.
pub fn hash_line(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut s = String::from("sha256:");
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The recognisable start of a key, safe to show (never the whole key).
pub fn shown_prefix(key: &str) -> &str {
    let end = key.char_indices().nth(SHOWN).map_or(key.len(), |(i, _)| i);
    &key[..end]
}

/// A fresh key: 256 bits from the OS random generator.
pub fn generate() -> Result<String, String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the OS random generator failed".to_owned())?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Seconds since the Unix epoch of a TOML offset date-time.
fn unix_seconds(d: &toml::value::Datetime) -> Result<i64, String> {
    let (Some(date), Some(time), Some(offset)) = (d.date, d.time, d.offset) else {
        return Err(format!(
            "`{d}` needs a date, a time and an offset, e.g. 2027-01-01T00:00:00Z"
        ));
    };
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second);
    Ok(secs - offset_minutes * 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text, "keys.toml").expect("valid")
    }

    #[test]
    fn a_key_verifies_by_its_hash_within_its_window() {
        let key = generate().expect("key");
        assert!(key.starts_with(KEY_PREFIX) && key.len() == 47, "{key}");
        let text = format!(
            "[[consumers]]\nid = \"alice\"\nroles = [\"admin\"]\n[[consumers.keys]]\nhash = \"{}\"\nnot_before = 2026-01-01T00:00:00Z\nexpires = 2027-01-01T00:00:00+01:00\n",
            hash_line(&key)
        );
        let r = ring(&text);
        let jan_2026 = 1_767_225_600;
        assert_eq!(r.verify(key.as_bytes(), jan_2026), Ok(0));
        assert_eq!(r.consumer(0).roles_line, "admin");
        assert_eq!(
            r.verify(key.as_bytes(), jan_2026 - 1),
            Err(KeyError::NotYetValid)
        );
        // 2027-01-01T00:00:00+01:00 is 2026-12-31T23:00:00Z.
        let expiry = 1_798_761_600 - 3600;
        assert_eq!(r.verify(key.as_bytes(), expiry - 1), Ok(0));
        assert_eq!(r.verify(key.as_bytes(), expiry), Err(KeyError::Expired));
        assert_eq!(r.verify(b"gwk_wrong", jan_2026), Err(KeyError::Unknown));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let rows = [
            (
                "[[consumers]]\nid = \"a b\"\n",
                "keys.toml:2: consumers[0].id: ",
            ),
            (
                "[[consumers]]\nid = \"a\"\n[[consumers.keys]]\nhash = \"md5:00\"\n",
                "keys.toml:4: consumers[0].keys[0].hash: must be `sha256:`",
            ),
            (
                "[[consumers]]\nid = \"a\"\n[[consumers]]\nid = \"a\"\n",
                "keys.toml:4: consumers[1].id: consumer `a` is listed twice",
            ),
            (
                "[[consumers]]\nid = \"a\"\n[[consumers.keys]]\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\nexpires = 2027-01-01\n",
                "keys.toml:5: consumers[0].keys[0].expires: `2027-01-01` needs a date, a time and an offset",
            ),
            ("[[consumer]]\nid = \"a\"\n", "keys.toml:1: "),
        ];
        for (text, want) in rows {
            let e = KeyRing::parse(text, "keys.toml")
                .expect_err(text)
                .to_string();
            assert!(e.starts_with(want), "{e}\nwant {want}");
        }
    }

    #[test]
    fn the_same_key_for_two_consumers_is_an_error() {
        let h = hash_line("gwk_x");
        let text = format!(
            "[[consumers]]\nid = \"a\"\n[[consumers.keys]]\nhash = \"{h}\"\n[[consumers]]\nid = \"b\"\n[[consumers.keys]]\nhash = \"{h}\"\n"
        );
        let e = KeyRing::parse(&text, "k").expect_err("dup").to_string();
        assert!(e.contains("listed for `a` already"), "{e}");
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 23), 20_780);
    }

    #[test]
    fn shown_prefix_never_shows_the_whole_key() {
        let key = generate().expect("key");
        assert_eq!(shown_prefix(&key).len(), 12);
        assert!(key.starts_with(shown_prefix(&key)));
    }
}
