//! Admin bearer tokens (`admin.tokens_file`): who is calling, and with which
//! scope.
//!
//! One token a line: `TOKEN [admin|read|subscriber] [name=NAME]`, the scope
//! (default `admin`) and the name in either order; `#` comments and blank
//! lines are skipped. A token without `name=` is named
//! `token-<first 8 hex of its SHA-256>`, so logs and records can say which
//! token acted without holding it.
//!
//! Invariants: only SHA-256 digests of the tokens are kept; a candidate is
//! compared in constant time against every token, so the time taken tells
//! nothing about which token (if any) matched or how much of it did. No
//! error or log line carries a token value: a bad line is reported by its
//! path and line number. Digests and names are unique within a file, so a
//! candidate matches at most one grant.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Tokens shorter than this are accepted (existing deployments and tests use
/// shorter ones) but logged as easy to guess.
const RECOMMENDED_MIN_LEN: usize = 16;

/// Longest `name=`: a name is stored as the owner of every endpoint the
/// token makes and is written in logs.
const MAX_NAME_LEN: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything.
    Admin,
    /// Every GET, nothing else.
    Read,
    /// Its own hooks and endpoints, and the event types.
    Subscriber,
}

impl Scope {
    /// The word for the scope in the tokens file and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Read => "read",
            Scope::Subscriber => "subscriber",
        }
    }

    fn parse(word: &str) -> Option<Scope> {
        match word {
            "admin" => Some(Scope::Admin),
            "read" => Some(Scope::Read),
            "subscriber" => Some(Scope::Subscriber),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: the scope and name of the token a request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    pub name: String,
}

/// One token of the file: its digest and what it grants.
struct Entry {
    digest: [u8; 32],
    grant: Grant,
}

/// The bearer tokens of `admin.tokens_file`, kept as SHA-256 digests so
/// comparing them takes the same time whatever the candidate.
pub struct Tokens {
    entries: Vec<Entry>,
    /// Why there are no tokens (file missing, unreadable or empty).
    problem: Option<String>,
}

// === impl Tokens ===

impl Tokens {
    /// Reads the tokens file. A missing, unreadable or empty file gives no
    /// tokens (every call needing one is then refused) and a `problem()`,
    /// logged as a warning. A malformed line is an error
    /// `"<path>:<line>: <reason>"` that never quotes the token.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let file = format!("admin tokens file {}", path.display());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Tokens::warn_empty(format!("{file} does not exist")));
            }
            Err(e) => return Ok(Tokens::warn_empty(format!("{file} cannot be read: {e}"))),
        };
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            let at = |reason: String| format!("{}:{number}: {reason}", path.display());
            let Some((entry, len)) = parse_line(line).map_err(at)?.map(entry) else {
                continue;
            };
            // Lookups below compare whole digests and names, not in constant
            // time: they run once at load, not per request.
            if let Some((first, _)) = entries.iter().find(|(_, e)| e.digest == entry.digest) {
                return Err(at(format!("the same token as line {first}")));
            }
            if let Some((first, _)) = entries
                .iter()
                .find(|(_, e)| e.grant.name == entry.grant.name)
            {
                return Err(at(format!(
                    "name {:?} is already used on line {first}",
                    entry.grant.name
                )));
            }
            if len < RECOMMENDED_MIN_LEN {
                tracing::warn!(
                    file = %path.display(),
                    line = number,
                    name = %entry.grant.name,
                    "admin token shorter than {RECOMMENDED_MIN_LEN} characters: easy to guess"
                );
            }
            entries.push((number, entry));
        }
        if entries.is_empty() {
            return Ok(Tokens::warn_empty(format!("{file} has no tokens")));
        }
        Ok(Tokens {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
            problem: None,
        })
    }

    /// No tokens, for the reason given.
    pub fn empty(problem: impl Into<String>) -> Tokens {
        Tokens {
            entries: Vec::new(),
            problem: Some(problem.into()),
        }
    }

    fn warn_empty(problem: String) -> Tokens {
        tracing::warn!("{problem}: the admin API refuses every call that needs a token");
        Tokens::empty(problem)
    }

    /// The grant of `candidate`, if it is one of the tokens.
    pub fn find(&self, candidate: &str) -> Option<Grant> {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        // Look at every token and pick the match by a constant-time select,
        // so neither an early exit nor a branch tells which one matched.
        let mut hit = Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let eq = entry.digest.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), eq);
            hit |= eq;
        }
        if bool::from(hit) {
            let index = usize::try_from(index).ok()?;
            self.entries.get(index).map(|e| e.grant.clone())
        } else {
            None
        }
    }

    /// Why no token can be accepted, if so.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Names and scopes only: digests stay out of debug output too.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "grants",
                &self.entries.iter().map(|e| &e.grant).collect::<Vec<_>>(),
            )
            .field("problem", &self.problem)
            .finish()
    }
}

