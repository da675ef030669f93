//! dfctl: operator commands for a Damselfly cluster: a node's tasks (`task ls`, `task rm`),
//! the cluster's hosts and tasks and preheat jobs (the scheduler's JSON API), and `cert`, a
//! development CA and host certificates for mTLS (see the README's "mTLS" section).

use clap::{Args, Parser, Subcommand, ValueEnum};
use damselfly::dfctl::{self, cluster, local, preheat, Output};
use damselfly_tls::issue::{create_ca, issue, HostSpec};
use damselfly_tls::Role;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "dfctl", version, about = "Damselfly cluster operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Development certificates for mTLS on the gRPC links.
    #[command(subcommand)]
    Cert(CertCommand),
    #[command(flatten)]
    Cluster(ClusterCommand),
}

/// The commands that talk to a daemon or a scheduler.
#[derive(Subcommand)]
enum ClusterCommand {
    /// Tasks of the local daemon (or, with --scheduler, of the cluster).
    #[command(subcommand)]
    Task(TaskCommand),
    /// Hosts known to the scheduler.
    #[command(subcommand)]
    Host(HostCommand),
    /// Fetches files, or an image's layers, onto the seed peers ahead of a rollout.
    Preheat(Box<PreheatArgs>),
}

#[derive(Args)]
struct SocketArg {
    /// dfdaemon unix socket [default: /var/run/dragonfly/dfdaemon.sock when it exists, else
    /// the per-user socket dfget uses]
    #[arg(short = 'e', long, env = "DFCTL_ENDPOINT")]
    endpoint: Option<PathBuf>,
}

