//! Election (SPEC §3): who serves which model, solo or split, and which peer hosts a split.