/// One line of the tokens file, read.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub token: &'a str,
    pub scope: Scope,
    /// `name=`, if given.
    pub name: Option<String>,
}

/// Reads one line of the tokens file: `None` for a blank line or a
/// comment. Errors never quote the token. The CLI reads its token with this
/// too, so both sides read the file alike.
pub fn parse_line(line: &str) -> Result<Option<Line<'_>>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let Some(token) = words.next() else {
        return Ok(None);
    };
    // A keyword first means the token was left out; quoting it is safe.
    if Scope::parse(token).is_some() || token.starts_with("name=") {
        return Err(format!(
            "the line starts with {token:?}: the token is missing"
        ));
    }
    let mut scope = None;
    let mut name = None;
    for (n, word) in words.enumerate() {
        if let Some(value) = word.strip_prefix("name=") {
            if name.is_some() {
                return Err("more than one name=".to_string());
            }
            name = Some(parse_name(value)?);
        } else if let Some(s) = Scope::parse(word) {
            if scope.is_some() {
                return Err("more than one scope".to_string());
            }
            scope = Some(s);
        } else {
            // The word is not quoted: a token written with a space in it
            // would otherwise leak its second half.
            return Err(format!(
                "word {} after the token is neither a scope (admin, read, subscriber) nor name=NAME",
                n + 1
            ));
        }
    }
    Ok(Some(Line {
        token,
        scope: scope.unwrap_or(Scope::Admin),
        name,
    }))
}

/// A line's entry, and the length of its token.
fn entry(line: Line<'_>) -> (Entry, usize) {
    let digest: [u8; 32] = Sha256::digest(line.token.as_bytes()).into();
    let name = line.name.unwrap_or_else(|| default_name(&digest));
    let entry = Entry {
        digest,
        grant: Grant {
            scope: line.scope,
            name,
        },
    };
    (entry, line.token.chars().count())
}

fn parse_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("name= is empty".to_string());
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(format!("name= is longer than {MAX_NAME_LEN} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "name {value:?} may only hold A-Z, a-z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(value.to_string())
}

/// `token-` and the first 8 hex digits of the digest: identifies a token
/// without revealing it.
fn default_name(digest: &[u8; 32]) -> String {
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("token-{hex}")
}

// === impl FileStamp ===

/// What identifies one version of a file on disk: a rewrite, a replacement
/// (new inode, as editors and systemd credentials do) or a change of length
/// gives a different stamp. The admin service polls it once a second and
/// reloads the tokens when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
    dev: u64,
    ino: u64,
}

