//! `varti serve`: runs the access point until SIGTERM or Ctrl-C.
//!
//! What runs: the MSH listener (TLS, or plain HTTP with `--insecure-http`) whose
//! `POST /msh` is the receiver of [`varti_access_point::access_point`]; the sender that pushes
//! submitted messages; the webhooks that notify backends; the operations listener (`/health`,
//! `/ready`, `/metrics`); the backend API listener (`/api/v1`, plain HTTP on
//! `backend.listen`); the hourly retention purge; the store (embedded sled, or PostgreSQL
//! whose schema must be current: `varti db migrate`). SIGHUP (like `varti reload`) reloads
//! the PModes, certificates, CRLs and backend clients (`varti_access_point::reload`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use varti::config::{secs, Config, LogFormat, StoreKind};
use varti_access_point::api::{self, ApiRouter};
use varti_access_point::audit::LOCAL_ACTOR;
use varti_access_point::console::{Console, ConsoleRoutes};
use varti_access_point::ops::{self, Metrics, Readiness};
use varti_access_point::reload::{FileHash, ReloadInput, ReloadSource};
use varti_access_point::server::{
    tls, BodyBounds, Listener, ListenerOptions, MshRoutes, OpsRoutes, Tasks,
};
use varti_access_point::webhooks;
use varti_access_point::{pull, receiver::Receiver, sender, AccessPoint};
use varti_access_point::{ReloadHook, Snapshot};
use varti_oots_gateway::preview::{PreviewRoutes, PreviewSpace};
use varti_oots_gateway::Gateway;
use varti_store::{AuditOutcome, CheckedOpenError, SledStore, Store};

/// Certificates expiring within this many days are logged as warnings.
const EXPIRY_WARNING_DAYS: f64 = 30.0;

/// How often the certificate-expiry gauge is refreshed.
const EXPIRY_REFRESH: Duration = Duration::from_secs(6 * 3600);

/// How often payloads and metadata past the retention are purged.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// How often the store is probed for `/ready`, `varti_store_up` and `varti_queue_depth`.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long the store probe's write may take before the instance is not ready.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Log format on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `varti serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML, see deploy/varti.example.toml); without it the embedded
    /// defaults apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS. Only for local tests: messages, receipts and
    /// credentials travel unprotected.
    #[arg(long)]
    insecure_http: bool,
    /// Address of the MSH listener (overrides server.listen), e.g. 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the operations listener (overrides ops.listen).
    #[arg(long, value_name = "ADDR")]
    ops_listen: Option<SocketAddr>,
    /// Address of the backend API listener (overrides backend.listen).
    #[arg(long, value_name = "ADDR")]
    backend_listen: Option<SocketAddr>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
    /// Once listening, write the bound addresses as JSON to FILE
    /// (`{"msh": "ADDR", "ops": "ADDR", "backend": "ADDR", "scheme": "https"}`), for tests
    /// and supervisors.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

/// Runs `varti serve`. Errors before the listeners are up mean "could not run" (exit 2).
pub fn run(args: ServeArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    init_logging(&config, verbose);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("varti")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, args))
}

/// The configuration file (or the embedded defaults) with the command line's overrides.
fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            let c = Config::default();
            c.validate()?;
            c
        }
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(listen) = args.ops_listen {
        config.ops.listen = listen;
    }
    if let Some(listen) = args.backend_listen {
        config.backend.listen = listen;
    }
    if let Some(format) = args.log_format {
        config.log.format = match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    Ok(config)
}

