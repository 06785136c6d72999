//! `generate-assets`: the man page and shell completions packaged in assets/.

use super::Cli;
use super::exit::{CliError, Exit};

/// `generate-assets`: the man page (`oncall-agent.1`) and completions for bash, zsh and fish,
/// written from the clap definitions above. The packaged copies live in `assets/`; a test
/// checks that they match.
pub fn generate_assets(out_dir: &std::path::Path) -> Result<(), CliError> {
    let io = |e: std::io::Error| {
        CliError::new(
            Exit::Software,
            format!("cannot write to {}: {e}", out_dir.display()),
        )
    };
    for (name, bytes) in assets() {
        let path = out_dir.join(&name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
    }
    Ok(())
}

/// Each generated file: its path under the assets folder, and its content. One man page per
/// command (`oncall-agent.1`, `oncall-agent-dead-retry.1`, ...), as clap_mangen names them.
pub fn assets() -> Vec<(String, Vec<u8>)> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    fn pages(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub.clone(), out);
        }
        let man = clap_mangen::Man::new(cmd);
        let mut buf = Vec::new();
        // Rendering into a Vec cannot fail.
        let _ = man.render(&mut buf);
        out.push((format!("man/{}", man.get_filename()), buf));
    }
    let mut out = Vec::new();
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    pages(cmd, &mut out);
    for (shell, name) in [
        (Shell::Bash, "completions/oncall-agent.bash"),
        (Shell::Zsh, "completions/_oncall-agent"),
        (Shell::Fish, "completions/oncall-agent.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "oncall-agent", &mut buf);
        out.push((name.to_string(), buf));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packaged man page and completions (assets/) are what the CLI generates now.
    #[test]
    fn packaged_man_page_and_completions_match_the_cli() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let fix = "run `cargo run -- generate-assets --out-dir assets`";
        let mut expected = std::collections::BTreeSet::new();
        for (name, bytes) in assets() {
            let on_disk = std::fs::read(dir.join(&name)).unwrap_or_default();
            assert!(on_disk == bytes, "assets/{name} is out of date: {fix}");
            expected.insert(name);
        }
        let mut found = std::collections::BTreeSet::new();
        for sub in ["man", "completions"] {
            for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
                found.insert(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
        assert_eq!(
            found, expected,
            "stale files in assets/: {fix} after removing them"
        );
    }
}
