//! Finding secrets in lines of text, by hand-written matchers (no regex engine: it would
//! triple the component's size and its load time).

/// One secret found on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind of secret it looks like.
    pub kind: &'static str,
    /// Byte range of the secret within the line.
    pub start: usize,
    /// End of that range.
    pub end: usize,
}

/// The kind of a secret found by its name rather than its format.
pub const ASSIGNMENT_KIND: &str = "secret assigned to a secret-looking name";

/// Lines carrying this marker are never reported (for test fixtures and documentation).
pub const ALLOW_MARKER: &str = "secret-guard: allow";

/// Names whose assigned value is a secret when it looks random.
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "accesskey",
    "private_key",
    "credential",
    "auth",
];

/// A token with a fixed format: prefix, kind, allowed body characters, minimum body length.
type TokenFormat = (&'static str, &'static str, fn(u8) -> bool, usize);

/// The token formats recognised.
const TOKEN_FORMATS: &[TokenFormat] = &[
    ("ghp_", "GitHub token", alnum, 36),
    ("gho_", "GitHub token", alnum, 36),
    ("ghu_", "GitHub token", alnum, 36),
    ("ghs_", "GitHub token", alnum, 36),
    ("ghr_", "GitHub token", alnum, 36),
    ("github_pat_", "GitHub token", word, 40),
    ("glpat-", "GitLab token", token_char, 20),
    ("xoxb-", "Slack token", token_char, 10),
    ("xoxp-", "Slack token", token_char, 10),
    ("xoxa-", "Slack token", token_char, 10),
    ("xoxr-", "Slack token", token_char, 10),
    ("xoxs-", "Slack token", token_char, 10),
    ("AIza", "Google API key", token_char, 35),
    ("sk_live_", "Stripe secret key", alnum, 16),
    ("rk_live_", "Stripe secret key", alnum, 16),
    ("sk-ant-", "Anthropic API key", token_char, 20),
    ("sk-proj-", "OpenAI API key", token_char, 20),
    ("npm_", "npm token", alnum, 36),
];

/// AWS access key id prefixes; the id is the prefix and 16 upper-case letters or digits.
const AWS_KEY_PREFIXES: &[&str] = &["AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "AIPA"];

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Every secret on `line`, in order of position, without overlaps.
pub fn scan_line(line: &str) -> Vec<Finding> {
    if line.contains(ALLOW_MARKER) {
        return Vec::new();
    }
    let mut found = Vec::new();
    if let Some(start) = line.find("-----BEGIN ")
        && line[start..].contains("PRIVATE KEY")
    {
        found.push(Finding {
            kind: "private key block",
            start,
            end: line.len(),
        });
    }
    found.extend(fixed_format_tokens(line));
    found.extend(secret_assignment(line));
    found.sort_by_key(|f| f.start);
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        match kept.last() {
            Some(last) if f.start < last.end => {}
            _ => kept.push(f),
        }
    }
    kept
}

/// Tokens with a known prefix and shape, starting at a word boundary.
///
/// The scan walks bytes, and compares bytes: every prefix and body character is ASCII, so
/// a match starts and ends on a character boundary whatever the rest of the line holds
/// (the line itself is never sliced at a byte position, which may fall inside a
/// multi-byte character).
fn fixed_format_tokens(line: &str) -> Vec<Finding> {
    let bytes = line.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !token_char(bytes[i - 1]);
        if !boundary {
            i += 1;
            continue;
        }
        let rest = &bytes[i..];
        let mut matched = None;
        for &(prefix, kind, body, min) in TOKEN_FORMATS {
            if rest.starts_with(prefix.as_bytes()) {
                let len = rest[prefix.len()..]
                    .iter()
                    .take_while(|b| body(**b))
                    .count();
                if len >= min {
                    matched = Some((kind, prefix.len() + len));
                    break;
                }
            }
        }
        if matched.is_none() {
            for prefix in AWS_KEY_PREFIXES {
                if rest.starts_with(prefix.as_bytes()) {
                    let body = &rest[prefix.len()..];
                    let len = body
                        .iter()
                        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                        .count();
                    let ends_cleanly = body.get(len).is_none_or(|b| !alnum(*b));
                    if len == 16 && ends_cleanly {
                        matched = Some(("AWS access key id", prefix.len() + 16));
                        break;
                    }
                }
            }
        }
        match matched {
            Some((kind, len)) => {
                found.push(Finding {
                    kind,
                    start: i,
                    end: i + len,
                });
                i += len;
            }
            None => i += 1,
        }
    }
    found
}

