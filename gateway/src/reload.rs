//! Reload: re-read the config file and put the new backend table, auth settings, keys,
//! TLS certificate and limits in force for new connections. Open sessions are untouched.
//! An invalid file changes nothing.

use std::sync::{Arc, Mutex, PoisonError};

use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::state::{Parts, Shared};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The gateway was built from a string, not a file.
    #[error("no config file to reload from")]
    NoFile,
    /// The new file (or a file it names) is unusable; the old config stays in force.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The thread doing the reload ended before it finished; the old config stays.
    #[error("the reload was interrupted")]
    Interrupted,
}

/// One reload at a time: two at once (SIGHUP and `POST /reload`) would race to put
/// their parts in force.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Builds every reloadable part from `config`, loading the files it names.
pub fn build_parts(mut config: Config) -> Result<Parts, ConfigError> {
    let secret = |file: &Option<std::path::PathBuf>, key: &str| {
        file.as_deref()
            .map(crate::config::AdminToken::read)
            .transpose()
            .map_err(|problem| config.error("admin", key, problem))
    };
    let token = secret(&config.admin.token_file, "token_file")?;
    let read_token = secret(&config.admin.read_token_file, "read_token_file")?;
    if read_token.is_some() && read_token == token {
        return Err(config.error(
            "admin",
            "read_token_file",
            "holds the same secret as token_file: a read-only secret must differ",
        ));
    }
    config.admin.token = token;
    config.admin.read_token = read_token;
    let tls = crate::tls::server_config(&config.tls)
        .map_err(|(key, problem)| config.error("tls", &key, problem))?;
    let backend_tls = crate::backend_tls::BackendTlsConfigs::from_config(&config)
        .map_err(|(section, key, problem)| config.error(&section, key, problem))?;
    let verifier = crate::auth::Verifier::from_config(&config.auth)
        .map_err(|(key, problem)| config.error("auth", key, problem))?;
    Ok(Parts {
        config,
        verifier,
        tls,
        backend_tls,
    })
}

/// [`reload`] on a thread of the blocking pool: loading may wait on the network (an
/// `[auth] jwks_url`, up to its fetch timeout), and the runtime that asks for reloads also
/// answers the admin endpoints and the signals, which must not wait with it.
pub async fn reload_off_runtime(shared: Arc<Shared>) -> Result<Reloaded, ReloadError> {
    tokio::task::spawn_blocking(move || reload(&shared))
        .await
        .unwrap_or(Err(ReloadError::Interrupted))
}

/// What a reload put in force, and what it could not.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Keys whose value in the file differs from the one the gateway started with, which
    /// only a restart applies (`server.listen`, `server.workers`, …).
    pub start_up_only: Vec<&'static str>,
}

/// Re-reads the config file and applies it, or logs why not and keeps the old one.
/// Blocks while it loads (files, and an `[auth] jwks_url` fetch): from async code, use
/// [`reload_off_runtime`].
pub fn reload(shared: &Shared) -> Result<Reloaded, ReloadError> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let result = (|| {
        let path = shared.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let mut config = Config::load(path)?;
        // Limits keep the open-file cap found at start-up.
        if let Some(cap) = crate::limits::fd_session_capacity() {
            config.limits.max_connections = config.limits.max_connections.min(cap.max(1));
        }
        let fetches = config.auth.jwks_url.is_some();
        let parts = build_parts(config);
        // The reload's own fetch of the key set is one like the periodic refreshes: it
        // happened if the verifier was built or it is what failed.
        match &parts {
            Ok(_) if fetches => shared.metrics.jwks_fetch(true),
            Err(e) if fetches && e.key.as_deref() == Some("auth.jwks_url") => {
                shared.metrics.jwks_fetch(false)
            }
            _ => {}
        }
        let parts = parts?;
        // Against what the sockets and threads were set up with, not the last file: a key
        // put back as it was is no change waiting for a restart.
        let start_up_only = start_up_only_changes(shared.started_with(), &parts.config);
        for key in &start_up_only {
            warn!(
                key,
                "changed in the file, but read at start-up only: takes effect at the next start"
            );
        }
        let backends: Vec<String> = parts.config.backends.keys().cloned().collect();
        shared.replace(parts);
        shared.refetch.after_reload(fetches);
        info!(backends = ?backends, "config reloaded");
        Ok(Reloaded { start_up_only })
    })();
    if let Err(e) = &result {
        warn!(error = %e, "config reload rejected; the previous config stays in force");
    }
    result
}

/// Keys a reload cannot apply (sockets and threads are set up once) whose value in the
/// file differs from the one in force.
fn start_up_only_changes(running: &Config, file: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.server.listen != file.server.listen {
        changed.push("server.listen");
    }
    if running.server.reuse_port != file.server.reuse_port {
        changed.push("server.reuse_port");
    }
    if running.server.workers != file.server.workers {
        changed.push("server.workers");
    }
    if running.server.threading != file.server.threading {
        changed.push("server.threading");
    }
    if running.server.proxy_protocol != file.server.proxy_protocol {
        changed.push("server.proxy_protocol");
    }
    if running.admin.enabled != file.admin.enabled || running.admin.listen != file.admin.listen {
        changed.push("admin");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_only_keys_are_named_when_the_file_changes_them() -> Result<(), ConfigError> {
        let base = "[backends]\nBackend_ABC = \"ws://localhost:8081/a\"\n";
        let dir = std::path::Path::new(".");
        let running = Config::from_toml_str(base, dir)?;
        assert!(start_up_only_changes(&running, &running).is_empty());
        let file = Config::from_toml_str(
            &format!(
                "[server]\nworkers = 7\nlisten = \"127.0.0.1:1\"\nproxy_protocol = true\n{base}"
            ),
            dir,
        )?;
        assert_eq!(
            start_up_only_changes(&running, &file),
            ["server.listen", "server.workers", "server.proxy_protocol"]
        );
        Ok(())
    }
}