/// Sets up `tracing` from the configuration (`RUST_LOG` overrides the level; each `-v`
/// raises it).
fn init_logging(config: &Config, verbose: u8) {
    let level = match verbose {
        0 => config.log.level.clone(),
        1 => "debug".to_owned(),
        _ => "trace".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn serve(config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new(&["store", "pmodes"]).reporting_to(metrics.clone());

    // Keys named by pkcs11: URIs (TLS, identity) load from the configured module.
    varti_as4::security::pkcs11::set_default_module(config.pkcs11.module.clone());
    let tls = if args.insecure_http {
        eprintln!(
            "\n*** WARNING: --insecure-http: serving PLAIN HTTP on {}. Messages, receipts and \
             credentials are unprotected. Never use this outside local tests. ***\n",
            config.server.listen
        );
        tracing::warn!(
            listen = %config.server.listen,
            "serving plain HTTP (--insecure-http): for local tests only"
        );
        None
    } else {
        let tls = tls::server_config(
            &config.tls.cert,
            &config.tls.key,
            config.tls.client_auth,
            &config.tls.client_ca,
        )?;
        record_cert_expiry(&metrics, "tls", &config.tls.cert);
        Some(tls)
    };

    // The store is opened before the listeners so that /ready is truthful from the start.
    let (store, sled) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_store(&config))
            .await
            .context("the store-opening task failed")??
    };
    readiness.set_ready("store");
    metrics.set_store_up(true);
    let ap = {
        let (settings, store, metrics) = (
            config.access_point_settings(),
            store.clone(),
            metrics.clone(),
        );
        let insecure = args.insecure_http;
        tokio::task::spawn_blocking(move || AccessPoint::open(settings, store, metrics, insecure))
            .await
            .context("the start-up task failed")??
    };
    let ap = Arc::new(ap);
    // Held until the process ends; the sweep runs before any request can spool.
    let _spool = ap.claim_spool();
    ap.set_reload_source(reload_source(args.clone(), config.clone()));
    {
        // The start-up load in the audit trail, with the hash of every file read.
        let ap = ap.clone();
        let files: Vec<FileHash> = args
            .config
            .iter()
            .map(|p| FileHash::of("config", p))
            .collect();
        tokio::task::spawn_blocking(move || ap.audit_startup(&files))
            .await
            .context("the start-up audit task failed")?;
    }
    // Subscribes to the events at once, so none is missed before its task runs.
    let webhook_lease = secs(config.webhooks.lease_secs);
    let webhooks = webhooks::Dispatcher::new(
        ap.clone(),
        webhooks::WebhookOptions {
            outbox_lease: webhook_lease,
            // A sweep a few times per lease, so a taken-over event waits little past it.
            outbox_sweep: (webhook_lease / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(5)),
            // Within the server's shutdown deadline (the grace and 5 s more).
            shutdown_wait: secs(config.server.shutdown_grace_secs),
            ..webhooks::WebhookOptions::default()
        },
    )?;
    readiness.set_ready("pmodes");
    let store_path = match config.store.kind {
        StoreKind::Sled => config.store_path().display().to_string(),
        StoreKind::Postgres => "postgresql".to_owned(),
    };

    let msh_options = ListenerOptions {
        tls: tls.clone(),
        handshake_timeout: secs(config.server.handshake_timeout_secs),
        header_read_timeout: secs(config.server.header_read_timeout_secs),
        idle_timeout: secs(config.server.idle_timeout_secs),
        body: BodyBounds {
            read_timeout: secs(config.server.body_read_timeout_secs),
            min_rate: config.server.min_body_bytes_per_sec,
        },
        write_timeout: secs(config.server.write_timeout_secs),
        max_connections: config.limits.max_connections,
        max_connections_per_ip: config.limits.max_connections_per_ip,
        // Only a listener that asks for certificates can tell who has none.
        max_anonymous_connections: (config.tls.client_auth == varti::config::ClientAuth::Optional)
            .then_some(config.limits.max_anonymous_connections),
        http2_max_concurrent_streams: config.limits.http2_max_concurrent_streams,
        http2_max_header_list_bytes: config.limits.http2_max_header_list_bytes,
    };
    // The ops listener is plain HTTP on a (by default) loopback address.
    let ops_options = ListenerOptions {
        tls: None,
        max_connections: 64,
        max_connections_per_ip: 64,
        max_anonymous_connections: None,
        ..msh_options.clone()
    };
    // The backend API is plain HTTP too (loopback or a protected network), for known
    // systems that may share an address: no per-address limit below the listener's.
    let backend_options = ListenerOptions {
        tls: None,
        max_connections: 256,
        max_connections_per_ip: 256,
        max_anonymous_connections: None,
        ..msh_options.clone()
    };
    let msh = Listener::bind("msh", config.server.listen, msh_options).await?;
    let ops_listener = Listener::bind("ops", config.ops.listen, ops_options).await?;
    let backend_listener =
        Listener::bind("backend", config.backend.listen, backend_options.clone()).await?;
    let preview_listener = if config.preview.enabled {
        let space = PreviewSpace::new(config.preview.clone(), &config.data_dir, store.clone())?;
        if config.preview.test_idp.enabled {
            tracing::warn!("preview.test_idp is enabled: anyone can log in as any listed person; for tests and the demo only");
        }
        // Plain HTTP behind the TLS reverse proxy serving preview.public_url, unless
        // preview.tls: then HTTPS with the [tls] certificate (citizens have no client
        // certificates to ask for).
        let preview_tls = browser_tls(&config, config.preview.tls)?;
        let options = ListenerOptions {
            tls: preview_tls,
            max_connections: 256,
            ..backend_options.clone()
        };
        Some((
            Listener::bind("preview", config.preview.listen, options).await?,
            Arc::new(space),
        ))
    } else {
        None
    };
    let msh_addr = msh.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;
    let backend_addr = backend_listener.local_addr()?;
    if !backend_addr.ip().is_loopback() {
        tracing::warn!(backend = %backend_addr, "the backend API serves plain HTTP on a non-loopback address: tokens and payloads travel unprotected unless TLS is put in front");
    }
    if config.backend.clients.is_empty() {
        tracing::info!(
            "no [[backend.clients]] configured: the backend API refuses every request (401)"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        msh = %format!("{scheme}://{msh_addr}/msh"),
        ops = %format!("http://{ops_addr}"),
        backend = %format!("http://{backend_addr}{}", api::PREFIX),
        store = %store_path,
        party = %ap.current().identity.party,
        instance = %ap.instance,
        "varti is listening"
    );

    let grace = secs(config.server.shutdown_grace_secs);
    let mut tasks = Tasks::new();
    tasks.spawn("webhooks", webhooks.run(tasks.token()));
    let ops_routes = Arc::new(OpsRoutes::new(metrics.clone(), readiness.clone()));
    tasks.spawn(
        "ops-listener",
        ops_listener.serve(ops_routes, tasks.token(), grace),
    );
    let preview = match &preview_listener {
        Some((listener, space)) => {
            let addr = listener.local_addr()?;
            let scheme = if config.preview.tls { "https" } else { "http" };
            tracing::info!(preview = %format!("{scheme}://{addr}/preview/"), public_url = %space.public_url(), "preview space is listening");
            Some(space.clone())
        }
        None => None,
    };
    let common_services = if config.oots.role.requests() {
        varti_oots_gateway::common_services::CommonServices::from_config(
            &config.oots.common_services,
        )
        .map_err(anyhow::Error::msg)?
        .map(Arc::new)
    } else {
        None
    };
    // The OOTS gateway claims its service on the access point before the MSH listener
    // serves, so no OOTS message is ever handed to a backend client.
    let gateway = Gateway::new(
        ap.clone(),
        config.oots.clone(),
        config.oots_portals(),
        preview.clone(),
        common_services,
    );
    let mut router = ApiRouter::new(ap.clone());
    gateway.mount(&mut router);
    varti_oots_gateway::preview::api::mount(
        preview.clone(),
        &mut router,
        config.limits.max_request_body_bytes,
    );
    let router: Arc<dyn varti_access_point::server::Routes> = Arc::new(router);
    // The operations console: under /console on the backend listener, or on its own.
    let console = config.console.enabled.then(|| {
        Arc::new(Console::new(
            ap.clone(),
            config.console.clone(),
            Some(readiness.clone()),
        ))
    });
    let backend_routes: Arc<dyn varti_access_point::server::Routes> =
        match (&console, config.console.listen) {
            (Some(console), None) => Arc::new(ConsoleRoutes::new(console.clone(), Some(router))),
            _ => router,
        };
    let console_addr = match (&console, config.console.listen) {
        (Some(console), Some(listen)) => {
            let console_tls = browser_tls(&config, config.console.tls)?;
            let options = ListenerOptions {
                tls: console_tls,
                ..backend_options.clone()
            };
            let listener = Listener::bind("console", listen, options).await?;
            let addr = listener.local_addr()?;
            let scheme = if config.console.tls { "https" } else { "http" };
            tracing::info!(console = %format!("{scheme}://{addr}/console/"), "operations console is listening");
            let routes = Arc::new(ConsoleRoutes::new(console.clone(), None));
            tasks.spawn(
                "console-listener",
                listener.serve(routes, tasks.token(), grace),
            );
            Some(addr)
        }
        (Some(_), None) => {
            tracing::info!(console = %format!("http://{backend_addr}/console/"), "operations console is served on the backend listener");
            Some(backend_addr)
        }
        _ => None,
    };
    if let Some(console) = console.clone() {
        let token = tasks.token();
        tasks.spawn("console-sweeper", async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(300)) => {}
                }
                let console = console.clone();
                let _ = tokio::task::spawn_blocking(move || console.sweep()).await;
            }
        });
    }
    // Only now: every service a feature consumes is claimed.
    let handler = Arc::new(Receiver::new(ap.clone()));
    let routes = Arc::new(
        MshRoutes::new(
            handler,
            config.limits.max_request_body_bytes,
            metrics.clone(),
        )
        .with_readiness(readiness.clone()),
    );
    tasks.spawn("msh-listener", msh.serve(routes, tasks.token(), grace));
    tasks.spawn(
        "backend-listener",
        backend_listener.serve(backend_routes, tasks.token(), grace),
    );
    let preview_addr = match preview_listener {
        Some((listener, space)) => {
            let addr = listener.local_addr()?;
            let routes = Arc::new(PreviewRoutes::new(space.clone()));
            tasks.spawn(
                "preview-listener",
                listener.serve(routes, tasks.token(), grace),
            );
            let token = tasks.token();
            tasks.spawn("preview-sweeper", async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                    // The sweep talks to the store: off the async workers.
                    let space = space.clone();
                    let _ = tokio::task::spawn_blocking(move || space.sweep()).await;
                }
            });
            Some(addr)
        }
        None => None,
    };
    tasks.spawn("sender", sender::run(ap.clone(), tasks.token(), grace));
    tasks.spawn("puller", pull::run(ap.clone(), tasks.token()));
    tasks.spawn("retention", retention(ap.clone(), tasks.token()));
    if let (Some(sled), Some(dir)) = (sled, config.store.backup_dir.clone()) {
        let every = secs(config.store.backup_every_secs);
        let keep = config.store.backup_keep;
        tasks.spawn(
            "backup",
            scheduled_backups(sled, dir, every, keep, ap.clone(), tasks.token()),
        );
    }
    tasks.spawn(
        "store-probe",
        store_probe(
            ap.clone(),
            readiness.clone(),
            metrics.clone(),
            tasks.token(),
        ),
    );
    tasks.spawn(
        "oots",
        varti_oots_gateway::gateway::run(gateway, tasks.token()),
    );
    {
        // Days to expiry of every certificate we present: TLS, signing, encryption. The
        // identity's come from the set in force (a reload may replace them) and are
        // refreshed at once when a reload is applied.
        let tls_cert = tls.is_some().then(|| config.tls.cert.clone());
        ap.on_reload(Arc::new(CertExpiry {
            metrics: metrics.clone(),
            tls_cert: tls_cert.clone(),
        }));
        let token = tasks.token();
        let expiry = CertExpiry {
            metrics: metrics.clone(),
            tls_cert,
        };
        let ap = ap.clone();
        tasks.spawn("cert-expiry", async move {
            loop {
                expiry.record(&ap.current());
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(EXPIRY_REFRESH) => {}
                }
            }
        });
    }

    // Watched before the ready file tells anyone we run: SIGHUP's default action is to end
    // the process.
    let hup = watch_hup();
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            msh_addr,
            ops_addr,
            backend_addr,
            preview_addr,
            console_addr,
            scheme,
        )?;
    }

    wait_for_signal(&ap, hup).await;
    tracing::info!("shutting down: no new connections; finishing running requests");
    readiness.set_not_ready("shutdown", "shutting down");
    let clean = tasks.shutdown(grace + Duration::from_secs(5)).await;
    // Closing the store flushes it. Every holder of the access point goes first, so the
    // last reference to the store is dropped on a blocking thread: the PostgreSQL client
    // closes its connections by blocking, which must not happen on the runtime.
    drop(console);
    drop(ap);
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .context("closing the store failed")?;
    if clean {
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::error!("stopped, but some tasks had to be aborted (see above)");
        Ok(super::exit_problems())
    }
}

