//! git hooks: pre-commit and pre-merge-commit (the staged additions, from `git diff
//! --cached`), commit-msg (the message file, which the verdict may rewrite), pre-push
//! (remote, URL and ref lines); and installing a hook script into a repository.
//!
//! What a commit is checked by: the lines it adds to history. Binary files are diffed as
//! text, and an added line with bytes that are not text is cut to the text runs in it (as
//! `strings` would), so that a key block inside a binary file is seen and the event does
//! not grow sixfold with escaped bytes. Renames are detected: a file moved unchanged adds
//! nothing (what it holds is in history already) and a moved file with edits adds only its
//! edits. Paths come as git writes them, unquoted (`"a\tb"`) and without the tab git puts
//! after a path with a space.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_contract::hook::{AddedLine, FileChange, Push, PushRef};

use crate::cli::GitHook;

/// The first line of every hook script spawner installs; uninstall removes only those.
pub const SCRIPT_MARKER: &str = "# installed by `spawner hook install`";

/// Suffix of a hook that `install --force` replaced, restored by uninstall.
pub const BACKUP_SUFFIX: &str = ".spawner-backup";

/// The staged additions of the repository at `dir` (honouring `GIT_INDEX_FILE`, which git
/// sets for `commit -a` and `commit <paths>`), and the diff they came from.
pub fn staged_changes(dir: &Path) -> Result<(Vec<FileChange>, Vec<u8>), String> {
    let mut diff = staged_diff(dir, true)?;
    if diff.len() as u64 > agent_contract::envelope::MAX_INPUT_BYTES {
        // Large binaries as text would put the commit over the input limit: scan them as
        // git shows them by default ("Binary files ... differ") and the text files whole.
        diff = staged_diff(dir, false)?;
    }
    Ok((parse_diff(&diff), diff))
}

