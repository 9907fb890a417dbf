//! The ClosedMesh simulator.