/// The TLS server settings of a listener for browsers (preview space, console) when `on`:
/// the `[tls]` certificate, no client certificates asked for.
fn browser_tls(config: &Config, on: bool) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    if !on {
        return Ok(None);
    }
    Ok(Some(tls::server_config(
        &config.tls.cert,
        &config.tls.key,
        varti::config::ClientAuth::Off,
        &config.tls.client_ca,
    )?))
}

/// The store as the access point uses it, and the embedded one as such (for backups).
type OpenedStore = (Arc<dyn Store>, Option<Arc<SledStore>>);

/// Opens the configured store (and, for the embedded one, also returns it as such, for the
/// scheduled backups). The embedded store is checked first (`varti db check`): a damaged
/// one is refused with what is wrong and the command that fixes it. PostgreSQL must
/// already have the current schema: migrations are applied by `varti db migrate`,
/// deliberately, not by whichever instance starts first.
fn open_store(config: &Config) -> anyhow::Result<OpenedStore> {
    match config.store.kind {
        StoreKind::Sled => {
            let path = config.store_path();
            let options = varti_store::CheckOptions::new(time::OffsetDateTime::now_utc());
            let (store, report) = match SledStore::open_checked(&path, options) {
                Ok(opened) => opened,
                Err(CheckedOpenError::Damaged(report)) => {
                    for f in report.damage() {
                        tracing::error!(kind = ?f.kind, message_id = f.message_id.as_deref(), "store damage: {}", f.detail);
                    }
                    anyhow::bail!("{}", varti_store::damage_summary(&report));
                }
                Err(CheckedOpenError::Store(e)) => {
                    return Err(e)
                        .with_context(|| format!("cannot open the store at {}", path.display()))
                }
            };
            for f in &report.findings {
                tracing::warn!(kind = ?f.kind, "store check: {}", f.detail);
            }
            tracing::info!(
                messages = report.records,
                payloads = report.payloads_checked,
                "store check passed"
            );
            let store = Arc::new(store);
            Ok((store.clone(), Some(store)))
        }
        StoreKind::Postgres => {
            let url = config.store.url.as_deref().unwrap_or_default();
            // connect() refuses a schema that is not current (run `varti db migrate`).
            let store = varti_store::postgres::PgStore::connect(url)
                .context("cannot open the PostgreSQL store (store.url)")?;
            Ok((Arc::new(store), None))
        }
    }
}

