//! The `oncall-agent` binary: everything is in the library's [`oncall_agent::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    oncall_agent::cli::run(oncall_agent::cli::Cli::parse())
}
