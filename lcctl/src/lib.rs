//! lcctl: the admin client of lc, the log-structured write-back block
//! cache.
//!
//! A thin client: every command is a few D-Bus calls to the daemon `lcd`
//! through the proxies of lc-proto; no engine code runs here. The modules:
//! [`cli`] (the command line), `commands` (one function per command),
//! `client` (connection and version check), `error` (exit codes and
//! messages), `knobs`, `selection` (what `switch-to` remembers), `render`
//! (tables) and [`manual`] (man page and shell completions generated from
//! [`cli`]).

pub mod cli;
mod client;
mod commands;
pub mod error;
pub mod knobs;
pub mod manual;
mod render;
mod selection;

use std::process::ExitCode;

use clap::Parser;

use crate::error::Exit;

/// Runs lcctl with the process's arguments and returns its exit status.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // help and version go to stdout with status 0, usage errors to
            // stderr with status 2, with what the user typed escaped
            if e.use_stderr() {
                eprint!("{}", render::escape_lines(&e.render().to_string()));
            } else {
                let _ = e.print();
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lcctl: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failure.code());
        }
    };
    match rt.block_on(commands::run(&cli)) {
        Ok(out) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out.json).expect("JSON values serialize")
                );
            } else if !out.text.is_empty() {
                println!("{}", render::escape_lines(&out.text));
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("lcctl: {}", f.message);
            if cli.json {
                let doc = serde_json::json!({
                    "error": {
                        "kind": f.exit.name(),
                        "exit_status": f.exit.code(),
                        "message": f.message,
                    }
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("JSON values serialize")
                );
            }
            ExitCode::from(f.exit.code())
        }
    }
}