/// Purges payloads and metadata past `retention` at start and then every hour.
async fn retention(ap: Arc<AccessPoint>, token: tokio_util::sync::CancellationToken) {
    let mut interval = tokio::time::interval(RETENTION_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = interval.tick() => {}
        }
        let ap_for_audit = ap.clone();
        let ap = ap.clone();
        let now = ap.clock.now();
        match tokio::task::spawn_blocking(move || api::purge_now(&ap, now)).await {
            Ok(Ok(purged)) => {
                if purged.payloads + purged.metadata + purged.test > 0 {
                    tracing::info!(
                        payloads = purged.payloads,
                        metadata = purged.metadata,
                        test = purged.test,
                        "retention: purged"
                    );
                    // Audited when something went (an hourly "nothing" would drown the
                    // trail).
                    let ap = ap_for_audit.clone();
                    let details = serde_json::json!({
                        "automatic": true,
                        "payloads_purged": purged.payloads,
                        "metadata_purged": purged.metadata,
                        "test_purged": purged.test,
                    });
                    let _ = tokio::task::spawn_blocking(move || {
                        ap.audit(LOCAL_ACTOR, "messages.purge", "", AuditOutcome::Ok, details)
                    })
                    .await;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "retention purge failed; retrying in an hour"),
            Err(e) => tracing::error!(error = %e, "the retention task failed"),
        }
    }
}

