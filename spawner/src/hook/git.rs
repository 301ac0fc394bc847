//! git hooks: pre-commit (the staged additions, from `git diff --cached`), commit-msg (the
//! message file, which the verdict may rewrite), pre-push (remote, URL and ref lines);
//! and installing a hook script into a repository.

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
    let output = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "core.quotePath=false",
            "diff",
            "--cached",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--diff-filter=d",
            "--unified=0",
            "--src-prefix=a/",
            "--dst-prefix=b/",
        ])
        .output()
        .map_err(|e| format!("cannot run git to read the staged changes: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`git diff --cached` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok((
        parse_diff(&String::from_utf8_lossy(&output.stdout)),
        output.stdout,
    ))
}

/// The added lines of a unified diff with zero context, per new file.
pub fn parse_diff(diff: &str) -> Vec<FileChange> {
    let mut files: Vec<FileChange> = Vec::new();
    let mut next_line: u32 = 0;
    // Between `diff --git` and the first hunk: where `+++ b/path` names the file. Inside a
    // hunk, a line `+++ x` is an added line `++ x`.
    let mut in_header = false;
    for line in diff.lines() {
        if line.starts_with("diff --git ") {
            in_header = true;
        } else if in_header && let Some(path) = line.strip_prefix("+++ ") {
            let path = path.strip_prefix("b/").unwrap_or(path);
            let path = path.trim_matches('"');
            files.push(FileChange {
                path: path.to_owned(),
                added: Vec::new(),
            });
        } else if let Some(hunk) = line.strip_prefix("@@ ") {
            in_header = false;
            // @@ -a,b +c,d @@: the new side starts at line c.
            next_line = hunk
                .split_whitespace()
                .find_map(|part| part.strip_prefix('+'))
                .and_then(|range| range.split(',').next())
                .and_then(|start| start.parse().ok())
                .unwrap_or(1);
        } else if let Some(text) = line.strip_prefix('+')
            && let Some(file) = files.last_mut()
        {
            file.added.push(AddedLine {
                line: next_line,
                text: text.to_owned(),
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
        let files = parse_diff(diff);
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