/// The stamp of the file at `path` (symlinks followed), or `None` when its
/// metadata cannot be read.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        len: m.size(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHA: &str = "alpha-token-0123456789";
    const BETA: &str = "beta-token-0123456789";

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.tokens");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn load(text: &str) -> Result<Tokens, String> {
        let (_dir, p) = write(text);
        Tokens::load(&p)
    }

    fn grant(scope: Scope, name: &str) -> Option<Grant> {
        Some(Grant {
            scope,
            name: name.to_string(),
        })
    }

    #[test]
    fn every_scope_and_the_admin_default() {
        let t = load(&format!(
            "# ops\n{ALPHA}\n\n  {BETA} read name=dash  \n\
             sub-token-0123456789\tsubscriber\nadm-token-0123456789 admin name=root\n"
        ))
        .unwrap();
        assert_eq!(t.len(), 4);
        assert!(!t.is_empty() && t.problem().is_none());
        assert_eq!(t.find(ALPHA).unwrap().scope, Scope::Admin);
        assert_eq!(t.find(BETA), grant(Scope::Read, "dash"));
        assert_eq!(
            t.find("sub-token-0123456789").unwrap().scope,
            Scope::Subscriber
        );
        assert_eq!(t.find("adm-token-0123456789"), grant(Scope::Admin, "root"));
        assert_eq!(
            serde_json::to_value(Scope::Subscriber).unwrap(),
            "subscriber"
        );
        assert_eq!(Scope::Read.to_string(), "read");
    }

    #[test]
    fn scope_and_name_come_in_either_order() {
        let t = load(&format!(
            "{ALPHA} name=zapier.prod_1 subscriber\n{BETA} subscriber name=Other-2\n"
        ))
        .unwrap();
        assert_eq!(t.find(ALPHA), grant(Scope::Subscriber, "zapier.prod_1"));
        assert_eq!(t.find(BETA), grant(Scope::Subscriber, "Other-2"));
    }

    #[test]
    fn a_token_without_a_name_is_named_by_its_digest() {
        let t = load(&format!("{ALPHA} read\r\n")).unwrap();
        let digest = Sha256::digest(ALPHA.as_bytes());
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let g = t.find(ALPHA).unwrap();
        assert_eq!(g.name, format!("token-{hex}"));
        assert_eq!(g.name.len(), "token-".len() + 8);
        assert!(!g.name.contains(ALPHA));
    }

    #[test]
    fn bad_lines_name_the_line_and_never_the_token() {
        let secret = "s3cret-value-0123456789";
        let cases = [
            (format!("{secret} superuser"), "neither a scope"),
            (format!("{secret} Admin"), "neither a scope"),
            (format!("{secret} name="), "name= is empty"),
            (format!("{secret} name=has/slash"), "may only hold"),
            (format!("{secret} name=caf\u{e9}"), "may only hold"),
            (
                format!("{secret} name={}", "a".repeat(65)),
                "longer than 64",
            ),
            (format!("{secret} read admin"), "more than one scope"),
            (format!("{secret} read read"), "more than one scope"),
            (format!("{secret} name=a name=b"), "more than one name="),
            (
                format!("{secret} name=ops\n{BETA} read name=ops"),
                "already used on line 2",
            ),
            (
                format!("{secret} read\n{secret} admin name=x"),
                "same token as line 2",
            ),
            ("admin name=ops".to_string(), "the token is missing"),
            ("name=ops read".to_string(), "the token is missing"),
        ];
        for (body, reason) in cases {
            let text = format!("# header\n{body}\n");
            let (_dir, p) = write(&text);
            let err = match Tokens::load(&p) {
                Ok(_) => panic!("{body:?} loaded"),
                Err(e) => e,
            };
            let bad_line = if body.contains('\n') { 3 } else { 2 };
            assert!(
                err.starts_with(&format!("{}:{bad_line}: ", p.display())),
                "{err}"
            );
            assert!(err.contains(reason), "{body:?}: {err}");
            assert!(!err.contains(secret) && !err.contains(BETA), "{err}");
        }
    }

    #[test]
    fn short_tokens_still_load() {
        // The integration tests write tokens like this one.
        let t = load("rotated-token\n").unwrap();
        assert!(t.find("rotated-token").is_some());
    }

    #[test]
    fn a_missing_empty_or_unreadable_file_has_no_tokens_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let t = Tokens::load(&missing).unwrap();
        assert!(t.is_empty() && t.find(ALPHA).is_none());
        assert_eq!(
            t.problem(),
            Some(format!("admin tokens file {} does not exist", missing.display()).as_str())
        );

        let (_d, p) = write("# only comments\n\n   \n");
        let t = Tokens::load(&p).unwrap();
        assert_eq!(t.len(), 0);
        assert_eq!(
            t.problem(),
            Some(format!("admin tokens file {} has no tokens", p.display()).as_str())
        );

        // A directory cannot be read as a file, even by root.
        let t = Tokens::load(dir.path()).unwrap();
        let problem = t.problem().unwrap();
        assert!(
            problem.starts_with(&format!(
                "admin tokens file {} cannot be read: ",
                dir.path().display()
            )),
            "{problem}"
        );

        let t = Tokens::empty("no config");
        assert!(t.is_empty() && t.problem() == Some("no config"));
    }

    #[test]
    fn find_compares_whole_values() {
        let t = load(&format!("{ALPHA}\n{BETA} read\n")).unwrap();
        for wrong in ["", "alpha", &ALPHA[..ALPHA.len() - 1], "# ops", "wrong"] {
            assert!(t.find(wrong).is_none(), "{wrong:?}");
        }
        assert!(t.find(&format!("{ALPHA}x")).is_none());
        assert!(t.find(&format!("{ALPHA} {BETA}")).is_none());
        let debug = format!("{t:?}");
        assert!(!debug.contains(ALPHA) && debug.contains("Read"), "{debug}");
    }

    #[test]
    fn the_stamp_changes_when_the_file_is_rewritten() {
        let (dir, p) = write(&format!("{ALPHA}\n"));
        let first = stamp(&p).unwrap();
        assert_eq!(stamp(&p), Some(first.clone()));
        std::fs::write(&p, format!("{ALPHA}\n{BETA} read\n")).unwrap();
        let second = stamp(&p).unwrap();
        assert_ne!(first, second);

        // Replaced by a rename (a new inode), same length.
        let next = dir.path().join("next");
        std::fs::write(&next, format!("{BETA}\n{ALPHA} read\n")).unwrap();
        std::fs::rename(&next, &p).unwrap();
        assert_ne!(stamp(&p).unwrap(), second);

        assert_eq!(stamp(&dir.path().join("missing")), None);
    }
}