/// `name = "value"` (or `:`, `:=`) where the name says secret and the value looks random.
fn secret_assignment(line: &str) -> Vec<Finding> {
    let bytes = line.as_bytes();
    let mut found = Vec::new();
    let mut search_from = 0;
    while let Some(op) = line[search_from..]
        .find(['=', ':'])
        .map(|i| i + search_from)
    {
        search_from = op + 1;
        // The name: the identifier just before the operator (quotes and spaces skipped).
        let mut name_end = op;
        while name_end > 0 && matches!(bytes[name_end - 1], b' ' | b'\t' | b'"' | b'\'' | b':') {
            name_end -= 1;
        }
        let mut name_start = name_end;
        while name_start > 0 && (token_char(bytes[name_start - 1]) || bytes[name_start - 1] == b'.')
        {
            name_start -= 1;
        }
        let name = line[name_start..name_end].to_ascii_lowercase();
        if name.is_empty() || !SECRET_NAMES.iter().any(|n| name.contains(n)) {
            continue;
        }
        // The value: quoted, or up to whitespace / a separator.
        let mut v = op + 1;
        if bytes.get(v) == Some(&b'=') || (op > 0 && matches!(bytes[op - 1], b'!' | b'<' | b'>')) {
            continue; // a comparison, not an assignment
        }
        while v < bytes.len() && matches!(bytes[v], b' ' | b'\t') {
            v += 1;
        }
        let (start, end, quoted) = match bytes.get(v) {
            Some(&q @ (b'"' | b'\'' | b'`')) => match line[v + 1..].find(q as char) {
                Some(len) => (v + 1, v + 1 + len, true),
                None => continue,
            },
            Some(_) => {
                let len = line[v..]
                    .find(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '}' | ')'))
                    .unwrap_or(line.len() - v);
                (v, v + len, false)
            }
            None => continue,
        };
        if looks_like_secret(&line[start..end], quoted) {
            found.push(Finding {
                kind: ASSIGNMENT_KIND,
                start,
                end,
            });
        }
    }
    found
}

/// Whether an assigned value is a real-looking secret rather than a placeholder or code.
fn looks_like_secret(value: &str, quoted: bool) -> bool {
    if value.len() < 8 || value.contains(char::is_whitespace) {
        return false;
    }
    let lower = value.to_ascii_lowercase();
    let placeholder = [
        "${",
        "{{",
        "<",
        "%(",
        "changeme",
        "example",
        "xxxx",
        "****",
        "redacted",
        "placeholder",
        "your_",
        "your-",
    ]
    .iter()
    .any(|p| lower.contains(p));
    if placeholder {
        return false;
    }
    if !quoted {
        // Unquoted values in code are usually expressions: calls, fields, variables.
        let code_like = value.contains(['(', '.', '$', '[', '"', '\''])
            || !(value.bytes().any(|b| b.is_ascii_digit())
                && value.bytes().any(|b| b.is_ascii_alphabetic()));
        if code_like {
            return false;
        }
    }
    entropy_bits_per_char(value) >= 3.0
}

