//! Verification (SPEC §7): fingerprints, tolerant comparison and the audit loop's sequential test.
