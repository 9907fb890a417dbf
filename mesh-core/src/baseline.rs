//! Native baselines (SPEC §5): when to measure a peer's own llama-server, and how to summarise it.
