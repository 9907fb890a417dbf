//! ClosedMesh benchmarks. This crate holds the criterion benches of the core
//! (`cargo bench -p closedmesh-benches --bench core`: election, status payload and routing
//! order at 10/100/1,000 peers; gossip frame encode/decode and signatures). The node's
//! end-to-end efficiency bench (native llama-server vs through-mesh) lives with the node,
//! `cargo bench -p mesh-node --bench mesh_efficiency`, and the simulator's scale figures come
//! from `mesh-sim bench` (see the README).
