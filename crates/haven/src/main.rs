//! `haven`: the one binary. Subcommands for every role: the daemons (`member run`), the
//! local lab (`lab …`), and the operator commands (`volume …`, `member list`).

mod cli;
mod lab;
mod logging;
mod output;
mod progress;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    logging::init(args.log_format, args.command.is_daemon());
    // A bounded blocking pool: SCSI commands that may wait on the disk run there (reads
    // and cached writes run on the connection's task), and each extra thread costs
    // memory (stack, allocator arena) that is not given back.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(64)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(cli::run(args)) {
        Ok(()) => 0,
        Err(e) => {
            // One line naming the problem: the chain of causes joined.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", msg.join(": "));
            1
        }
    };
    // Do not wait for blocking tasks (e.g. a stuck read) on exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
