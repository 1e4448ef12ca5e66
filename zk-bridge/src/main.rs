//! upsync-zk-bridge: serves ZooKeeper registrations as Consul KV blocking
//! queries, so upsync-wasm's `consul_kv` registry reads ZooKeeper
//! unchanged (a proxy-wasm plugin can make HTTP calls only, no raw TCP).
//!
//!     upsync-zk-bridge --config bridge.json      # serve
//!     upsync-zk-bridge --check --config bridge.json   # validate only
//!
//! docs/zk-bridge.md is the reference.

mod config;
mod http;
mod layout;
mod mount;
mod state;
mod zk;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

const USAGE: &str = "usage: upsync-zk-bridge --config FILE [--check]\n\
  --config FILE  the bridge's JSON configuration (docs/zk-bridge.md)\n\
  --check        validate the configuration, print \"ok\" and exit";

struct Args {
    config: String,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut check = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => config = Some(it.next().ok_or("--config needs a file")?),
            "--check" => check = true,
            "--version" | "-V" => {
                println!("upsync-zk-bridge {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args { config: config.ok_or("--config FILE is required")?, check })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upsync-zk-bridge: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("upsync-zk-bridge: cannot read {}: {e}", args.config);
            return ExitCode::from(2);
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    let read_file = |p: &str| std::fs::read_to_string(p).map_err(|e| e.to_string());
    let cfg = match config::parse(&text, &env, &read_file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("upsync-zk-bridge: invalid configuration {}:", args.config);
            for e in errors {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("ok");
        return ExitCode::SUCCESS;
    }
    // zookeeper_client's debug lines print raw requests (auth packets
    // included): never below info, whatever log_level says.
    let zk_level = std::cmp::min(LevelFilter::from_level(cfg.log_level), LevelFilter::INFO);
    let filter =
        Targets::new().with_default(LevelFilter::from_level(cfg.log_level)).with_target("zookeeper_client", zk_level);
    tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_ansi(false)).with(filter).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("upsync-zk-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: config::Config) -> Result<(), String> {
    let listener = TcpListener::bind(cfg.listen).await.map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let shared = state::Shared::new(cfg);
    for m in &shared.mounts {
        tracing::info!(
            "mount {} ({} layout) served as GET /v1/kv/{}?recurse",
            m.config.path,
            m.config.layout.name(),
            m.config.prefix
        );
    }
    tracing::info!("listening on http://{local}");
    tokio::spawn(zk::run(shared.clone()));
    let accept = accept_loop(listener, shared);
    tokio::select! {
        r = accept => r,
        () = shutdown_signal() => {
            tracing::info!("stopping");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<state::Shared>) -> Result<(), String> {
    let limit = Arc::new(Semaphore::new(shared.config.http.max_connections));
    loop {
        // At most max_connections at once: the next accept waits for one to close.
        let permit = limit.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| http::handle(shared.clone(), req));
            if let Err(e) =
                http1::Builder::new().title_case_headers(true).serve_connection(TokioIo::new(stream), svc).await
            {
                tracing::debug!("connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}
