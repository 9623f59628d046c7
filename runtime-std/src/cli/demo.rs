//! `mtguard demo`: a self-contained run on loopback.

use std::time::Duration;

use clap::Args;

use super::runtime;

#[derive(Args)]
pub struct DemoArgs {
    /// How long the demo runs, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// No progress bars (for logs and tests).
    #[arg(long)]
    no_progress: bool,
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    runtime().and_then(|rt| {
        rt.block_on(async {
            let report = mtguard::demo::run_demo(mtguard::demo::DemoOptions {
                duration: Duration::from_secs(args.seconds),
                progress: !args.no_progress,
                ..Default::default()
            })
            .await?;
            outln!("{}", report.render())?;
            Ok(())
        })
    })
}
