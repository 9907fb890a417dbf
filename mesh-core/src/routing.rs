//! Routing order (SPEC §8): which target serves a request, retries before the first byte, failure demotion.
