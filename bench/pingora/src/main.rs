//! The benchmark's Pingora reference: `pingora-bench LISTEN UPSTREAM [THREADS]` forwards every
//! request to UPSTREAM (host:port) with Pingora's round-robin load balancer and its pooled,
//! kept-alive upstream connections, on THREADS worker threads (2 by default, as nginx's
//! `worker_processes 2` and HAProxy's `nbthread 2` in bench.py).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Balancer(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Balancer {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self.0.select(b"", 256).ok_or_else(|| Error::new(ErrorType::ConnectNoRoute))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora-bench LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads = args.next().map_or(2, |t| t.parse().expect("THREADS is a number"));
    let conf = ServerConf { threads, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let upstreams = LoadBalancer::try_from_iter([upstream.as_str()]).expect("UPSTREAM is host:port");
    let mut proxy = http_proxy_service(&server.configuration, Balancer(Arc::new(upstreams)));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
