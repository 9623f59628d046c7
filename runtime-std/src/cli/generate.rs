//! `mtguard completions SHELL` and `mtguard man`: shell completions and
//! manual pages made from the clap definitions themselves, so they cannot
//! drift from the arguments. Hidden: packaging/build.sh runs them to put
//! the files in the Debian package; an operator has them installed.

use std::path::PathBuf;

use clap::{Args, CommandFactory, ValueEnum};

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write mtguard.1 and one page per command (mtguard-run.1, …) into
    /// this directory instead of printing mtguard.1.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn command() -> clap::Command {
    super::Cli::command()
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    use clap_complete::Shell as S;
    let shell = match args.shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    // Into memory first: clap_complete panics on a failed write, and a
    // closed stdout must end the command cleanly (see out.rs).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "mtguard", &mut script);
    out!("{}", String::from_utf8_lossy(&script))?;
    Ok(())
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
            clap_mangen::generate_to(command(), &dir).map_err(|e| {
                anyhow::anyhow!("writing the manual pages into {}: {e}", dir.display())
            })
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command()).render(&mut page)?;
            out!("{}", String::from_utf8_lossy(&page))?;
            Ok(())
        }
    }
}
