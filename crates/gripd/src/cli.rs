//! Command-line interface, Pushpin-compatible where Pushpin has the flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

/// gripd: a GRIP proxy, drop-in for Pushpin.
#[derive(Debug, Parser)]
#[command(name = "gripd", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Flags for running the proxy.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// Config file (TOML). Without one, built-in defaults with the route `* 127.0.0.1:8000`.
    #[arg(long, env = "GRIPD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Client listen address `[ADDR:]PORT` (repeatable); replaces `server.http_addrs`.
    #[arg(long = "port", value_name = "[ADDR:]PORT")]
    pub ports: Vec<String>,
    /// A routes-file line (repeatable); replaces the routes file.
    #[arg(long = "route", value_name = "LINE")]
    pub routes: Vec<String>,
    /// Added to every default port (client 7999, ZMQ 5560, HTTP publish 5561, SUB 5562, command 5563).
    #[arg(long, value_name = "N")]
    pub port_offset: Option<u16>,
    /// Same as `--log-level debug`.
    #[arg(long)]
    pub verbose: bool,
    /// Log level: error|warn|info|debug|trace, Pushpin's 0–4, or a tracing filter.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and routes, print problems, and exit (64 when invalid).
    CheckConfig(RunArgs),
    /// Publish one item to a running gripd or Pushpin (flag-compatible with `pushpin-publish`).
    Publish(crate::publish_cli::PublishArgs),
}

impl RunArgs {
    /// The command-line overrides for `Config`.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            ports: self.ports.clone(),
            routes: self.routes.clone(),
            port_offset: self.port_offset,
            log_level: if self.verbose {
                Some("debug".into())
            } else {
                self.log_level.clone()
            },
            log_format: self.log_format.clone(),
        }
    }
}
