//! llama-server / rpc-server command lines (SPEC §3): a pure function of the launch plan and device.
