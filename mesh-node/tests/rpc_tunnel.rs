//! A pipeline over real iroh on loopback with the real binaries: a split host's llama-server
//! reaches a worker's rpc-server through an RPC tunnel, the worker really holds layers, the
//! chat is recorded by the same proxy as a solo chat, and the worker refuses tunnels from
//! anyone but its elected split host.

mod support;

use mesh_core::PeerId;
use mesh_core::election::{Duty, NodeElection};
use mesh_core::launch::{Device, NoMmapFlag, Placement, RpcWorker};
use mesh_core::peer::Backend;
use mesh_core::sla::TierCatalog;
use mesh_node::api::{NodeApi, router};
use mesh_node::backend::{BackendState, Backends};
use mesh_node::clock::Clock;
use mesh_node::config::RelayMode;
use mesh_node::facts::Measurements;
use mesh_node::local_status::NodeInfo;
use mesh_node::proxy::{ChatProxy, Recorder};
use mesh_node::rpc::{
    RpcServerSpec, RpcServerState, RpcTunnel, serve_rpc_tunnels, supervise_rpc_server,
};
use mesh_node::supervise::{LlamaSpec, LocalModel, supervise_llama};
use mesh_node::transport::iroh::{IrohConfig, IrohTransport};
use mesh_node::transport::{StreamKind, Transport, TransportEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::{chat, real_parts};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

async fn transport(seed: u8) -> Arc<IrohTransport> {
    let cfg = IrohConfig::with_relay(RelayMode::Disabled);
    Arc::new(IrohTransport::bind([seed; 32], cfg).await.unwrap())
}

fn introduce(a: &IrohTransport, b: &IrohTransport) {
    a.add_peer(b.local_id(), &b.dial_info()).unwrap();
    b.add_peer(a.local_id(), &a.dial_info()).unwrap();
}

fn worker_of(host: PeerId) -> NodeElection {
    NodeElection {
        serving_models: vec!["m".into()],
        duties: BTreeMap::from([("m".to_string(), Duty::SplitWorker { host })]),
        run_rpc_server: true,
        plans: BTreeMap::new(),
    }
}

/// Reads until EOF or `within`: what a refused stream gives back.
async fn read_to_end_within(s: &mut mesh_node::dial::BoxIo, within: Duration) -> Option<usize> {
    let mut buf = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut buf))
        .await
        .ok()
        .map(|r| r.map(|_| buf.len()).unwrap_or(0))
}

