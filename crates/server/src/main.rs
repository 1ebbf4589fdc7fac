//! `switchyard`: run the broker, or check a configuration file.

use clap::{Parser, Subcommand};

/// Messages are allocated on the publisher's thread and freed on each
/// subscriber's; mimalloc handles such cross-thread frees far better than
/// the system allocator (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard::{Config, logging};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A multi-protocol message broker: MQTT, AMQP 0-9-1, STOMP, NATS and HTTP in one binary."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker. With no --config, every protocol listens on its
    /// standard port and data goes to ./data.
    Serve {
        /// A switchyard.toml; SWITCHYARD_* environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file (and the SWITCHYARD_* environment): print
    /// the first error with its key path and exit non-zero, or print "ok".
    CheckConfig { file: PathBuf },
    /// List the protocols this binary serves: name, standard port and
    /// WebSocket path, one per line.
    Protocols,
    /// Read a password (or token) from stdin — its first line, without the
    /// line ending — and print its Argon2id hash for `[[users]]`
    /// `password_hash` / `token_hash`. A token must be `<user>.<secret>`.
    Passwd,
    /// Make a new random token for USER (NATS `auth_token`, HTTP Bearer):
    /// prints the token (`USER.<64 hex digits>`, for the client; it is not
    /// kept anywhere) on the first line and its Argon2id hash (the user's
    /// `token_hash`) on the second.
    Token { user: String },
}

/// mimalloc's `mi_option_arena_eager_commit` (its index in `mi_option_e`,
/// the same in mimalloc 2 and 3).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Allocator settings, before anything is allocated (the Rust runtime
/// allocates before `main`, so this runs as an ELF constructor). Arenas are
/// committed as they are used rather than all at once: on Linux
/// (overcommit) mimalloc commits each 1 GiB arena eagerly by default, and
/// the broker's resident memory then grows in large steps (10 000 idle MQTT
/// connections: ~2.1–2.9 KiB each over a 16 MiB start, against ~1.6–1.7
/// KiB over 9 MiB; see docs/benchmarks-analysis.md).
/// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still wins.
#[allow(unsafe_code)]
extern "C" fn tune_allocator() {
    // SAFETY: `getenv` with a NUL-terminated name (no allocation, before
    // any thread exists); `mi_option_set` sets one of mimalloc's integer
    // options and touches no memory.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Passwd => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("error: cannot read stdin: {e}");
                return ExitCode::from(1);
            }
            let secret = line.strip_suffix('\n').unwrap_or(&line);
            let secret = secret.strip_suffix('\r').unwrap_or(secret);
            if secret.is_empty() {
                eprintln!("error: empty password");
                return ExitCode::from(1);
            }
            match switchyard_core::auth::hash_password(secret.as_bytes()) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Token { user } => {
            if user.is_empty() {
                eprintln!("error: empty user name");
                return ExitCode::from(1);
            }
            let token = switchyard_core::auth::new_token(&user);
            match switchyard_core::auth::hash_password(token.as_bytes()) {
                Ok(h) => {
                    println!("{token}\n{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Protocols => {
            for p in switchyard::registry::PROTOCOLS {
                let ws = p.websocket.map_or("-", |w| w.path);
                println!("{} {} {}", p.name, p.default_port, ws);
            }
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(_) => {
                println!("ok: {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            logging::init(&config.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(switchyard::run(config, switchyard::signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