/// `git diff --cached` with zero context, renames detected, and binary files as text when
/// `binary_as_text`.
fn staged_diff(dir: &Path, binary_as_text: bool) -> Result<Vec<u8>, String> {
    let output = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "core.quotePath=false",
            "diff",
            "--cached",
            "--no-color",
            "--no-ext-diff",
            "--find-renames",
            "--diff-filter=d",
            "--unified=0",
            "--src-prefix=a/",
            "--dst-prefix=b/",
        ])
        .args(binary_as_text.then_some("--text"))
        .output()
        .map_err(|e| format!("cannot run git to read the staged changes: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`git diff --cached` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

/// Shortest run of text kept from a line of binary bytes: shorter runs are noise, and no
/// secret format is that short.
const MIN_TEXT_RUN: usize = 4;

/// An added line's text: the line itself when it is text, else its text runs of at least
/// [`MIN_TEXT_RUN`] characters, separated by a space.
fn line_text(bytes: &[u8]) -> String {
    let is_text = |c: char| c == '\t' || !c.is_control();
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.chars().all(is_text)
    {
        return text.to_owned();
    }
    String::from_utf8_lossy(bytes)
        .split(|c: char| !is_text(c) || c == char::REPLACEMENT_CHARACTER)
        .filter(|run| run.chars().count() >= MIN_TEXT_RUN)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A path as git writes it in a `+++` line: C-quoted (`"b/a\tb"`) when it holds special
/// characters, followed by a tab when it holds a space; without its `b/` prefix.
fn diff_path(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\t").unwrap_or(raw);
    let unquoted = match raw {
        [b'"', inner @ .., b'"'] => c_unquote(inner),
        _ => raw.to_vec(),
    };
    let path = unquoted.strip_prefix(b"b/").unwrap_or(&unquoted);
    String::from_utf8_lossy(path).into_owned()
}

/// Undo git's C-style quoting: `\t`, `\n`, `\"`, `\\`, ... and `\ooo` octal bytes.
fn c_unquote(quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(quoted.len());
    let mut bytes = quoted.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'a') => out.push(0x07),
            Some(b'b') => out.push(0x08),
            Some(b'f') => out.push(0x0c),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'v') => out.push(0x0b),
            Some(d @ b'0'..=b'7') => {
                let mut value = u32::from(d - b'0');
                for _ in 0..2 {
                    match bytes.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(value).unwrap_or(u8::MAX));
            }
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    out
}

/// The added lines of a unified diff with zero context, per new file.
pub fn parse_diff(diff: &[u8]) -> Vec<FileChange> {
    let mut files: Vec<FileChange> = Vec::new();
    let mut next_line: u32 = 0;
    // Between `diff --git` and the first hunk: where `+++ b/path` names the file. Inside a
    // hunk, a line `+++ x` is an added line `++ x`.
    let mut in_header = false;
    let lines = diff
        .strip_suffix(b"\n")
        .unwrap_or(diff)
        .split(|b| *b == b'\n');
    for line in lines {
        if line.starts_with(b"diff --git ") {
            in_header = true;
        } else if in_header && let Some(path) = line.strip_prefix(b"+++ ") {
            files.push(FileChange {
                path: diff_path(path),
                added: Vec::new(),
            });
        } else if let Some(hunk) = line.strip_prefix(b"@@ ") {
            let hunk = String::from_utf8_lossy(hunk);
            in_header = false;
            // @@ -a,b +c,d @@: the new side starts at line c.
            next_line = hunk
                .split_whitespace()
                .find_map(|part| part.strip_prefix('+'))
                .and_then(|range| range.split(',').next())
                .and_then(|start| start.parse().ok())
                .unwrap_or(1);
        } else if !in_header
            && let Some(bytes) = line.strip_prefix(b"+")
            && let Some(file) = files.last_mut()
        {
            // A CRLF file's lines end in `\r`: that is the line ending, not binary.
            file.added.push(AddedLine {
                line: next_line,
                text: line_text(bytes.strip_suffix(b"\r").unwrap_or(bytes)),
            });
            next_line = next_line.saturating_add(1);
        }
    }
    files.retain(|f| f.path != "/dev/null" && !f.added.is_empty());
    files
}

/// A pre-push call: the remote and URL from git's arguments, the refs from standard input
/// (`<local ref> <local sha> <remote ref> <remote sha>` per line).
pub fn parse_push(args: &[String], stdin: &str) -> Result<Push, String> {
    let [remote, url] = args else {
        return Err(format!(
            "pre-push expects git's two arguments (remote name and URL), got {}",
            args.len()
        ));
    };
    let mut refs = Vec::new();
    for (n, line) in stdin.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [local_ref, local_sha, remote_ref, remote_sha] = fields[..] else {
            return Err(format!(
                "pre-push line {} is not `<local ref> <local sha> <remote ref> <remote sha>`: {line:?}",
                n + 1
            ));
        };
        refs.push(PushRef {
            local_ref: local_ref.into(),
            local_sha: local_sha.into(),
            remote_ref: remote_ref.into(),
            remote_sha: remote_sha.into(),
        });
    }
    Ok(Push {
        remote: remote.clone(),
        url: url.clone(),
        refs,
    })
}

/// The commit message file named by commit-msg's argument, relative to `dir`.
pub fn message_file(args: &[String], dir: &Path) -> Result<PathBuf, String> {
    match args {
        [file] => Ok(dir.join(file)),
        _ => Err(format!(
            "commit-msg expects one argument (the message file), got {}",
            args.len()
        )),
    }
}

/// Replace `path` with `bytes` (and `mode`, else the temporary file's 0600): a new file
/// beside it, synced, then renamed over it, so that git never reads half a file. Used for
/// the commit-msg rewrite and for installing a hook script.
pub fn replace_file(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl GitHook {
    /// git's name for the hook.
    pub fn file_name(self) -> &'static str {
        match self {
            GitHook::PreCommit => "pre-commit",
            GitHook::PreMergeCommit => "pre-merge-commit",
            GitHook::CommitMsg => "commit-msg",
            GitHook::PrePush => "pre-push",
        }
    }
}

/// Where git looks for hooks in the repository at `repo` (`core.hooksPath` respected).
pub fn hooks_dir(repo: &Path) -> Result<PathBuf, String> {
    let output = Command::new("git")
        .current_dir(repo)
        .args(["rev-parse", "--path-format=absolute", "--git-path", "hooks"])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{} is not a git repository: {}",
            repo.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(repo.join(dir))
}

