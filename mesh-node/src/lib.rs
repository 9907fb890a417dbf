//! The ClosedMesh node: mesh-core on iroh sockets and real llama-server processes.
