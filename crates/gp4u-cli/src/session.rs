//! Who the customer CLI talks to, as whom: `--server`/`--token` (or `GP4U_SERVER`/
//! `GP4U_TOKEN`) over what `gp4u login` saved in the platform's config directory
//! (`~/.config/gp4u/config.toml` on Linux, mode 0600). Also the CLI's exit codes (SPEC §11).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gp4u_client::{Client, ClientError};
use serde::{Deserialize, Serialize};

/// Exit codes of the customer commands (SPEC §11).
pub mod exit {
    pub const OK: i32 = 0;
    /// The job ended FAILED or CANCELLED.
    pub const JOB_FAILED: i32 = 1;
    /// Bad usage or invalid input (a manifest that does not parse, a 400 from the server).
    pub const USAGE: i32 = 2;
    /// The token is missing, malformed, expired or not enough (401, 403).
    pub const AUTH: i32 = 3;
    /// The server cannot be reached (or is failing).
    pub const UNREACHABLE: i32 = 4;
}

/// An error with the exit code it must end the CLI with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Exit {
            code: exit::USAGE,
            message: message.into(),
        }
        .into()
    }
}

/// The exit code for an error of a customer command: the client's classification, an
/// [`Exit`]'s own, else usage (a local file, a bad flag value).
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if let Some(exit) = error.downcast_ref::<Exit>() {
        return exit.code;
    }
    if let Some(client) = error.downcast_ref::<ClientError>() {
        return client.exit_code();
    }
    exit::USAGE
}

/// What to do about an error, for people: the error, and the next step for its class.
pub fn advice(error: &anyhow::Error) -> Option<&'static str> {
    match exit_code(error) {
        exit::AUTH => Some(
            "check the token: `gp4u login --server URL` with a token from your admin (`gp4u admin token USER`), or --token / GP4U_TOKEN",
        ),
        exit::UNREACHABLE => Some(
            "check the server URL (`--server`, GP4U_SERVER, or `gp4u login`) and that the server runs",
        ),
        _ => None,
    }
}

/// The connection flags every customer command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The GP4U server, e.g. http://127.0.0.1:8080 [default: the one `gp4u login` saved].
    #[arg(long, env = "GP4U_SERVER", global = true)]
    pub server: Option<String>,
    /// Bearer token [default: the one `gp4u login` saved].
    #[arg(long, env = "GP4U_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON and nothing else (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
}

/// What `gp4u login` keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedLogin {
    pub server: String,
    pub token: String,
}

/// `~/.config/gp4u/config.toml` (the platform's config directory; `$XDG_CONFIG_HOME` on Linux).
pub fn config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("gp4u").join("config.toml"))
}

pub fn load_login() -> anyhow::Result<Option<SavedLogin>> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map(Some).with_context(|| {
            format!(
                "{}: not a config written by `gp4u login` (log in again)",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_login(path: &Path, login: &SavedLogin) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(login).context("writing the config")?;
    // Written to a new file with 0600 from the start, then moved in place.
    let partial = path.with_extension("toml.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The server and token of a command: flags and environment over the saved login.
pub fn resolve(args: &ConnectArgs) -> anyhow::Result<(String, Option<String>)> {
    let saved = load_login()?;
    let server = args
        .server
        .clone()
        .or_else(|| saved.as_ref().map(|login| login.server.clone()))
        .ok_or_else(|| {
            Exit::usage(
                "no server: pass --server URL (or GP4U_SERVER), or run `gp4u login --server URL` once",
            )
        })?;
    let token = args
        .token
        .clone()
        .or_else(|| saved.map(|login| login.token));
    Ok((server, token))
}

/// A client for a command that needs a token.
pub fn client(args: &ConnectArgs) -> anyhow::Result<Client> {
    let (server, token) = resolve(args)?;
    let Some(token) = token else {
        return Err(Exit {
            code: exit::AUTH,
            message: "no token: pass --token (or GP4U_TOKEN), or run `gp4u login` once".into(),
        }
        .into());
    };
    Ok(Client::new(&server, Some(&token))?)
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The GP4U server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "GP4U_SERVER")]
    pub server: String,
    /// A file holding the token; without it the token is read from standard input.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// `gp4u login`: checks the token against the server, then saves both (0600).
pub async fn login(args: LoginArgs, json: bool) -> anyhow::Result<i32> {
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("paste your token, then press Enter and Ctrl-D:");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the token from standard input")?;
            text
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Exit::usage(
            "the token is empty: give it on standard input or with --token-file",
        ));
    }
    let client = Client::new(&args.server, Some(&token))?;
    // A token that the server refuses is not saved.
    let balance = client.balance().await?;
    let path = config_path().ok_or_else(|| {
        Exit::usage("this platform has no config directory to keep the login in (set HOME)")
    })?;
    save_login(
        &path,
        &SavedLogin {
            server: client.base().to_string(),
            token,
        },
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({"server": client.base(), "config": path, "balance": balance})
        );
    } else {
        println!(
            "logged in to {} (balance {} {}); saved in {}",
            client.base(),
            balance.balance,
            balance.currency,
            path.display()
        );
    }
    Ok(exit::OK)
}