/// `text` quoted for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The hook script that runs `agent` through `spawner` with `home`.
pub fn hook_script(spawner: &Path, home: &Path, agent: &str, hook: GitHook) -> String {
    format!(
        "#!/bin/sh\n{SCRIPT_MARKER} (agent {agent}); remove with `spawner hook uninstall --git {name}`\n\
         exec {spawner} --home {home} hook {agent} --protocol {name} \"$@\"\n",
        agent = shell_quote(agent),
        name = hook.file_name(),
        spawner = shell_quote(&spawner.display().to_string()),
        home = shell_quote(&home.display().to_string()),
    )
}

/// Whether the hook file at `path` was installed by spawner.
pub fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| {
        s.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(SCRIPT_MARKER))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_additions_are_numbered_in_the_new_file() {
        let diff = "diff --git a/k.pem b/k.pem\nnew file mode 100644\n--- /dev/null\n+++ b/k.pem\n\
                    @@ -0,0 +1,2 @@\n+-----BEGIN RSA PRIVATE KEY-----\n+abc\n\
                    diff --git a/src/x.rs b/src/x.rs\n--- a/src/x.rs\n+++ b/src/x.rs\n\
                    @@ -10,0 +11,2 @@ fn main\n+let t = 1;\n+++ x\n@@ -20 +22,0 @@\n-gone\n";
        let files = parse_diff(diff.as_bytes());
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "k.pem");
        assert_eq!(files[0].added[1].line, 2);
        assert_eq!(files[1].path, "src/x.rs");
        assert_eq!(
            (files[1].added[0].line, files[1].added[0].text.as_str()),
            (11, "let t = 1;")
        );
        assert_eq!(
            (files[1].added[1].line, files[1].added[1].text.as_str()),
            (12, "++ x")
        );
        assert_eq!(files[1].added.len(), 2);
    }

    #[test]
    fn paths_are_unquoted_and_binary_lines_cut_to_their_text() {
        let diff = b"diff --git a/my file.txt b/my file.txt\n--- /dev/null\n+++ b/my file.txt\t\n\
                     @@ -0,0 +1 @@\n+x\n\
                     diff --git \"a/t\\tb\" \"b/t\\tb\"\n+++ \"b/t\\tb\"\n@@ -0,0 +1 @@\n+y\n\
                     diff --git a/caf\xc3\xa9 b/caf\xc3\xa9\n+++ \"b/caf\\303\\251\"\n@@ -0,0 +1 @@\n+z\n\
                     diff --git a/k.bin b/k.bin\n+++ b/k.bin\n@@ -0,0 +1 @@\n\
                     +\x00\x01\xffAKIAIOSFODNN7EXAMPLE\x00\x02ab\x03caf\xc3\xa9 ok\n";
        let files = parse_diff(diff);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["my file.txt", "t\tb", "café", "k.bin"]);
        assert_eq!(files[3].added[0].text, "AKIAIOSFODNN7EXAMPLE café ok");
        // Windows line endings are text.
        let crlf = parse_diff(b"diff --git a/w.txt b/w.txt\n+++ b/w.txt\n@@ -0,0 +1,2 @@\n+}\r\n+caf\xc3\xa9 \xe2\x9c\x93\r\n");
        let texts: Vec<&str> = crlf[0].added.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["}", "café ✓"]);
        // Text lines are kept as they are, tabs and all scripts included.
        assert_eq!(line_text("a\tb 日本 🏳️‍🌈".as_bytes()), "a\tb 日本 🏳️‍🌈");
    }

    #[test]
    fn push_lines_are_parsed_and_bad_ones_named() {
        let sha = "1".repeat(40);
        let zero = "0".repeat(40);
        let push = parse_push(
            &["origin".into(), "/r.git".into()],
            &format!("refs/heads/main {sha} refs/heads/main {zero}\n"),
        )
        .expect("parse");
        assert_eq!(push.refs[0].local_sha, sha);
        assert_eq!(push.refs[0].remote_sha, zero);
        let err = parse_push(&["o".into(), "u".into()], "garbage\n").expect_err("bad line");
        assert!(err.contains("line 1"), "{err}");
        assert!(parse_push(&[], "").is_err());
    }

    #[test]
    fn scripts_quote_what_they_embed() {
        let s = hook_script(
            Path::new("/opt/it's/spawner"),
            Path::new("/h"),
            "a",
            GitHook::PreCommit,
        );
        assert!(s.contains(r"'/opt/it'\''s/spawner'"), "{s}");
        assert!(s.lines().nth(1).expect("marker").starts_with(SCRIPT_MARKER));
    }
}