/// Writes a backup of the embedded store into `dir` every `every` (the first one interval
/// after start), keeping the newest `keep`: the online backup (`varti db backup` needs the
/// store to itself, as sled allows one process).
async fn scheduled_backups(
    store: Arc<SledStore>,
    dir: PathBuf,
    every: Duration,
    keep: usize,
    ap: Arc<AccessPoint>,
    token: tokio_util::sync::CancellationToken,
) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = interval.tick() => {}
        }
        let (store, dir) = (store.clone(), dir.clone());
        let now = ap.clock.now();
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let stamp = now
                .format(&time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default();
            let path = dir.join(format!("varti-{stamp}.vbak"));
            let summary = super::db::write_backup_file(&store, &path)?;
            // Oldest first by name (the names sort by time); keep the newest `keep`.
            let mut backups: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with("varti-") && n.ends_with(".vbak")
                    })
                })
                .collect();
            backups.sort();
            let excess = backups.len().saturating_sub(keep);
            for old in &backups[..excess] {
                let _ = std::fs::remove_file(old);
            }
            Ok((path, summary))
        })
        .await;
        match result {
            Ok(Ok((path, summary))) => tracing::info!(
                file = %path.display(),
                messages = summary.messages,
                payloads = summary.payloads,
                "backup written"
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "scheduled backup failed; next try at the next interval")
            }
            Err(e) => tracing::error!(error = %e, "the backup task failed"),
        }
    }
}

