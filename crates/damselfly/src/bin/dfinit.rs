//! dfinit: points container runtimes at dfdaemon's registry mirror. All logic lives in
//! `damselfly_dfinit`.

use clap::Parser;
use damselfly_dfinit::DfinitArgs;

fn main() -> anyhow::Result<()> {
    let args = DfinitArgs::parse();
    print!("{}", args.run()?);
    Ok(())
}
