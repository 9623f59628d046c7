//! Shared helpers of the integration tests live here as they arrive.