#[derive(Args)]
struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Lists tasks: ID, URL, size, state, pieces, last access.
    Ls {
        #[command(flatten)]
        socket: SocketArg,
        /// The scheduler's JSON API (`host:port` or URL): list the cluster's tasks instead.
        #[arg(long, env = "DFCTL_SCHEDULER")]
        scheduler: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Shows one task of the local daemon: ID, URL, size, state, pieces done/total, where
    /// the pieces came from, missing pieces, last access.
    Show {
        id: String,
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Removes a task from the local daemon (its scheduler is told).
    Rm {
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Lists the scheduler's hosts.
    Ls {
        /// The scheduler's JSON API (`host:port` or URL).
        #[arg(long, env = "DFCTL_SCHEDULER")]
        scheduler: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Args)]
struct PreheatArgs {
    /// File URLs to preheat.
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    urls: Vec<String>,
    /// An image: `[http://]registry/repo[:tag|@digest]` or a manifest URL.
    #[arg(long)]
    image: Option<String>,
    /// Image platforms: `os/arch[/variant]`, a comma-separated list, or `all`
    /// [default: the scheduler's platform].
    #[arg(long)]
    platform: Option<String>,
    /// The scheduler's JSON API (`host:port` or URL).
    #[arg(long, env = "DFCTL_SCHEDULER")]
    scheduler: String,
    /// The API's token (`server.http.token`).
    #[arg(long, env = "DFCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// single_seed_peer, all_seed_peers or all_peers.
    #[arg(long, default_value = "all_seed_peers")]
    scope: String,
    /// Only these host IPs (all_* scopes).
    #[arg(long = "ip")]
    ips: Vec<String>,
    /// Only this many hosts (all_* scopes).
    #[arg(long)]
    count: Option<u32>,
    /// Only this percentage of the hosts (all_* scopes).
    #[arg(long)]
    percentage: Option<u32>,
    /// Request header for the origin, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Registry user name (image preheat).
    #[arg(long)]
    username: Option<String>,
    /// Registry password (image preheat).
    #[arg(long, env = "DFCTL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    #[arg(long)]
    application: Option<String>,
    #[arg(long)]
    piece_length: Option<u64>,
    /// The job's time budget (e.g. 30m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Follow the job with a progress bar until it ends; exit 1 if it failed.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    output: OutputArg,
}

impl PreheatArgs {
    fn request(&self) -> Result<preheat::Request, String> {
        let mut headers = std::collections::HashMap::new();
        for header in &self.headers {
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| format!("header {header:?} is not `Name: value`"))?;
            headers.insert(name.trim().to_string(), value.trim().to_string());
        }
        Ok(preheat::Request {
            urls: self.urls.clone(),
            image: self.image.clone(),
            platform: self.platform.clone(),
            scope: self.scope.clone(),
            ips: self.ips.clone(),
            count: self.count,
            percentage: self.percentage,
            headers,
            username: self.username.clone(),
            password: self.password.clone(),
            tag: self.tag.clone(),
            application: self.application.clone(),
            piece_length: self.piece_length,
            timeout: self.timeout,
        })
    }
}

#[derive(Subcommand)]
enum CertCommand {
    /// Creates a CA: DIR/ca.crt and DIR/ca.key (never overwrites an existing key).
    Ca {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issues a host certificate: OUT/ca.crt, OUT/tls.crt, OUT/tls.key.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// Host name, written as a SAN DNS name (the hostname the daemon announces).
        #[arg(long)]
        name: String,
        /// Address written as a SAN IP (repeatable): the IP the host announces or is dialled at.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// What the holder may do in the cluster.
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Peer,
    SeedPeer,
    Scheduler,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Peer => Role::Peer,
            RoleArg::SeedPeer => Role::SeedPeer,
            RoleArg::Scheduler => Role::Scheduler,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cert(command) => cert(command),
        Command::Cluster(command) => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(run(command)),
            Err(e) => Err(format!("starting the async runtime: {e}")),
        },
    };
    match result {
        Ok(summary) => {
            if !summary.is_empty() {
                println!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dfctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cert(command: CertCommand) -> Result<String, String> {
    let result = match command {
        CertCommand::Ca { out } => {
            create_ca(&out).map(|()| format!("CA written to {}", out.display()))
        }
        CertCommand::Issue {
            ca,
            name,
            ips,
            role,
            out,
        } => {
            let spec = HostSpec {
                name,
                ips,
                role: role.into(),
            };
            issue(&ca, &spec, &out).map(|files| {
                format!(
                    "caCert: {}\ncert: {}\nkey: {}",
                    files.ca_cert.display(),
                    files.cert.display(),
                    files.key.display()
                )
            })
        }
    };
    result.map_err(|e| e.to_string())
}

async fn run(command: ClusterCommand) -> Result<String, String> {
    let result = match command {
        ClusterCommand::Task(TaskCommand::Ls {
            scheduler: Some(scheduler),
            output,
            ..
        }) => cluster::get(&scheduler, "tasks")
            .await
            .and_then(|tasks| cluster::print_tasks(&tasks, output.output)),
        ClusterCommand::Task(TaskCommand::Ls { socket, output, .. }) => {
            let socket = socket.endpoint.unwrap_or_else(dfctl::default_socket);
            local::list(&socket)
                .await
                .and_then(|tasks| local::print(&tasks, output.output))
        }
        ClusterCommand::Task(TaskCommand::Show { id, socket, output }) => {
            let socket = socket.endpoint.unwrap_or_else(dfctl::default_socket);
            local::show(&socket, &id)
                .await
                .and_then(|task| local::print_detail(&task, output.output))
        }
        ClusterCommand::Task(TaskCommand::Rm { id, socket }) => {
            let socket = socket.endpoint.unwrap_or_else(dfctl::default_socket);
            local::remove(&socket, &id)
                .await
                .map(|()| "Task Removed!".to_string())
        }
        ClusterCommand::Host(HostCommand::Ls { scheduler, output }) => {
            cluster::get(&scheduler, "hosts")
                .await
                .and_then(|hosts| cluster::print_hosts(&hosts, output.output))
        }
        ClusterCommand::Preheat(args) => return run_preheat(&args).await,
    };
    result.map_err(|e| format!("{e:#}"))
}

async fn run_preheat(args: &PreheatArgs) -> Result<String, String> {
    let request = args.request()?;
    let job = preheat::create(&args.scheduler, args.token.as_deref(), &request)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let job = if args.wait {
        let quiet = args.output.output == Output::Json;
        preheat::wait(&args.scheduler, &id, quiet)
            .await
            .map_err(|e| format!("{e:#}"))?
    } else {
        job
    };
    let state = job["state"].as_str().unwrap_or_default();
    let summary = match args.output.output {
        Output::Json => serde_json::to_string_pretty(&job).unwrap_or_default(),
        Output::Table => preheat_summary(&id, state, &job),
    };
    if state == "FAILURE" {
        println!("{summary}");
        return Err(format!("preheat job {id} failed"));
    }
    Ok(summary)
}

fn preheat_summary(id: &str, state: &str, job: &serde_json::Value) -> String {
    let progress = &job["progress"];
    let mut text = format!(
        "Preheat job {id}: {state}, {}/{} downloads finished",
        progress["downloads_finished"], progress["downloads_total"]
    );
    if let Some(error) = job["error"].as_str() {
        text.push_str(&format!("\n{error}"));
    }
    if state == "SUCCESS" {
        text.push_str("\nPreheat Succeeded!");
    }
    text
}
