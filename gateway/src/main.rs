//! The `gateway` command line: parses it and calls the subcommand in `cmd`.

mod cmd;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway::config::Config;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Kernel-accelerated API gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the XDP data plane, serve HTTPS, and run until SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML). Without it the embedded default is used:
        /// HTTPS on 127.0.0.1:8443, XDP on lo.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print what it enforces; exit 1 on error.
    Check {
        /// Configuration file (TOML). Without it the embedded default is checked.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Score a configuration against the OWASP API Security Top 10 (2023):
    /// each finding with its severity, line and fix; exit 1 when one
    /// reaches --fail-on.
    Audit {
        /// Configuration file (TOML). Without it the embedded default is audited.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Exit 1 when a finding is at least this severe.
        #[arg(long, value_enum, default_value = "high")]
        fail_on: gateway::audit::Severity,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Make and hash API keys for the key file (`auth.key_file`).
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// List, place and lift verdicts through a running gateway's admin API.
    Verdicts {
        #[command(subcommand)]
        cmd: VerdictsCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Say whether a source is dropped, by what, since when, and its counters.
    Why {
        /// The source address.
        address: std::net::IpAddr,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Watch a running gateway: req/s, status mix, p50/p99, rejections by
    /// reason, XDP drops, refreshed in place (from its admin API's /metrics).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many frames (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reload a running gateway's configuration, certificates and key
    /// files (as SIGHUP does), from the file it was started with; exit 1
    /// with the reason (a configuration error as file:line) when the new
    /// configuration is refused (the running one keeps serving).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the live rate limits of a source (and consumer) on each route.
    Limits {
        /// The source address.
        #[arg(long)]
        source: std::net::IpAddr,
        /// An API key's consumer id.
        #[arg(long, conflicts_with_all = ["issuer", "subject"])]
        consumer: Option<String>,
        /// A token's issuer (`auth.jwt` or `auth.introspection` name), with `--subject`.
        #[arg(long, requires = "subject")]
        issuer: Option<String>,
        /// A token's subject, with `--issuer`.
        #[arg(long, requires = "issuer")]
        subject: Option<String>,
        /// Only this route: its `name`, or for a route without one its
        /// position, as `gateway check` lists them.
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Which gateway's admin API to ask.
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The running gateway's configuration (for `admin.listen` and
    /// `admin.token_file`); without it, the embedded default's.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The admin API's address, instead of the configuration's.
    #[arg(long, global = true)]
    admin: Option<std::net::SocketAddr>,
    /// Print the API's JSON answer as is.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub(crate) enum VerdictsCmd {
    /// The live verdicts.
    List,
    /// Drop a source for a while (reason `policy`).
    Add {
        /// The source address.
        address: std::net::IpAddr,
        /// For how long, in seconds.
        #[arg(long)]
        secs: u64,
        /// Why, for the log and the list.
        #[arg(long, default_value = "")]
        why: String,
    },
    /// Lift a source's verdict.
    Remove {
        /// The source address.
        address: std::net::IpAddr,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// Print a fresh key once, and the lines to add to the key file.
    New {
        /// The consumer the key is for.
        #[arg(long)]
        consumer: String,
        /// Roles of a new consumer, comma-separated (for the printed lines).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// When the key stops working, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Read a key from standard input and print the line the key file stores.
    Hash,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rustls warns once per connection about what a client
                // sent (an IP address as SNI, as wrk and curl send): a
                // client could fill the log with them.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config } => load(config.as_ref()).and_then(|cfg| cmd::run::run(cfg, config)),
        Cmd::Check { config } => load(config.as_ref()).and_then(|cfg| cmd::check::check(&cfg)),
        Cmd::Audit {
            config,
            fail_on,
            json,
        } => cmd::audit::audit(config.as_ref(), fail_on, json),
        Cmd::DefaultConfig => {
            print!("{}", gateway::config::EMBEDDED_DEFAULT);
            Ok(())
        }
        Cmd::Keys { cmd } => cmd::keys::keys(cmd),
        Cmd::Verdicts { cmd, admin } => cmd::admin::verdicts(cmd, &admin),
        Cmd::Why { address, admin } => cmd::admin::why(address, &admin),
        Cmd::Reload { admin } => cmd::admin::reload(&admin),
        Cmd::Limits {
            source,
            consumer,
            issuer,
            subject,
            route,
            admin,
        } => {
            let who = cmd::admin::Who {
                consumer: consumer.as_deref(),
                issuer: issuer.as_deref(),
                subject: subject.as_deref(),
            };
            cmd::admin::limits(source, &who, route.as_deref(), &admin)
        }
        Cmd::Top {
            interval,
            count,
            admin,
        } => cmd::top::top(interval, count, &admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("gateway: error: {line}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded(),
    }
    .map_err(|e| e.to_string())
}