/// Probes the store every [`STORE_PROBE_INTERVAL`]: a write that must commit within
/// [`STORE_PROBE_TIMEOUT`] (a read-only standby, an unreachable primary, or a primary whose
/// synchronous standby is cut off fails it), then the send queue's length for
/// `varti_queue_depth`. A failure makes the instance not ready (the load balancer drains
/// it), sets `varti_store_up` to 0 and stops this instance claiming work (sending, pulling,
/// webhook takeovers) until a probe succeeds again; then it comes back by itself.
async fn store_probe(
    ap: Arc<AccessPoint>,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    token: tokio_util::sync::CancellationToken,
) {
    let mut interval = tokio::time::interval(STORE_PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = interval.tick() => {}
        }
        let probe = ap.clone();
        // The write first (what every acknowledgement needs), then counting the send queue
        // through its index of outbound work: the figure `varti_queue_depth` reports.
        let outcome = tokio::time::timeout(
            STORE_PROBE_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                probe
                    .store
                    .probe_writable(&probe.instance, probe.clock.now())?;
                probe.store.queue_depth()
            }),
        )
        .await;
        let error = match outcome {
            Ok(Ok(Ok(depth))) => {
                metrics.set_queue_depth(depth);
                None
            }
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(e)) => Some(format!("the probe task failed: {e}")),
            Err(_) => Some(format!(
                "a write did not commit within {STORE_PROBE_TIMEOUT:?} (is the primary \
                 reachable, and its synchronous standby?)"
            )),
        };
        metrics.set_store_up(error.is_none());
        ap.store_down
            .store(error.is_some(), std::sync::atomic::Ordering::SeqCst);
        match error {
            None => {
                if !was_up {
                    tracing::info!("the store takes writes again: ready, claiming work again");
                }
                readiness.set_ready("store");
                was_up = true;
            }
            Some(e) => {
                if was_up {
                    tracing::error!(error = %e, "the store takes no writes: not ready and claiming no work until it does");
                }
                readiness.set_not_ready("store", format!("the store takes no writes: {e}"));
                was_up = false;
            }
        }
    }
}

/// Keeps `varti_cert_expiry_days` on the certificates in force (a [`ReloadHook`]).
struct CertExpiry {
    metrics: Arc<Metrics>,
    /// Our TLS server certificate (fixed until a restart), when we serve TLS.
    tls_cert: Option<PathBuf>,
}

impl CertExpiry {
    fn record(&self, set: &Snapshot) {
        let id = &set.settings.identity;
        record_cert_expiry(&self.metrics, "signing", &id.signing_cert);
        record_cert_expiry(&self.metrics, "encryption", &id.encryption_cert);
        if let Some(cert) = &self.tls_cert {
            record_cert_expiry(&self.metrics, "tls", cert);
        }
    }
}

