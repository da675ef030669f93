//! dfctl: operator commands for a Damselfly cluster. Today: `dfctl cert`, a development CA
//! and host certificates for mTLS (see the README's "mTLS" section). Subcommands, so more
//! commands can join later.

use clap::{Parser, Subcommand, ValueEnum};
use damselfly_tls::issue::{create_ca, issue, HostSpec};
use damselfly_tls::Role;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
        Command::Cert(CertCommand::Ca { out }) => {
            create_ca(&out).map(|()| format!("CA written to {}", out.display()))
        }
        Command::Cert(CertCommand::Issue {
            ca,
            name,
            ips,
            role,
            out,
        }) => {
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
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dfctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}
