//! gripd-bench: load generator and tiny GRIP origin for benchmarking gripd side by
//! side with Pushpin (issue 7). Each scenario prints one JSON line on stdout and a
//! human-readable line on stderr. `scripts/bench` drives it.

mod http;
mod load;
mod origin;
mod procfs;
mod relay;
mod report;
mod scenario;
mod sse;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::{Parser, Subcommand};

use scenario::{Target, ThroughputOpts};

#[derive(Debug, Parser)]
#[command(
    name = "gripd-bench",
    about = "Benchmark a GRIP proxy (gripd or Pushpin)"
)]
struct Cli {
    /// Runtime worker threads of the load generator.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the tiny GRIP origin: GET /stream/<channel> (stream hold), GET /plain.
    Origin {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: SocketAddr,
    },
    /// Run the pass-through ceiling: a bare byte relay to --origin (see relay.rs).
    Relay {
        #[arg(long, default_value = "127.0.0.1:18090")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18080")]
        origin: SocketAddr,
    },
    /// Open N SSE connections through the proxy: connections/s and RSS per held connection.
    Hold {
        n: usize,
        #[command(flatten)]
        target: Target,
    },
    /// N subscribers on one channel, K messages published at --rate/s: latency, loss, CPU.
    Fanout {
        n: usize,
        k: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Seconds to wait for stragglers after the last publish.
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
        /// The proxy's HTTP control (publish) address.
        #[arg(long, default_value = "127.0.0.1:5561")]
        publish: SocketAddr,
        #[command(flatten)]
        target: Target,
    },
    /// M channels x S subscribers, publish flat out: sustained deliveries/s and loss.
    Throughput {
        #[command(flatten)]
        opts: ThroughputOpts,
        /// The proxy's HTTP control (publish) address.
        #[arg(long, default_value = "127.0.0.1:5561")]
        publish: SocketAddr,
        #[command(flatten)]
        target: Target,
    },
    /// Pass-through: run wrk against a URL and report 2xx requests/s.
    Wrk {
        url: String,
        #[arg(long, default_value = "proxy")]
        label: String,
        /// `proxy` (through the proxy) or `direct` (straight to the origin).
        #[arg(long, default_value = "proxy")]
        role: String,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 50)]
        connections: u32,
        #[arg(long = "wrk-threads", default_value_t = 1)]
        wrk_threads: u32,
    },
    /// Print the markdown table from two JSON-lines result files.
    Table {
        #[arg(long)]
        gripd: PathBuf,
        #[arg(long)]
        pushpin: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Held connections need one descriptor each: go up to the hard limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open files limit: {e}");
    }
    ensure!(cli.threads >= 1, "--threads must be at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()?;
    let value = match cli.cmd {
        Cmd::Origin { listen } => {
            ensure!(listen.ip().is_loopback(), "origin listens on loopback only");
            return rt.block_on(origin::run(listen));
        }
        Cmd::Relay { listen, origin } => {
            ensure!(
                listen.ip().is_loopback() && origin.ip().is_loopback(),
                "the relay runs on loopback only"
            );
            return rt.block_on(relay::run(listen, origin));
        }
        Cmd::Table { gripd, pushpin } => {
            print!("{}", report::table(&gripd, &pushpin));
            return Ok(());
        }
        Cmd::Hold { n, target } => rt.block_on(scenario::hold(&target, n))?,
        Cmd::Fanout {
            n,
            k,
            rate,
            drain,
            publish,
            target,
        } => rt.block_on(scenario::fanout(&target, publish, n, k, rate, drain))?,
        Cmd::Throughput {
            opts,
            publish,
            target,
        } => rt.block_on(scenario::throughput(&target, publish, &opts))?,
        Cmd::Wrk {
            url,
            label,
            role,
            duration,
            connections,
            wrk_threads,
        } => report::wrk(&label, &role, &url, duration, connections, wrk_threads)?,
    };
    println!("{value}");
    // Held sockets and tasks die with the process; no graceful teardown needed.
    rt.shutdown_background();
    Ok(())
}