impl ReloadHook for CertExpiry {
    fn name(&self) -> &str {
        "certificate expiry metrics"
    }
    fn applied(&self, current: &Arc<Snapshot>) {
        self.record(current);
    }
}

/// Sets `varti_cert_expiry_days{cert="<role>"}` and warns when expiry is near.
fn record_cert_expiry(metrics: &Metrics, role: &str, cert: &Path) {
    match ops::cert_expiry_days(cert) {
        Ok(days) => {
            metrics.set_cert_expiry_days(role, days);
            if days < EXPIRY_WARNING_DAYS {
                tracing::warn!(cert = %cert.display(), role, days, "a certificate expires soon: renew it");
            }
        }
        Err(e) => tracing::warn!(error = %e, role, "cannot read the certificate's expiry"),
    }
}

/// Writes the ready file atomically (write a temporary file, then rename).
fn write_ready_file(
    path: &Path,
    msh: SocketAddr,
    ops: SocketAddr,
    backend: SocketAddr,
    preview: Option<SocketAddr>,
    console: Option<SocketAddr>,
    scheme: &str,
) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "msh": msh.to_string(),
        "ops": ops.to_string(),
        "backend": backend.to_string(),
        "preview": preview.map(|a| a.to_string()),
        "console": console.map(|a| a.to_string()),
        "scheme": scheme,
        "pid": std::process::id(),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{json}\n"))
        .with_context(|| format!("cannot write the ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    Ok(())
}

/// How a reload re-reads the set: the configuration file again (or the embedded
/// defaults), judged by `varti certs check`'s rules; the access point then loads the new
/// set with start-up's own checks.
fn reload_source(args: ServeArgs, running: Config) -> ReloadSource {
    Arc::new(move || {
        let config = load_config(&args).map_err(|e| vec![format!("{e:#}")])?;
        let errors = super::certs::errors_of(&config);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ReloadInput {
            settings: config.access_point_settings(),
            files: args
                .config
                .iter()
                .map(|p| FileHash::of("config", p))
                .collect(),
            needs_restart: needs_restart(&running, &config),
        })
    })
}

/// The sections of the file the access point does not see that differ from the running
/// ones: only a restart applies them.
fn needs_restart(running: &Config, next: &Config) -> Vec<String> {
    let portals = |c: &Config| {
        c.backend
            .clients
            .iter()
            .map(|b| (b.name.clone(), b.oots_party.clone()))
            .collect::<Vec<_>>()
    };
    [
        ("[server]", running.server == next.server),
        ("[ops]", running.ops == next.ops),
        (
            "backend.listen",
            running.backend.listen == next.backend.listen,
        ),
        ("[store]", running.store == next.store),
        ("[log]", running.log == next.log),
        ("[preview]", running.preview == next.preview),
        ("[oots]", running.oots == next.oots),
        (
            "oots_party of [[backend.clients]]",
            portals(running) == portals(next),
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(what, _)| what.to_owned())
    .collect()
}

/// SIGHUP, as a stream of signals (`None`: not available).
#[cfg(unix)]
type Hup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hup = Option<()>;

fn watch_hup() -> Hup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; reload with `varti reload` instead");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT); reloads on SIGHUP (and goes on waiting).
async fn wait_for_signal(ap: &Arc<AccessPoint>, hup: Hup) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = hup;
        match signal(SignalKind::terminate()) {
            Ok(mut term) => loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received"); return }
                    _ = tokio::signal::ctrl_c() => { tracing::info!("Ctrl-C received"); return }
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                        tracing::info!("SIGHUP received: reloading PModes, certificates, CRLs and backend clients");
                        let ap = ap.clone();
                        // The outcome is logged and audited by the reload itself.
                        if let Err(e) = tokio::task::spawn_blocking(move || ap.reload(LOCAL_ACTOR)).await {
                            tracing::error!(error = %e, "the reload task failed");
                        }
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops varti");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (ap, hup);
        let _ = tokio::signal::ctrl_c().await;
    }
}