/// Shannon entropy of `s`'s bytes, in bits per character.
pub fn entropy_bits_per_char(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// `line` with every finding replaced by `[redacted]`.
pub fn redact(line: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    for f in findings {
        out.push_str(&line[at..f.start]);
        out.push_str("[redacted]");
        at = f.end;
    }
    out.push_str(&line[at..]);
    out
}

/// A safe preview of a secret found by its format: its first four characters (the public
/// prefix of the format), then an ellipsis. Nothing for a key block (whose start says
/// nothing) or a value found by its name (whose start is part of the secret).
pub fn preview(finding: &Finding, secret: &str) -> String {
    if finding.kind == ASSIGNMENT_KIND || secret.starts_with('-') {
        return String::new();
    }
    let head: String = secret.chars().take(4).collect();
    format!("{head}…")
}

/// Whether `text` matches `pattern`, where `*` matches any text (anchored at both ends).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(line: &str) -> Vec<&'static str> {
        scan_line(line).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn known_formats_are_found() {
        assert_eq!(
            kinds("-----BEGIN OPENSSH PRIVATE KEY-----"),
            ["private key block"]
        );
        assert_eq!(
            kinds("-----BEGIN RSA PRIVATE KEY-----"),
            ["private key block"]
        );
        assert_eq!(kinds("key: AKIAZ7VQ3KQ2LMNOPQRS"), ["AWS access key id"]);
        let gh = format!("export GH=ghp_{}", "a1B2".repeat(9));
        assert_eq!(kinds(&gh), ["GitHub token"]);
        assert_eq!(
            kinds("slack = 'xoxb-1234567890-abcdefghij'"),
            ["Slack token"]
        );
        assert_eq!(
            kinds("const k = \"AIzaSyD-1234567890abcdefghijklmnopqrstu\";"),
            ["Google API key"]
        );
    }

    #[test]
    fn random_values_assigned_to_secret_names_are_found() {
        assert_eq!(
            kinds("DB_PASSWORD=k9X!2mQz#Lr8"),
            ["secret assigned to a secret-looking name"]
        );
        assert_eq!(
            kinds("  \"api_key\": \"4f9a8c2e7b1d6f3a\","),
            ["secret assigned to a secret-looking name"]
        );
    }

    #[test]
    fn code_placeholders_and_prose_are_not_secrets() {
        for line in [
            "password = get_password()",
            "token = self.token",
            "password = \"${DB_PASSWORD}\"",
            "api_key = \"<your key here>\"",
            "secret = \"changeme-please\"",
            "if token == expected {",
            "The password: must be at least 8 characters",
            "aws_key = AKIAIOSFODNN7EXAMPLE  # secret-guard: allow",
            "-----BEGIN PUBLIC KEY-----",
            "AKIAZ7VQ3KQ2LMNOPQRSTU is too long to be a key id",
            "ls -la && git status",
        ] {
            assert!(kinds(line).is_empty(), "{line:?} gave {:?}", kinds(line));
        }
    }

    /// Text in several scripts, emoji (4-byte and joined sequences) and combining marks,
    /// around secrets and without them: findings start and end on character boundaries.
    #[test]
    fn text_of_any_script_is_scanned_without_slicing_a_character() {
        let key = "AKIAZ7VQ3KQ2LMNOPQRS";
        let texts = [
            "naïve café",
            "日本語のテキスト",
            "Привет, мир",
            "مرحبا بالعالم",
            "👩‍👩‍👧‍👦 family 🏳️‍🌈",
            "e\u{301}e\u{301} n\u{303}",
            "ÅÄÖ€£¥",
        ];
        for text in texts {
            assert!(kinds(text).is_empty(), "{text:?} gave {:?}", kinds(text));
            for line in [
                format!("{text} {key}"),
                format!("{key} {text}"),
                format!("{text}{key}"),
                format!("«{key}» {text}"),
                format!("token = \"k9X2mQzLr8Wp\" # {text}"),
            ] {
                let found = scan_line(&line);
                assert!(!found.is_empty(), "nothing found in {line:?}");
                for f in &found {
                    assert!(line.is_char_boundary(f.start) && line.is_char_boundary(f.end));
                }
                assert!(redact(&line, &found).contains("[redacted]"));
            }
        }
    }

    #[test]
    fn redaction_replaces_only_the_secret() {
        let line = "deploy with AKIAZ7VQ3KQ2LMNOPQRS now";
        assert_eq!(redact(line, &scan_line(line)), "deploy with [redacted] now");
    }

    #[test]
    fn globs_are_anchored() {
        assert!(glob_match("tests/fixtures/*", "tests/fixtures/key.pem"));
        assert!(glob_match("*.md", "docs/README.md"));
        assert!(!glob_match("*.md", "README.md.txt"));
        assert!(glob_match("exact.txt", "exact.txt"));
        assert!(!glob_match("exact.txt", "src/exact.txt"));
    }
}
