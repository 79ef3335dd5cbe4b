//! Running the delegate plugin (found on `CNI_PATH`, given the same
//! environment with `CNI_COMMAND` set) and keeping each container's
//! delegate config under the data dir, so that DEL and CHECK use exactly
//! what ADD used, even after a restart of weft or a new subnet.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{code, CniError};

/// The first executable file `name` in the `:`-separated `cni_path`.
pub(crate) fn find(name: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') {
        return Err(CniError::new(code::INVALID_CONFIG, format!("delegate type {name:?} is not a plugin name")));
    }
    cni_path.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(name)).find(|p| p.is_file()).ok_or_else(
        || CniError::new(code::DELEGATE_NOT_FOUND, format!("failed to find plugin {name:?} in path [{cni_path}]")),
    )
}

/// Run `plugin` for `command` with `config` on stdin; its stdout when it
/// succeeds. A failing delegate's error result is passed on unchanged.
pub(crate) fn run(plugin: &Path, command: &str, config: &Value) -> Result<String, CniError> {
    let io = |what: &str, e: std::io::Error| {
        CniError::new(code::IO_FAILURE, format!("{what} delegate {}: {e}", plugin.display()))
    };
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io("starting", e))?;
    let bytes = config.to_string();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(bytes.as_bytes()).map_err(|e| io("writing to", e))?;
    }
    let out = child.wait_with_output().map_err(|e| io("waiting for", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    match serde_json::from_str::<Value>(&stdout) {
        Ok(v) if v.get("code").is_some() => Err(CniError::Delegate(stdout)),
        _ => Err(CniError::with_details(
            code::DELEGATE_FAILED,
            format!("delegate {} {command} failed ({})", plugin.display(), out.status),
            stdout.trim().to_string(),
        )),
    }
}

/// Where the delegate config of `container_id` is kept.
pub(crate) fn scratch_path(data_dir: &str, container_id: &str) -> PathBuf {
    Path::new(data_dir).join(container_id)
}

/// Keep the delegate config for DEL (directory 0700, file 0600).
pub(crate) fn save(data_dir: &str, container_id: &str, config: &Value) -> Result<(), CniError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io =
        |e: std::io::Error| CniError::new(code::IO_FAILURE, format!("saving the delegate config in {data_dir}: {e}"));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(scratch_path(data_dir, container_id))
        .map_err(io)?;
    f.write_all(config.to_string().as_bytes()).map_err(io)
}

/// The kept delegate config, `None` when there is none.
pub(crate) fn load(data_dir: &str, container_id: &str) -> Result<Option<Value>, CniError> {
    let path = scratch_path(data_dir, container_id);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CniError::new(code::DECODE, format!("the kept delegate config {} is not JSON: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(code::IO_FAILURE, format!("reading {}: {e}", path.display()))),
    }
}
