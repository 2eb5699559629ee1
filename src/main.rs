//! The `gatehouse` command line (docs/commands.md): logging set-up, commands, exit codes.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use gatehouse::authz::{AccessRequest, PolicySet, Resolved, run_tests};
use gatehouse::config::Config;
use gatehouse::route::Router;

/// mimalloc: per-thread free lists for the request path's allocations
/// (hyper's 8 KiB read buffers included), where glibc's malloc spent about
/// 11 % of the proxy's CPU under load, much of it in `malloc_consolidate`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "Identity-aware reverse proxy for data connectors")]
struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = "gatehouse.toml")]
    config: PathBuf,
    /// Log line format (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Validate the config and every policy file; run nothing.
    Check,
    /// Policy tools for the security team.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage stored upstream credentials.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Audit trail tools for auditors.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The quickstart: dev CA, dev issuer, echo upstream, all on loopback. Not for production.
    Dev {
        #[arg(long, default_value_t = 8443)]
        port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Only write the dev CA and localhost certificate under certs/, then exit.
        #[arg(long)]
        certs_only: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the [[test]] cases of every policy file.
    Test,
    /// Show the decision for one request and why.
    Explain {
        #[arg(long)]
        method: String,
        #[arg(long)]
        path: String,
        #[arg(long)]
        host: Option<String>,
        /// The token's claims as a JSON object.
        #[arg(long)]
        claims: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Store a refresh token for an upstream, encrypted.
    Set {
        upstream: String,
        /// Read the refresh token from standard input (one trailing newline trimmed).
        #[arg(long, required = true)]
        refresh_token_stdin: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files, in the order given.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Filter and summarize request records.
    Query {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// RFC 3339 start (inclusive).
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 end (exclusive).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        client_id: Option<String>,
        #[arg(long)]
        route: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<String>,
        #[arg(long)]
        status: Option<u16>,
        /// table, json or summary.
        #[arg(long, default_value = "table")]
        output: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => serve(&cli.config),
        Command::Check => Ok(check(&cli.config)),
        Command::Policy { command: PolicyCommand::Test } => policy_test(&cli.config),
        Command::Policy { command: PolicyCommand::Explain { method, path, host, claims, json } } => {
            explain(&cli.config, &method, &path, host.as_deref(), &claims, json)
        }
        Command::Credentials { command: CredentialsCommand::Set { upstream, .. } } => credentials_set(&cli.config, &upstream),
        Command::Audit { command: AuditCommand::Verify { files } } => audit_verify(&files),
        Command::Audit { command: AuditCommand::Query { files, since, until, sub, client_id, route, decision, status, output } } => {
            let filter = gatehouse::audit::QueryFilter {
                since: since.map(|s| parse_time(&s)).transpose()?,
                until: until.map(|s| parse_time(&s)).transpose()?,
                sub,
                client_id,
                route,
                decision,
                status,
            };
            let output = match output.as_str() {
                "table" => gatehouse::audit::QueryOutput::Table,
                "json" => gatehouse::audit::QueryOutput::JsonLines,
                "summary" => gatehouse::audit::QueryOutput::Summary,
                other => bail!("--output must be table, json or summary, not `{other}`"),
            };
            let mut out = std::io::stdout().lock();
            gatehouse::audit::query(&files, &filter, output, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev { certs_only: true, .. } => {
            let certs = gatehouse::dev::certs::ensure_dev_certs(std::path::Path::new("certs")).map_err(anyhow::Error::msg)?;
            writeln!(std::io::stdout(), "dev CA {} and certificate {} are ready", certs.ca.display(), certs.cert.display())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev { port, admin_port, .. } => runtime()?.block_on(async move {
            let hup = Arc::new(tokio::sync::Notify::new());
            let shutdown = signals(hup.clone())?;
            gatehouse::dev::run(port, admin_port, hup, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn parse_time(s: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).with_context(|| format!("`{s}` is not an RFC 3339 time"))
}

/// Loads the config or prints its problems.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|problems| {
        let mut out = std::io::stdout().lock();
        for p in problems {
            let _ = writeln!(out, "{p}");
        }
        ExitCode::from(1)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = gatehouse::tls::server_config(&config.listen) {
        problems.push(format!("{}:1:1: {}", e.file.display(), e.message));
    }
    if let Err(ds) = PolicySet::load(&config.policies_dir, &config.route_names()) {
        problems.extend(ds.iter().map(ToString::to_string));
    }
    // A postgres:// store is checked by connecting (and migrating) it.
    if let Some(store) = config.store.as_ref().filter(|s| gatehouse::store::is_postgres(&s.location)) {
        let opened = runtime().map_err(|e| e.to_string()).and_then(|rt| rt.block_on(gatehouse::open_configured_store(store)).map(drop));
        if let Err(why) = opened {
            problems.push(format!("{}:1:1: {why}", config.file.display()));
        }
    }
    let mut out = std::io::stdout().lock();
    for p in &problems {
        let _ = writeln!(out, "{p}");
    }
    if problems.is_empty() {
        let _ = writeln!(out, "{}: ok", config.file.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    runtime()?.block_on(async move {
        let proxy =
            tokio::net::TcpListener::bind(config.listen.addr).await.with_context(|| format!("cannot listen on {}", config.listen.addr))?;
        let admin = match config.admin {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("cannot listen on {a}"))?),
            None => None,
        };
        let hup = Arc::new(tokio::sync::Notify::new());
        let shutdown = signals(hup.clone())?;
        gatehouse::run(config, gatehouse::Listeners { proxy, admin }, hup, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM or SIGINT; SIGHUP notifies `hup`.
fn signals(hup: Arc<tokio::sync::Notify>) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading policies");
            hup.notify_one();
        }
    });
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    })
}

/// Route resolution for policy tests and explain, as the proxy does it:
/// normalize, route, refuse what the route does not allow, fold case.
fn resolver(config: &Config) -> impl Fn(Option<&str>, &str) -> Result<Resolved, String> + '_ {
    let router = Router::new(&config.routes, |name| config.upstreams.iter().position(|u| u.name == name));
    move |host: Option<&str>, raw: &str| {
        let raw_path = raw.split('?').next().unwrap_or(raw);
        let path = gatehouse::request::normalize_path(raw_path).map_err(|e| format!("bad path: {e}"))?;
        let host = host.map(gatehouse::request::host_without_port);
        let route = router.find(host.as_deref(), &path).map_err(|e| e.to_string())?;
        gatehouse::request::check_ambiguity(&path, route.allow).map_err(|e| format!("bad path: {e}"))?;
        let path = if route.case_insensitive { path.to_ascii_lowercase() } else { path };
        Ok(Resolved { route: route.name.to_string(), path, fold_case: route.case_insensitive })
    }
}

fn policy_test(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let set = match PolicySet::load(&config.policies_dir, &config.route_names()) {
        Ok(s) => s,
        Err(ds) => {
            let mut out = std::io::stdout().lock();
            for d in ds {
                writeln!(out, "{d}")?;
            }
            return Ok(ExitCode::from(1));
        }
    };
    let resolve = resolver(&config);
    let failures = run_tests(&set, &resolve, &|claims| config.identity(claims));
    let mut out = std::io::stdout().lock();
    for f in &failures {
        writeln!(out, "{f}")?;
    }
    let total = set.test_cases().len();
    writeln!(out, "{} passed, {} failed", total - failures.len(), failures.len())?;
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn explain(path: &std::path::Path, method: &str, raw_path: &str, host: Option<&str>, claims: &str, json: bool) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let set = PolicySet::load(&config.policies_dir, &config.route_names())
        .map_err(|ds| anyhow::anyhow!(ds.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
    let claims: serde_json::Value = serde_json::from_str(claims).context("--claims must be a JSON object")?;
    let serde_json::Value::Object(claims) = claims else { bail!("--claims must be a JSON object") };
    let subject = config.identity(claims);
    let resolve = resolver(&config);
    let mut out = std::io::stdout().lock();
    let Resolved { route, path: norm, fold_case } = match resolve(host, raw_path) {
        Ok(r) => r,
        Err(why) => {
            if json {
                writeln!(out, "{}", serde_json::json!({"decision": "deny", "route": null, "rule": null, "error": why}))?;
            } else {
                writeln!(out, "decision: deny\nroute: (none)\nrule: (none)\n  {why}")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let method = method.to_ascii_uppercase();
    let explanation = set.explain(&AccessRequest { route: &route, method: &method, path: &norm, fold_case, subject: &subject });
    if json {
        writeln!(out, "{}", explanation.to_json())?;
    } else {
        write!(out, "{explanation}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn credentials_set(path: &std::path::Path, upstream: &str) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let Some(u) = config.upstreams.iter().find(|u| u.name == upstream) else { bail!("no upstream named `{upstream}` in the config") };
    if !matches!(u.credential, gatehouse::credential::CredentialSpec::RefreshToken(_)) {
        bail!("upstream `{upstream}` does not use kind = \"refresh_token\"");
    }
    let Some(store) = &config.store else { bail!("the config has no [store]") };
    let mut token = String::new();
    std::io::stdin().read_to_string(&mut token).context("cannot read the refresh token from stdin")?;
    gatehouse::secret::trim_one_newline(&mut token);
    if token.is_empty() || token.contains(['\n', '\r']) {
        bail!("stdin must hold exactly one refresh token");
    }
    let token = gatehouse::secret::Secret::new(token);
    runtime()?.block_on(async {
        let store = gatehouse::open_configured_store(store).await.map_err(anyhow::Error::msg)?;
        store.put(upstream, &token).await.map_err(|e| anyhow::anyhow!("cannot store the refresh token: {e}"))
    })?;
    writeln!(std::io::stdout(), "stored a refresh token for upstream {upstream}")?;
    Ok(ExitCode::SUCCESS)
}

fn audit_verify(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match gatehouse::audit::verify_files(files) {
        Ok(summary) => {
            writeln!(out, "ok: {} records in {} files, chain intact", summary.records, summary.files)?;
            if let Some(after) = &summary.starts_after {
                writeln!(out, "note: the first record continues an earlier chain (prev_hash {after})")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "{e}")?;
            Ok(ExitCode::from(1))
        }
    }
}
