//! The mock's connection loop: HTTP/1.1 and HTTP/2 (h2c, spoken from the start) on one port,
//! with no limit on concurrent HTTP/2 streams, so that one worker connection can carry
//! thousands of calls in flight as benchmarks ask.

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

/// Serves `app` on `listener` until the task is dropped.
pub(super) async fn serve(listener: TcpListener, app: Router) {
    let service = TowerToHyperService::new(app);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: wait, as a real server would, and go on.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(None);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}
