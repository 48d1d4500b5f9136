//! Admin bearer tokens (`admin.tokens_file`), compared in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bearer tokens, kept as SHA-256 digests so comparing them takes the same
/// time whatever the candidate.
pub struct Tokens(Vec<[u8; 32]>);

impl Tokens {
    /// Reads one token a line; blank lines and `#` comments are skipped. A
    /// missing file gives no tokens (every API call is then refused).
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %path.display(), "no admin tokens file: the admin API refuses every call");
                return Ok(Tokens(Vec::new()));
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let tokens: Vec<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        if tokens.is_empty() {
            tracing::warn!(file = %path.display(), "admin tokens file has no tokens: the admin API refuses every call");
        }
        Ok(Tokens(tokens))
    }

    pub fn accepts(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        // Look at every token, so the time taken does not tell which matched.
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&digest))
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "# ops\nalpha-token\n\n  beta-token  \n").unwrap();
        let t = Tokens::load(&p).unwrap();
        assert!(t.accepts("alpha-token") && t.accepts("beta-token"));
        assert!(!t.accepts("alpha") && !t.accepts("") && !t.accepts("# ops"));
        let none = Tokens::load(&dir.path().join("missing")).unwrap();
        assert!(!none.accepts("alpha-token"));
    }
}