#[tokio::test]
async fn split_host_serves_through_an_rpc_tunnel_and_strangers_are_refused() {
    let parts = real_parts();
    let dir = tempfile::tempdir().unwrap();
    let (logs, run) = (dir.path().join("logs"), dir.path().join("run"));
    let host_t = transport(1).await;
    let worker_t = transport(2).await;
    let stranger_t = transport(3).await;
    introduce(&host_t, &worker_t);
    introduce(&stranger_t, &worker_t);

    // Worker: rpc-server on loopback, RPC streams to it admitted by its election duty.
    let (stop_tx, stop_rx) = watch::channel(false);
    let rpc = Arc::new(RpcServerState::new(true));
    let (wanted_tx, wanted_rx) = watch::channel(true);
    tokio::spawn(supervise_rpc_server(
        RpcServerSpec {
            program: parts.rpc_server.clone(),
            threads: Some(1),
            logs_dir: logs.join("worker"),
            run_dir: run.join("worker"),
        },
        wanted_rx,
        rpc.clone(),
        stop_rx.clone(),
    ));
    let (election_tx, election_rx) = watch::channel(worker_of(host_t.local_id()));
    let (rpc_streams_tx, rpc_streams) = mpsc::channel(16);
    let dispatch_t = worker_t.clone();
    tokio::spawn(async move {
        while let Some(ev) = dispatch_t.next_event().await {
            if let TransportEvent::Stream(inbound) = ev {
                if inbound.kind == StreamKind::Rpc {
                    rpc_streams_tx.send(inbound).await.unwrap();
                }
            }
        }
    });
    tokio::spawn(serve_rpc_tunnels(rpc_streams, election_rx, rpc.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while rpc.rpc_ready() != Some(true) {
        assert!(Instant::now() < deadline, "rpc-server never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rpc_pid = std::fs::read(run.join("worker/rpc-server.pid.json")).unwrap();
    let rpc_pid: mesh_node::pidfile::PidRecord = serde_json::from_slice(&rpc_pid).unwrap();
    assert!(
        rpc_pid.argv.join(" ").contains("-H 127.0.0.1"),
        "rpc-server binds loopback only: {:?}",
        rpc_pid.argv
    );

    // A stranger's RPC stream is refused: it closes without reaching the rpc-server.
    let mut s = stranger_t
        .open(worker_t.local_id(), StreamKind::Rpc)
        .await
        .unwrap();
    assert_eq!(
        read_to_end_within(&mut s, Duration::from_secs(5)).await,
        Some(0),
        "the stranger's stream was not closed"
    );

    // Host: a tunnel port to the worker, and llama-server --rpc over it.
    let tunnel = RpcTunnel::open(host_t.clone(), worker_t.local_id())
        .await
        .unwrap();
    let model = LocalModel::from_path(&parts.model).unwrap();
    let backends = Arc::new(Backends::new());
    backends.add(&model.name, model.size_bytes);
    let spec = LlamaSpec {
        program: parts.llama_server.clone(),
        model: model.clone(),
        device: Device {
            backend: Backend::Cpu,
            memory_bytes: 70_000_000,
        },
        placement: Placement::SplitHost {
            workers: vec![RpcWorker {
                tunnel_port: tunnel.port,
                fast_memory_bytes: 60_000_000,
            }],
            layer_count: mesh_node::gguf::block_count(&model.path).unwrap(),
        },
        threads: Some(1),
        no_mmap: NoMmapFlag::NoMmap,
        logs_dir: logs.join("host"),
        run_dir: run.join("host"),
        events: None,
        extra_args: vec!["-lv".into(), "4".into()],
    };
    let llama = tokio::spawn(supervise_llama(spec, backends.clone(), stop_rx.clone()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(b) = backends.get(&model.name) {
            if matches!(b.state, BackendState::Ready(_)) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "split host not ready:\n{}",
            std::fs::read_to_string(logs.join(format!("host/llama-server-{}.log", model.name)))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(logs.join(format!("host/llama-server-{}.log", model.name)))
        .unwrap();
    // SmolLM2 has 30 blocks; the host keeps its share (70 of 130 MB), the worker holds the rest.
    assert!(
        log.contains(&format!("--rpc 127.0.0.1:{}", tunnel.port)) && log.contains("-ngl 14 "),
        "{log}"
    );
    let on_worker = log
        .lines()
        .find(|l| {
            l.contains(&format!(
                "RPC0[127.0.0.1:{}] model buffer size",
                tunnel.port
            ))
        })
        .unwrap_or_else(|| panic!("no layers on the worker:\n{log}"));
    assert!(log.contains("offloaded 14/31 layers"), "{log}");
    eprintln!("{on_worker}");

    // A chat through the node's API: the same proxy records the pipeline's sample.
    let recorder = Arc::new(Recorder::new(Clock::system()));
    let api = Arc::new(NodeApi {
        info: NodeInfo {
            node_id: host_t.local_id(),
            mesh_id: String::new(),
            hostname: "host".into(),
            backend: Backend::Cpu,
            gpu_name: String::new(),
            fast_memory_bytes: 70_000_000,
            system_ram_bytes: 0,
            http_port: 0,
        },
        backends: backends.clone(),
        proxy: ChatProxy::new(recorder.clone()),
        measurements: Measurements::in_memory(),
        tiers: TierCatalog::default(),
        mesh: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut stopped = stop_rx.clone();
    tokio::spawn(mesh_node::http_serve::serve(
        listener,
        router(api),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    let text = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&chat(&model.name, true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\"content\"") && text.contains("[DONE]"),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while recorder.outcome_counts().get("recorded") != Some(&1) {
        assert!(Instant::now() < deadline, "{:?}", recorder.outcome_counts());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The host loses the election: new tunnels are refused and the open one is cut.
    election_tx.send_replace(worker_of(stranger_t.local_id()));
    let mut s = host_t
        .open(worker_t.local_id(), StreamKind::Rpc)
        .await
        .unwrap();
    assert_eq!(
        read_to_end_within(&mut s, Duration::from_secs(5)).await,
        Some(0)
    );
    // Its llama-server fails on its next use of the lost worker and is restarted.
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&chat(&model.name, false))
        .send()
        .await;
    eprintln!("chat after the cut: {:?}", resp.map(|r| r.status()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        backends.get(&model.name).unwrap().state,
        BackendState::Restarting { .. } | BackendState::Loading
    ) {
        assert!(
            Instant::now() < deadline,
            "llama-server kept running without its worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The rpc-server stops when no split wants it.
    wanted_tx.send_replace(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while rpc.rpc_ready() != Some(false) || run.join("worker/rpc-server.pid.json").exists() {
        assert!(Instant::now() < deadline, "rpc-server still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send_replace(true);
    llama.await.unwrap();
    drop(tunnel);
}
